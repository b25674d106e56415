"""Claim 15: trained attention heads specialise in interpretable patterns (previous token, word / line starts, broad).

TFDS_DATA_DIR=... python experiments/claims/15_attention_maps.py [--full]
"""

from __future__ import annotations

import os
import string
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lab
import numpy as np
from flax import nnx

CLAIM = (
    "Trained attention heads specialise in interpretable patterns: some attend to the previous token or a fixed "
    "offset, some to the start of a word or line, some broadly; attention maps show what the model looks at."
)
SETUP = (
    "The shakespeare_char_cpu recipe (char-level GPT, 4 layers x 4 heads, d_model=128, context 64, batch 12, "
    "AdamW, warmup + cosine, seed 1337) trained for 1500 steps (--full: the recipe's 2000 steps and 64 passages). "
    "Every head's causal attention map is recomputed block by block (ops.attention_weights on each block's own "
    "q, k) on 32 validation passages of 64 characters; metrics average over queries t >= 8. Per head: "
    "previous-token score = mean weight on key t-1; fixed-offset score = max over k in 0..8 of the mean weight on "
    "key t-k; delimiter enrichment = mean weight on keys that are a space, newline or punctuation divided by the "
    "mean fraction of such keys in the causal prefix (1 = no preference); word-start enrichment = the same for "
    "keys right after a delimiter; mean attention distance (t - s, chars); entropy normalised by the uniform "
    "causal row's ln(t+1). Label (first rule that holds): 'previous token' if previous-token > 0.5; 'offset k' if "
    "the best offset k != 1 has score > 0.5 (k = 0: 'current token'); 'delimiter' if delimiter enrichment > 2; "
    "'word start' if word-start enrichment > 2; 'broad' if normalised entropy > 0.7; else 'mixed'. The same "
    "metrics for the untrained initialisation of the same config. Supported if at least two trained heads pass a "
    "sharp-pattern rule (the first four) with a score above every untrained head's value of that metric."
)

MIN_QUERY = 8  # queries t >= 8 so that offsets 0..8 all exist and the trivial first rows do not dominate
MAX_OFFSET = 8
WINDOW = 32  # the figure shows the last 32 query / key positions of one passage
DELIMITERS = set(" \n" + string.punctuation)
SHARP = ("previous token", "offset", "current token", "delimiter", "word start")


def sizes(size: str) -> dict:
    """Training steps, passages analysed, and overrides of the recipe (tiny: lab.TINY_LM, 1 layer x 2 heads)."""
    return lab.pick(
        size,
        tiny=dict(steps=10, passages=4, overrides=lab.TINY_LM),
        default=dict(steps=1500, passages=32, overrides={}),
        full=dict(steps=2000, passages=64, overrides={}),
    )


def head_metrics(maps: np.ndarray, delim: np.ndarray) -> list[list[dict]]:
    """Per layer, per head: the scores of SETUP. maps [L, B, N, T, T]; delim bool [B, T] (key is a delimiter)."""
    L, B, N, T, _ = maps.shape
    p = maps[:, :, :, MIN_QUERY:, :].astype(np.float64)  # [L, B, N, Q, S]
    t = np.arange(MIN_QUERY, T)
    s = np.arange(T)
    causal = s[None, :] <= t[:, None]  # [Q, S]
    offsets = np.stack([np.mean(p[:, :, :, np.arange(len(t)), t - k], axis=(1, 3)) for k in range(MAX_OFFSET + 1)])
    # offsets: [K, L, N] mean weight at key t - k
    word_start = np.zeros_like(delim)
    word_start[:, 1:] = delim[:, :-1] & ~delim[:, 1:]

    def enrichment(keys: np.ndarray) -> np.ndarray:  # keys bool [B, S] -> [L, N]
        mass = np.einsum("lbnqs,bs->lbnq", p, keys.astype(np.float64))
        frac = (causal[None] & keys[:, None, :]).sum(-1) / causal.sum(-1)[None]  # [B, Q]
        return mass.mean(axis=(1, 3)) / frac.mean()

    delim_enrich, start_enrich = enrichment(delim), enrichment(word_start)
    entropy = -np.sum(p * np.log(p + 1e-12), axis=-1) / np.log(t + 1)  # [L, B, N, Q]
    distance = np.sum(p * np.maximum(t[:, None] - s[None, :], 0), axis=-1)
    out = []
    for layer in range(L):
        row = []
        for n in range(N):
            offs = offsets[:, layer, n]
            best = int(np.argmax(np.where(np.arange(MAX_OFFSET + 1) == 1, -1.0, offs)))  # best offset other than 1
            m = {
                "previous": float(offs[1]),
                "offsets": [round(float(v), 4) for v in offs],
                "best_offset": best,
                "offset_score": float(offs[best]),
                "fixed_offset": float(offs.max()),
                "delimiter": float(delim_enrich[layer, n]),
                "word_start": float(start_enrich[layer, n]),
                "entropy": float(entropy[layer, :, n].mean()),
                "distance": float(distance[layer, :, n].mean()),
            }
            m["label"], m["score"] = label(m)
            row.append(m)
        out.append(row)
    return out


