"""Claim 09: post-norm Transformers need learning-rate warmup, pre-norm ones do not; warmup-decay schedules differ
little once warmup is there.

    python experiments/claims/09_norm_position.py [--full]
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lab
import numpy as np

CLAIM = (
    "Post-norm Transformers (the original) need learning-rate warmup to train stably, while pre-norm Transformers "
    "train without it (Xiong et al. 2020); warmup-decay schedules differ little once warmup is there."
)
SETUP = (
    "Char-level GPT on tiny Shakespeare (the shakespeare_char_cpu recipe: d=128, 4 heads, context 64, batch 12, "
    "AdamW b2=0.99, weight decay 0.1). (a) 2x2: norm_position {pre, post} x warmup {0, 100 steps} (linear warmup "
    "into cosine decay to 1e-4), 6 layers, peak lr 1e-3, gradient clipping OFF (optimizer.clip_norm=0, so "
    "clipping cannot mask the early large updates), 400 steps each, same seed. Measured: final val_loss, the "
    "early training loss (mean over steps 51-150), the largest logged gradient norm (logged every 10 steps), and "
    "divergence (a non-finite loss stops the library's loop: recorded as 'diverged at step N'). (b) Schedule zoo: "
    "pre-norm, 4 layers, default clipping 1.0, 300 steps with 30 warmup steps and the same peak lr 1e-3: "
    "warmup_cosine, warmup_linear, inverse_sqrt (its factor set so its peak equals 1e-3) and warmup_stable_decay; "
    "final val_loss each. Verdict: supported if post-norm without warmup is clearly worse than with it (val_loss gap "
    "> 0.05, or it diverges) while pre-norm's gap is less than half of that and the schedules' val losses span "
    "< 0.1; not supported if post-norm without warmup is not clearly worse; partly otherwise. --full: 12 layers, "
    "d=256, 8 heads, 2000 steps with 200 warmup steps for (a); 6 layers, 1500 steps, 150 warmup steps for (b)."
)

NORMS = ("pre", "post")
PEAK_LR = 1e-3
ZOO = ("warmup_cosine", "warmup_linear", "inverse_sqrt", "warmup_stable_decay")


def sizes(size: str) -> dict:
    """The settings of (a) and (b) at each size: the model (overrides of the recipe's; tiny: lab.TINY_LM), steps and
    warmup steps, (a)'s logging interval; `early`: the early training loss is the mean over steps early[0] + 1 ..
    early[1]."""
    return lab.pick(
        size,
        tiny=dict(
            a=dict(model=lab.TINY_LM, steps=12, warmup=4, log_every=2),
            b=dict(model=lab.TINY_LM, steps=10, warmup=2),
            early=(2, 8),
        ),
        default=dict(
            a=dict(model={"model.num_layers": 6}, steps=400, warmup=100, log_every=10),
            b=dict(model={"model.num_layers": 4}, steps=300, warmup=30),
            early=(50, 150),
        ),
        full=dict(
            a=dict(
                model={"model.num_layers": 12, "model.d_model": 256, "model.num_heads": 8, "model.d_ff": 1024},
                steps=2000,
                warmup=200,
                log_every=10,
            ),
            b=dict(model={"model.num_layers": 6}, steps=1500, warmup=150),
            early=(50, 150),
        ),
    )


def train_keeping_history(config) -> dict:
    """Like lab.train_lm, but a run that goes non-finite returns what it logged instead of raising:
    {"final": last row or None, "history": logged rows, "diverged_at": step or None}."""
    from jaxformer.training.loop import NonFiniteLossError, train_and_evaluate

    with tempfile.TemporaryDirectory() as workdir:
        final, diverged_at = None, None
        try:
            final = train_and_evaluate(config, workdir)
        except NonFiniteLossError as error:
            found = re.search(r"at step (\d+)", str(error))
            diverged_at = int(found.group(1)) if found else -1
        path = os.path.join(workdir, "metrics.jsonl")
        history = []
        if os.path.exists(path):
            with open(path) as f:
                history = [json.loads(line) for line in f if line.strip()]
    return {"final": final, "history": history, "diverged_at": diverged_at}


def summarise(out: dict, window: tuple[int, int]) -> dict:
    """The numbers of one run; `early_train_loss`: the mean logged train loss over steps window[0] + 1 .. window[1]."""
    history = out["history"]
    early = [r["train_loss"] for r in history if window[0] < r["step"] <= window[1] and "train_loss" in r]
    grads = [r["grad_norm"] for r in history if "grad_norm" in r and math.isfinite(r["grad_norm"])]
    val = out["final"]["val_loss"] if out["final"] and "val_loss" in out["final"] else None
    return {
        "val_loss": val,
        "early_train_loss": float(np.mean(early)) if early else None,
        "max_grad_norm": max(grads) if grads else None,
        "diverged_at": out["diverged_at"],
        "steps": [r["step"] for r in history if "train_loss" in r],
        "train_loss": [round(r["train_loss"], 4) for r in history if "train_loss" in r],
        "grad_norm": [round(r["grad_norm"], 4) for r in history if "train_loss" in r],
        "learning_rate": [r["learning_rate"] for r in history if "train_loss" in r],
    }


def describe(run: dict) -> str:
    if run["diverged_at"] is not None:
        return f"diverged at step {run['diverged_at']}"
    return (
        f"val {run['val_loss']:.3f} (early train loss {run['early_train_loss']:.3f}, max grad norm "
        f"{run['max_grad_norm']:.2f})"
    )


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    a, b, early = s["a"], s["b"], s["early"]
    model, steps_a, warm_a = a["model"], a["steps"], a["warmup"]
    zoo_model, steps_b, warm_b = b["model"], b["steps"], b["warmup"]
    d_model = zoo_model.get("model.d_model", 128)  # the zoo model's width, which inverse_sqrt divides by

    grid = {}
    for norm in NORMS:
        for warmup in (0, warm_a):
            config = lab.lm_config(
                steps_a,
                **model,
                **{
                    "model.norm_position": norm,
                    "warmup_steps": warmup,
                    "learning_rate": PEAK_LR,
                    "schedule": "warmup_cosine",
                    "optimizer.clip_norm": 0.0,
                    "log_every": a["log_every"],
                },
            )
            grid[f"{norm}/warmup={warmup}"] = summarise(train_keeping_history(config), early)
            print(f"{norm}-norm, warmup {warmup}: {describe(grid[f'{norm}/warmup={warmup}'])}", file=sys.stderr)

    zoo = {}
    for schedule in ZOO:
        lr = PEAK_LR * math.sqrt(d_model * warm_b) if schedule == "inverse_sqrt" else PEAK_LR
        config = lab.lm_config(
            steps_b,
            **zoo_model,
            **{"model.norm_position": "pre", "warmup_steps": warm_b, "learning_rate": lr, "schedule": schedule},
        )
        out = train_keeping_history(config)
        zoo[schedule] = summarise(out, early)
        zoo[schedule]["factor"] = lr
        print(f"schedule {schedule}: {describe(zoo[schedule])}", file=sys.stderr)

    def gap(norm: str) -> float:
        without, with_ = grid[f"{norm}/warmup=0"], grid[f"{norm}/warmup={warm_a}"]
        if without["diverged_at"] is not None:
            return math.inf
        if with_["diverged_at"] is not None:
            return -math.inf
        return without["val_loss"] - with_["val_loss"]

    gap_pre, gap_post = gap("pre"), gap("post")
    zoo_vals = {s: zoo[s]["val_loss"] for s in ZOO if zoo[s]["val_loss"] is not None}
    spread = max(zoo_vals.values()) - min(zoo_vals.values()) if len(zoo_vals) == len(ZOO) else math.inf
    post_hurt = gap_post > 0.05
    pre_fine = math.isfinite(gap_pre) and gap_pre < 0.5 * gap_post
    if not post_hurt:
        supported = False
    elif pre_fine and spread < 0.1:
        supported = True
    else:
        supported = None

    gap_text = lambda g: "inf (diverged)" if math.isinf(g) else f"{g:+.3f}"
    best = min(zoo_vals, key=zoo_vals.get) if zoo_vals else "none"
    worst = max(zoo_vals, key=zoo_vals.get) if zoo_vals else "none"
    result = (
        f"(a) {model.get('model.num_layers')}-layer models, peak lr {PEAK_LR:g}, no gradient clipping, {steps_a} "
        f"steps: post-norm without warmup: {describe(grid['post/warmup=0'])}; post-norm with {warm_a} warmup steps: "
        f"{describe(grid[f'post/warmup={warm_a}'])}; pre-norm without warmup: {describe(grid['pre/warmup=0'])}; "
        f"pre-norm with warmup: {describe(grid[f'pre/warmup={warm_a}'])}. Val-loss cost of dropping warmup: "
        f"{gap_text(gap_post)} for post-norm, {gap_text(gap_pre)} for pre-norm. (b) Pre-norm, {steps_b} steps with "
        f"{warm_b} warmup steps: "
        + ", ".join(f"{s} {v:.3f}" for s, v in zoo_vals.items())
        + f" (val loss); spread {spread:.3f}, best {best}, worst {worst}."
    )
    numbers = {
        "peak_lr": PEAK_LR,
        "clip_norm_a": 0.0,
        "steps_a": steps_a,
        "warmup_a": warm_a,
        "model_a": model,
        "steps_b": steps_b,
        "warmup_b": warm_b,
        "model_b": zoo_model,
        "early_window": list(early),
        "grid": grid,
        "gap_post": gap_post if math.isfinite(gap_post) else None,
        "gap_pre": gap_pre if math.isfinite(gap_pre) else None,
        "zoo": zoo,
        "zoo_spread": spread if math.isfinite(spread) else None,
    }
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.2, 1.0, 0.9]})
    colors = {"pre": "tab:blue", "post": "tab:red"}
    for name, run in numbers["grid"].items():
        norm, warmup = name.split("/")
        style = "-" if warmup != "warmup=0" else "--"
        label = f"{norm}-norm, {warmup.replace('=', ' ')}"
        if run["diverged_at"] is not None:
            label += f" (diverged at {run['diverged_at']})"
        elif run["val_loss"] is not None:
            label += f" (val {run['val_loss']:.3f})"
        axes[0].plot(run["steps"], run["train_loss"], style, color=colors[norm], label=label, lw=1.3)
        axes[1].plot(run["steps"], run["grad_norm"], style, color=colors[norm], label=label, lw=1.1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (mean over 10 steps, log scale)")
    axes[0].set_title(
        f"(a) {numbers['model_a'].get('model.num_layers')} layers, peak lr {numbers['peak_lr']:g}, no clipping",
        fontsize=10,
    )
    axes[0].axvspan(0, numbers["warmup_a"], color="0.9", zorder=0, label=f"warmup ({numbers['warmup_a']} steps)")
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("gradient norm (logged steps)")
    axes[1].set_title("(a) gradient norm", fontsize=10)
    axes[1].legend(fontsize=7)

    zoo = numbers["zoo"]
    names = [s for s in zoo if zoo[s]["val_loss"] is not None]
    values = [zoo[s]["val_loss"] for s in names]
    bars = axes[2].bar(range(len(names)), values, color="tab:blue")
    axes[2].bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    axes[2].set_xticks(range(len(names)), [s.replace("_", "\n") for s in names], fontsize=8)
    if values:
        low, high = min(values), max(values)
        axes[2].set_ylim(low - max(0.15, 0.5 * (high - low)), high + max(0.08, 0.3 * (high - low)))
    axes[2].set_ylabel("final val_loss")
    axes[2].set_title(
        f"(b) pre-norm, {numbers['steps_b']} steps, {numbers['warmup_b']} warmup steps (y axis cut)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
