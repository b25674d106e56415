"""Claim 16: at equal compute per token, a mixture of experts learns more than a dense model in the same steps.

    TFDS_DATA_DIR=... python experiments/claims/16_moe_vs_dense.py [--full]

The library's own training loop on tiny Shakespeare, twice per seed: the dense SwiGLU model and the same model with
each feed-forward replaced by 8 SwiGLU experts of half the width, 2 per token (the recipe
moe_shakespeare_char_cpu). A token meets the same number of FFN weights in both (2 x 3 x D x F/2 = 3 x D x F per
layer), the MoE holding 4x the FFN parameters; everything else (seed, data order, schedule, attention) is identical.
The MoE adds 0.01 x the load-balancing loss and 0.001 x the router z-loss (its `val_loss` is the data's loss alone).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

CLAIM = (
    "At equal active parameters per token, a sparse mixture of experts (top-2 of 8) reaches a lower validation "
    "loss than the dense model in the same number of steps (Shazeer et al. 2017; Switch Transformer; Mixtral)."
)
SETUP = (
    "Character-level GPT (the shakespeare_char_cpu model: 4 layers, 4 heads, d=128, context 64, batch 12, AdamW "
    "lr 1e-3 cosine) with SwiGLU feed-forwards. Dense: SwiGLU 512 wide. MoE: 8 SwiGLU experts 256 wide, top-2 "
    "(softmax, renormalised), load-balancing loss x 0.01, z-loss x 0.001; the same 393k FFN weights per token and "
    "layer, 4x as many in all. 1,500 steps each, evaluated on the whole validation split every 150 steps, two seeds. "
    "Verdict: supported if the MoE's final validation loss is lower for every seed and the mean gain exceeds twice "
    "the larger seed-to-seed spread of the two models; not supported if the dense model is lower on average; "
    "partly supported otherwise. --full (untested here): 6 layers, d=384, context 256, batch 32, 16 experts, "
    "5,000 steps."
)


def sizes(size: str) -> dict:
    return lab.pick(
        size,
        tiny=dict(steps=12, evals=2, seeds=(0,), d_ff=64, experts=4, overrides=lab.TINY_LM),
        default=dict(steps=1500, evals=10, seeds=(0, 1), d_ff=512, experts=8, overrides={}),
        full=dict(
            steps=5000,
            evals=25,
            seeds=(0, 1),
            d_ff=1536,
            experts=16,
            overrides={
                "model.num_layers": 6,
                "model.num_heads": 6,
                "model.d_model": 384,
                "data.seq_len": 256,
                "batch_size": 32,
            },
        ),
    )


def config_for(s: dict, seed: int, moe: bool):
    overrides = {**s["overrides"], "model.d_ff": s["d_ff"]}
    config = lab.lm_config(s["steps"], **{"model.activation": "swiglu", "seed": 1337 + seed, **overrides})
    if moe:
        config.model.update(
            num_experts=s["experts"],
            experts_per_token=2,
            expert_d_ff=s["d_ff"] // 2,
            router_aux_loss_coef=0.01,
            router_z_loss_coef=0.001,
        )
    config.eval_every = s["steps"] // s["evals"]
    config.log_every = config.eval_every
    return config


def summarize(history: list[dict]) -> dict:
    rows = [r for r in history if "val_loss" in r]
    timed = [r["step_ms"] for r in history if r.get("step_ms")]
    out = dict(
        steps=[r["step"] for r in rows],
        val=[r["val_loss"] for r in rows],
        final_val=rows[-1]["val_loss"],
        step_ms=float(np.median(timed)) if timed else None,
    )
    if "train_moe_max_load" in rows[-1]:
        out["max_load"] = [r["train_moe_max_load"] for r in history if "train_moe_max_load" in r]
        out["balance"] = [r["train_moe_balance_loss"] for r in history if "train_moe_balance_loss" in r]
        out["log_steps"] = [r["step"] for r in history if "train_moe_max_load" in r]
    return out


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    runs = {"dense": [], "moe": []}
    params = {}
    for seed in s["seeds"]:
        for kind in ("dense", "moe"):
            config = config_for(s, seed, kind == "moe")
            trained = lab.train_lm(config, keep_model=seed == s["seeds"][0])
            r = summarize(trained["history"]) | {"seed": seed}
            runs[kind].append(r)
            if "model" in trained:
                params[kind] = _parameters(trained["model"])
            print(f"{kind} seed {seed}: final val {r['final_val']:.4f}, {r['step_ms']} ms/step", flush=True)

    final = {k: [r["final_val"] for r in v] for k, v in runs.items()}
    gains = [d - m for d, m in zip(final["dense"], final["moe"], strict=True)]
    spread = max(max(v) - min(v) for v in final.values())
    mean_gain = float(np.mean(gains))
    if mean_gain < 0:
        supported = False
    elif all(g > 0 for g in gains) and mean_gain > 2 * spread:
        supported = True
    else:
        supported = None
    per_seed = "; ".join(
        f"seed {seed}: dense {d:.4f}, MoE {m:.4f} ({d - m:+.4f})"
        for seed, d, m in zip(s["seeds"], final["dense"], final["moe"], strict=True)
    )
    moe, dense = runs["moe"][0], runs["dense"][0]
    result = (
        f"After {s['steps']:,} steps, validation loss (nats / char): {per_seed}. Mean gain of the MoE "
        f"{mean_gain:+.4f}; the larger seed-to-seed spread of the two models {spread:.4f}. Parameters: dense "
        f"{params['dense']['total']:,}, MoE {params['moe']['total']:,} in all, {params['moe']['active']:,} active per "
        f"token (dense {params['dense']['active']:,}). Step time (median, this CPU): dense {dense['step_ms']:.1f} ms, "
        f"MoE {moe['step_ms']:.1f} ms. The MoE's busiest expert ended with {moe['max_load'][-1]:.2f}x its fair share "
        f"of the choices (1.0 = balanced; balance loss {moe['balance'][-1]:.3f}, 2.0 when balanced)."
    )
    return lab.Outcome(result=result, supported=supported, numbers=dict(runs=runs, params=params, sizes=s))


def _parameters(model) -> dict:
    """Total parameters, and those a token meets: the experts' count scaled by k / E."""
    from flax import nnx

    from jaxformer import nn

    total = sum(x.size for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param)))
    inactive = 0
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nn.MoEFeedForward):
            experts = sum(getattr(module, n)[...].size for n in ("w_gate", "w_up", "w_down"))
            inactive += experts * (1 - module.experts_per_token / module.num_experts)
    return {"total": int(total), "active": int(total - inactive)}


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    runs = numbers["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    for kind, color in (("dense", "tab:blue"), ("moe", "tab:red")):
        for r, style in zip(runs[kind], ("-", "--"), strict=False):
            label = f"{'dense SwiGLU' if kind == 'dense' else 'MoE top-2 of 8'} (seed {r['seed']})"
            ax.plot(r["steps"], r["val"], style, color=color, lw=1.8, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats / char)")
    tail = [v for rs in runs.values() for r in rs for v in r["val"][1:]]
    if tail:
        ax.set_ylim(min(tail) - 0.05, max(tail) + 0.05)
    ax.set_title("Equal active parameters per token", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for r, style in zip(runs["moe"], ("-", "--"), strict=False):
        ax.plot(
            r["log_steps"], r["max_load"], style, color="tab:red", lw=1.5, label=f"busiest expert (seed {r['seed']})"
        )
    ax.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("busiest expert's share x E / k (1 = balanced)")
    ax.set_title("Routing balance of the MoE (training batches, mean over layers)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