def label(m: dict) -> tuple[str, float]:
    """The first rule of SETUP that holds, with the score it tested."""
    if m["previous"] > 0.5:
        return "previous token", m["previous"]
    if m["offset_score"] > 0.5:
        return ("current token" if m["best_offset"] == 0 else f"offset {m['best_offset']}"), m["offset_score"]
    if m["delimiter"] > 2:
        return "delimiter", m["delimiter"]
    if m["word_start"] > 2:
        return "word start", m["word_start"]
    if m["entropy"] > 0.7:
        return "broad", m["entropy"]
    return "mixed", m["entropy"]


def metric_of(lab_name: str) -> str:
    if lab_name == "previous token":
        return "previous"
    if lab_name == "delimiter":
        return "delimiter"
    if lab_name == "word start":
        return "word_start"
    return "offset_score"


def passages(config, count: int) -> tuple[np.ndarray, object]:
    tokenizer, _, eval_tokens = lab.load_tokens(config)
    T = config.data.seq_len
    rng = np.random.default_rng(123)
    starts = rng.choice(len(eval_tokens) - T, size=count, replace=False)
    return np.stack([eval_tokens[s : s + T] for s in starts]).astype(np.int32), tokenizer


def figure_passage(texts: list[str]) -> int:
    """The first passage whose shown window holds a newline and at least four spaces (line and word starts)."""
    for i, text in enumerate(texts):
        window = text[-WINDOW:]
        if "\n" in window[4:-4] and window.count(" ") >= 4:
            return i
    return 0


