"""Claim 03: several attention heads beat one head of the same total width, because heads attend differently.

TFDS_DATA_DIR=... python experiments/claims/03_heads.py [--full | --size tiny]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import lab
import numpy as np
from flax import nnx

CLAIM = (
    "Several attention heads beat one head of the same total width (same parameter count), because each head "
    "can attend to different positions."
)
SETUP = (
    "A char-level GPT on tiny Shakespeare (the shakespeare_char_cpu recipe: context 64, batch 12, AdamW, warmup + "
    "cosine) with num_heads in {1, 2, 4, 8} and head_dim = d_model / num_heads, so every model has exactly the "
    "same parameters (asserted). Default: 2 layers, d_model=128, 800 steps; seeds 0 and 1 for 1 and 4 heads, "
    "seed 0 for 2 and 8 heads. --full: 4 layers, d_model=256, num_heads in {1, 2, 4, 8, 16}, 3000 steps, 3 seeds "
    "each. Measured: final validation loss (whole validation split). Head diversity, on 8 validation windows "
    "of 64 characters, per layer: the mean pairwise Jensen-Shannon divergence (nats; bounded by ln 2 = 0.693) "
    "between the attention rows of two heads of one layer at the same query, the attention entropy per head "
    "(nats; a uniform causal row at query t has ln(t+1)), and the mean attention distance t - s per head; the "
    "same for the untrained initialisation as a reference."
)

DIVERSITY_WINDOWS = 8


def sizes(size: str) -> dict:
    """The models (layers, width, head counts), steps, and seeds: `seeds` per head count, else `default_seeds`;
    `data` overrides the recipe's context and batch (tiny: lab.TINY_LM's). Head counts 1 and 4 are needed."""
    return lab.pick(
        size,
        tiny=dict(
            layers=1,
            d_model=32,
            heads=(1, 4),
            steps=10,
            seeds={4: (0, 1)},
            default_seeds=(0,),
            data={k: lab.TINY_LM[k] for k in ("data.seq_len", "batch_size")},
        ),
        default=dict(
            layers=2,
            d_model=128,
            heads=(1, 2, 4, 8),
            steps=800,
            seeds={1: (0, 1), 4: (0, 1)},
            default_seeds=(0,),
            data={},
        ),
        full=dict(
            layers=4, d_model=256, heads=(1, 2, 4, 8, 16), steps=3000, seeds={}, default_seeds=(0, 1, 2), data={}
        ),
    )


def param_count(model) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


def diversity(maps: list[np.ndarray]) -> dict:
    """Per layer: mean pairwise JS divergence between heads, and per head the entropy and attention distance.
    Averages over batch and query positions t >= 1 (at t = 0 every head must attend to position 0)."""
    eps = 1e-12
    out = {"js": [], "entropy": [], "distance": []}
    for probs in maps:
        B, N, T, _ = probs.shape
        p = probs[:, :, 1:, :].astype(np.float64)  # [B, N, T-1, S]
        entropy = -np.sum(p * np.log(p + eps), axis=-1)  # [B, N, T-1]
        t = np.arange(1, T)[:, None]
        s = np.arange(T)[None, :]
        distance = np.sum(p * np.maximum(t - s, 0), axis=-1)  # [B, N, T-1]
        js = []
        for a in range(N):
            for b in range(a + 1, N):
                m = 0.5 * (p[:, a] + p[:, b])
                kl_a = np.sum(p[:, a] * (np.log(p[:, a] + eps) - np.log(m + eps)), axis=-1)
                kl_b = np.sum(p[:, b] * (np.log(p[:, b] + eps) - np.log(m + eps)), axis=-1)
                js.append(float(np.mean(0.5 * (kl_a + kl_b))))
        out["js"].append(float(np.mean(js)) if js else None)
        out["entropy"].append([float(v) for v in entropy.mean(axis=(0, 2))])
        out["distance"].append([float(v) for v in distance.mean(axis=(0, 2))])
    # the uniform causal row's entropy, averaged over the same queries: the "attends everywhere" reference
    T = maps[0].shape[-1]
    out["uniform_entropy"] = float(np.mean(np.log(np.arange(2, T + 1))))
    return out


def validation_windows(config, count: int) -> tuple[np.ndarray, object]:
    tokenizer, _, eval_tokens = lab.load_tokens(config)
    T = config.data.seq_len
    rng = np.random.default_rng(123)
    starts = rng.choice(len(eval_tokens) - T, size=count, replace=False)
    return np.stack([eval_tokens[s : s + T] for s in starts]).astype(np.int32), tokenizer


def run(size: str) -> lab.Outcome:
    size = sizes(size)
    d = size["d_model"]
    overrides = {"model.num_layers": size["layers"], "model.d_model": d, "model.d_ff": 4 * d, **size["data"]}
    windows, tokenizer = validation_windows(lab.lm_config(size["steps"], **overrides), DIVERSITY_WINDOWS)
    runs: dict[str, dict] = {}
    params: dict[str, int] = {}
    for heads in size["heads"]:
        seeds = size["seeds"].get(heads, size["default_seeds"])
        entry = {"seeds": list(seeds), "val_loss": [], "curves": [], "diversity": None, "init_diversity": None}
        for seed in seeds:
            config = lab.lm_config(size["steps"], **overrides, **{"model.num_heads": heads, "seed": seed})
            print(f"heads={heads} seed={seed}: training {size['steps']} steps", flush=True)
            out = lab.train_lm(config, keep_model=True)
            entry["val_loss"].append(float(out["final"]["val_loss"]))
            entry["curves"].append([[r["step"], r["train_loss"]] for r in out["history"]])
            params[str(heads)] = param_count(out["model"])
            if seed == seeds[0]:
                model = out["model"]
                maps = lab.attention_maps(model, windows)
                entry["diversity"] = diversity(maps)
                init_model = type(model)(model.config, rngs=nnx.Rngs(seed))
                entry["init_diversity"] = diversity(lab.attention_maps(init_model, windows))
                if heads == 4:
                    entry["maps"] = [np.round(m[0], 4).tolist() for m in maps]  # every layer, first window
        entry["mean"] = float(np.mean(entry["val_loss"]))
        runs[str(heads)] = entry
        print(f"heads={heads}: val_loss {entry['val_loss']}", flush=True)
    counts = set(params.values())
    assert len(counts) == 1, f"parameter counts differ across head counts: {params}"
    num_params = counts.pop()

    one = runs["1"]
    multi = {h: r for h, r in runs.items() if h != "1"}
    best = min(multi, key=lambda h: multi[h]["mean"])
    gap = one["mean"] - multi[best]["mean"]  # > 0: multi-head is better
    spreads = [max(r["val_loss"]) - min(r["val_loss"]) for r in runs.values() if len(r["val_loss"]) > 1]
    noise = max(spreads) if spreads else None
    if noise is None:
        supported = None if abs(gap) < 0.02 else gap > 0
    elif gap > noise:
        supported = True
    elif gap < -noise:
        supported = False
    else:
        supported = None

    # diversity summary: layer-mean JS per head count, trained vs init; the 4-head layer with the most diversity
    js = {h: float(np.mean(r["diversity"]["js"])) for h, r in multi.items()}
    js_init = {h: float(np.mean(r["init_diversity"]["js"])) for h, r in multi.items()}
    four = runs["4"]["diversity"]
    layer = int(np.argmax(four["js"]))
    ent, dist = four["entropy"][layer], four["distance"][layer]
    seed_text = (
        f"seed spread (largest max-min over the {len(spreads)} head counts run with several seeds) {noise:.3f}"
        if noise is not None
        else "one seed per head count (no noise estimate; 'partly' if the gap is under 0.02)"
    )
    losses = ", ".join(
        f"{h} head{'s' if h != '1' else ''} {r['mean']:.3f}"
        + (f" ({' / '.join(f'{v:.3f}' for v in r['val_loss'])})" if len(r["val_loss"]) > 1 else "")
        for h, r in runs.items()
    )
    result = (
        f"Final validation loss after {size['steps']} steps ({size['layers']} layers, d_model={d}, "
        f"{num_params:,} parameters for every head count): {losses}. Best multi-head ({best} heads) beats 1 head by "
        f"{gap:+.3f} nats; {seed_text}. Head diversity, as the mean pairwise Jensen-Shannon divergence between "
        f"the heads of a layer: "
        + ", ".join(f"{js[h]:.3f} ({h} heads)" for h in multi)
        + " after training, against "
        + ", ".join(f"{js_init[h]:.3f}" for h in multi)
        + f" at initialisation. In the 4-head model's layer {layer} (JS {four['js'][layer]:.3f}) the heads' "
        f"entropies are {', '.join(f'{v:.2f}' for v in ent)} nats (uniform over the causal prefix: "
        f"{four['uniform_entropy']:.2f}; 1 head: {one['diversity']['entropy'][layer][0]:.2f}) and their mean "
        f"attention distances {', '.join(f'{v:.1f}' for v in dist)} characters back."
    )
    numbers = {
        "layers": size["layers"],
        "d_model": d,
        "steps": size["steps"],
        "num_params": num_params,
        "params_by_heads": params,
        "runs": runs,
        "best_heads": best,
        "gap": gap,
        "noise": noise,
        "js": js,
        "js_init": js_init,
        "map_layer": layer,
        "map_text": tokenizer.decode(windows[0]),
    }
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    runs = numbers["runs"]
    heads = list(runs)
    fig = plt.figure(figsize=(16, 9))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 1.0], hspace=0.42, wspace=0.32)

    ax = fig.add_subplot(grid[0, 0])
    xs = np.arange(len(heads))
    means = [runs[h]["mean"] for h in heads]
    bars = ax.bar(xs, means, color=["tab:gray"] + ["tab:blue"] * (len(heads) - 1))
    for i, h in enumerate(heads):
        ax.scatter([i] * len(runs[h]["val_loss"]), runs[h]["val_loss"], color="k", s=12, zorder=3)
    ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=8)
    lo, hi = min(min(r["val_loss"]) for r in runs.values()), max(max(r["val_loss"]) for r in runs.values())
    ax.set_ylim(lo - 0.05, hi + 0.03)
    ax.set_xticks(xs, heads)
    ax.set_xlabel("num_heads (head_dim = d_model / heads)")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title(f"Val loss, {numbers['num_params']:,} params each\n(dots: seeds)", fontsize=10)

    ax = fig.add_subplot(grid[0, 1])
    for h in heads:
        curve = np.array(runs[h]["curves"][0])
        ax.plot(curve[:, 0], curve[:, 1], label=f"{h} head{'s' if h != '1' else ''}", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (first seed)")
    tails = [np.array(runs[h]["curves"][0]) for h in heads]
    ax.set_ylim(top=max(float(np.max(c[c[:, 0] >= 0.1 * c[-1, 0], 1])) for c in tails) + 0.05)
    ax.set_title("Training curves", fontsize=10)
    ax.legend(fontsize=8)
    axins = ax.inset_axes([0.45, 0.35, 0.5, 0.35])
    for h in heads:
        curve = np.array(runs[h]["curves"][0])
        tail = curve[curve[:, 0] >= curve[-1, 0] * 0.5]
        axins.plot(tail[:, 0], tail[:, 1], lw=1)
    axins.tick_params(labelsize=6)

    ax = fig.add_subplot(grid[0, 2])
    multi = [h for h in heads if h != "1"]
    xs = np.arange(len(multi))
    ax.bar(xs - 0.2, [numbers["js"][h] for h in multi], 0.4, label="trained")
    ax.bar(xs + 0.2, [numbers["js_init"][h] for h in multi], 0.4, label="initialisation")
    ax.set_xticks(xs, multi)
    ax.set_xlabel("num_heads")
    ax.set_ylabel("mean pairwise JS divergence (nats)")
    ax.set_title("Head diversity (mean over layers)", fontsize=10)
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[0, 3])
    for h in heads:
        div = runs[h]["diversity"]
        for layer, (ent, dist) in enumerate(zip(div["entropy"], div["distance"], strict=True)):
            ax.scatter(
                dist,
                ent,
                s=18,
                marker="os^Dv"[layer % 5],
                color=f"C{heads.index(h)}",
                label=f"{h} head{'s' if h != '1' else ''}" if layer == 0 else None,
            )
    ax.axhline(runs["1"]["diversity"]["uniform_entropy"], color="k", ls="--", lw=1, label="uniform causal row")
    ax.set_xlabel("mean attention distance t - s (chars)")
    ax.set_ylabel("mean attention entropy (nats)")
    ax.set_title("Every head (marker shape: layer)", fontsize=10)
    ax.legend(fontsize=7)

    layer = numbers["map_layer"]
    maps = np.array(runs["4"]["maps"][layer])  # [N, T, T]
    ent = runs["4"]["diversity"]["entropy"][layer]
    dist = runs["4"]["diversity"]["distance"][layer]
    for n in range(min(4, maps.shape[0])):
        ax = fig.add_subplot(grid[1, n])
        ax.imshow(maps[n], cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0))
        ax.set_title(f"4-head model, layer {layer}, head {n}\nentropy {ent[n]:.2f}, distance {dist[n]:.1f}", fontsize=9)
        ax.set_xlabel("key position s")
        ax.set_ylabel("query position t")
    text = numbers["map_text"].replace("\n", "\u23ce")
    fig.text(0.5, 0.02, f"sequence: {text!r}", ha="center", fontsize=8, family="monospace")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