def counts(metrics: list[list[dict]]) -> dict:
    out: dict[str, int] = {}
    for row in metrics:
        for m in row:
            key = m["label"] if not m["label"].startswith("offset") else "fixed offset"
            out[key] = out.get(key, 0) + 1
    return out


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    config = lab.lm_config(s["steps"], **s["overrides"])
    tokens, tokenizer = passages(config, s["passages"])
    texts = [tokenizer.decode(row) for row in tokens]
    delim = np.array([[c in DELIMITERS for c in text] for text in texts])
    assert delim.shape == tokens.shape, "char tokenizer: one character per token"

    print(f"training shakespeare_char_cpu for {s['steps']} steps", flush=True)
    out = lab.train_lm(config, keep_model=True)
    model = out["model"]
    init_model = type(model)(model.config, rngs=nnx.Rngs(config.seed))
    maps = np.stack(lab.attention_maps(model, tokens))
    init_maps = np.stack(lab.attention_maps(init_model, tokens))
    trained, init = head_metrics(maps, delim), head_metrics(init_maps, delim)
    L, N = len(trained), len(trained[0])

    # a sharp head counts if its score beats every untrained head on the same metric
    init_max = {
        k: max(m[k] for row in init for m in row) for k in ("previous", "offset_score", "delimiter", "word_start")
    }
    learned = []
    for layer, row in enumerate(trained):
        for n, m in enumerate(row):
            sharp = m["label"].startswith(SHARP)
            key = metric_of(m["label"])
            m["learned"] = bool(sharp and m[key] > init_max[key])
            if m["learned"]:
                learned.append(f"L{layer}H{n} {m['label']} ({m['score']:.2f})")
    init_sharp = sum(m["label"].startswith(SHARP) for row in init for m in row)
    supported = True if len(learned) >= 2 else None

    idx = figure_passage(texts)
    T = tokens.shape[1]
    shown = slice(T - WINDOW, T)
    # per layer, per head, per query row: the weights in thousandths as one space-separated string (a compact JSON)
    fig_maps = [
        [
            [" ".join(str(int(v)) for v in np.rint(1000 * r)) for r in maps[layer, idx, n, shown, shown]]
            for n in range(N)
        ]
        for layer in range(L)
    ]
    count_trained, count_init = counts(trained), counts(init)

    table = "; ".join(
        f"L{layer}H{n} {m['label']} {m['score']:.2f}" for layer, row in enumerate(trained) for n, m in enumerate(row)
    )
    result = (
        f"After {s['steps']} steps (val loss {out['final']['val_loss']:.3f}), the {L * N} heads on "
        f"{s['passages']} validation passages: {table}. Counts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(count_trained.items(), key=lambda kv: -kv[1]))
        + ". The untrained model: "
        + ", ".join(f"{k} {v}" for k, v in sorted(count_init.items(), key=lambda kv: -kv[1]))
        + f" (its largest previous-token score {init_max['previous']:.2f}, best other offset "
        f"{init_max['offset_score']:.2f}, delimiter enrichment {init_max['delimiter']:.2f}x, word-start "
        f"{init_max['word_start']:.2f}x; mean normalised entropy "
        f"{np.mean([m['entropy'] for row in init for m in row]):.2f} against "
        f"{np.mean([m['entropy'] for row in trained for m in row]):.2f} trained). "
        f"{len(learned)} trained heads have a sharp pattern beyond every untrained head: "
        + (", ".join(learned) if learned else "none")
        + "."
    )
    numbers = {
        "steps": s["steps"],
        "passages": s["passages"],
        "val_loss": float(out["final"]["val_loss"]),
        "layers": L,
        "heads": N,
        "trained": trained,
        "init": init,
        "counts": count_trained,
        "init_counts": count_init,
        "init_max": init_max,
        "init_sharp": int(init_sharp),
        "learned": learned,
        "figure_text": texts[idx][-WINDOW:],
        "figure_context": texts[idx],
        "figure_maps_permille": fig_maps,
    }
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def weights(rows: list[str]) -> np.ndarray:
    """A stored figure map (rows of thousandths) back as an array of weights."""
    return np.array([[int(v) for v in row.split()] for row in rows]) / 1000.0


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    L, N = numbers["layers"], numbers["heads"]
    trained, init = numbers["trained"], numbers["init"]
    chars = [{"\n": "\u21b5", " ": "\u2423"}.get(c, c) for c in numbers["figure_text"]]
    fig = plt.figure(figsize=(5.0 * N, 5.2 * L + 4.6))
    outer = fig.add_gridspec(
        2, 1, height_ratios=[5.2 * L, 3.6], hspace=0.1, top=0.95, bottom=0.05, left=0.04, right=0.99
    )
    grid = outer[0].subgridspec(L, N, hspace=0.22, wspace=0.12)
    ticks = np.arange(len(chars))
    for layer in range(L):
        for n in range(N):
            m = trained[layer][n]
            ax = fig.add_subplot(grid[layer, n])
            ax.imshow(weights(numbers["figure_maps_permille"][layer][n]), cmap="viridis", norm=PowerNorm(0.5, 0.0, 1.0))
            ax.set_xticks(ticks, chars, fontsize=8, family="DejaVu Sans Mono")
            ax.set_yticks(ticks, chars, fontsize=8, family="DejaVu Sans Mono")
            ax.tick_params(length=0, pad=1)
            color = "tab:red" if m.get("learned") else "black"
            ax.set_title(f"layer {layer}, head {n}: {m['label']} ({m['score']:.2f})", fontsize=12, color=color)
            if n == 0:
                ax.set_ylabel("query t", fontsize=11)
            if layer == L - 1:
                ax.set_xlabel("key s", fontsize=11)

    bars = outer[1].subgridspec(1, 4, wspace=0.25)
    names = [f"L{layer}H{n}" for layer in range(L) for n in range(N)]
    xs = np.arange(len(names))
    panels = [
        ("previous", "previous-token score", 0.5),
        ("offset_score", "best fixed-offset score (k != 1)", 0.5),
        ("delimiter", "delimiter enrichment (x)", 2.0),
        ("entropy", "normalised entropy", 0.7),
    ]
    for i, (key, title, threshold) in enumerate(panels):
        ax = fig.add_subplot(bars[0, i])
        values = [m[key] for row in trained for m in row] + [m[key] for row in init for m in row]
        ax.set_ylim(0, max(max(values), threshold) * 1.25)
        ax.bar(xs - 0.2, [m[key] for row in trained for m in row], 0.4, label="trained")
        ax.bar(xs + 0.2, [m[key] for row in init for m in row], 0.4, label="untrained init", color="tab:gray")
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"rule threshold {threshold:g}")
        if key == "delimiter":
            ax.axhline(1.0, color="k", ls=":", lw=1, label="no preference")
        if key == "offset_score":
            for x, m in zip(xs, (m for row in trained for m in row), strict=True):
                ax.text(x - 0.2, m[key] + 0.01, f"k={m['best_offset']}", ha="center", fontsize=6, rotation=90)
        ax.set_xticks(xs, names, rotation=90, fontsize=8)
        ax.set_title(title, fontsize=11)
        ax.legend(fontsize=8, loc="upper left", ncol=2)
    context = numbers["figure_context"].replace("\n", "\u21b5")
    fig.suptitle(
        f"Attention maps of the trained char GPT ({numbers['steps']} steps, val loss {numbers['val_loss']:.3f}) on "
        f"the last {len(chars)} characters of a validation passage (sqrt colour scale; red title = sharp pattern "
        f"beyond every untrained head)\npassage: {context!r}",
        fontsize=14,
        y=0.99,
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
