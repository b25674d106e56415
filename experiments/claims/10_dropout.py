"""Claim 10: on a small dataset a Transformer overfits, and dropout reduces the overfitting.

    TFDS_DATA_DIR=... python experiments/claims/10_dropout.py [--full]

The library's own training loop on a small slice of tiny Shakespeare, written to a temporary text file and read
with `data.source = "text_file"`: its last `validation_fraction` is the validation text (unseen, contiguous Shakespeare
that follows the training text). The same GPT is trained with several `model.dropout_rate`s (embeddings and
sublayer outputs; attention dropout stays off), everything else (seed, data order, schedule) identical.

The loop logs `train_loss` in training mode, i.e. with dropout on, which inflates it for dropout > 0. So that the
train/validation gap compares like with like, every evaluation here also measures the loss in eval mode (dropout
off) on a probe of the training text as long as the validation text: a scoped wrapper around the LM task's
`evaluate` adds it to the metrics row as `train_eval_loss` (nothing in jaxformer/ is changed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

CLAIM = (
    "On a small dataset a Transformer overfits — training loss keeps falling while validation loss turns up — "
    "and dropout reduces the overfitting."
)
SETUP = (
    "Character-level GPT (the shakespeare_char_cpu model: 4 layers, 4 heads, d=128, context 64, batch 12) set up "
    "to memorise: AdamW at a constant lr 2e-3 after a 50-step warmup (schedule='constant'), weight decay 0. "
    "Trained on only the first 9,500 characters of tiny Shakespeare's train split, written to a temporary text "
    "file (data.source='text_file', validation_fraction=2500/9500): the first 7,000 characters train, the following "
    "2,500 are the validation text (the slice is chosen so that every validation character is in the training "
    "vocabulary). 500 steps (~55 epochs of the training text), evaluated every 25 steps, once per "
    "model.dropout_rate in {0.0, 0.1, 0.3} (embeddings and sublayer outputs; attention dropout off), same seed. "
    "Besides the loop's train loss (dropout on), each evaluation measures the dropout-off loss on the first 2,500 "
    "training characters; the gap is final val minus that. Verdict: supported if without dropout the validation "
    "loss ends more than 0.05 above its minimum, its final train/val gap is larger than every dropout rate's, and "
    "the best dropout rate ends with a lower validation loss; not supported if the no-dropout model does not "
    "overfit (the claim is then not tested); partly supported otherwise. --full (untested here): 6 layers, "
    "d=384, context 256, batch 32, constant lr 1e-3, the first 250,000 characters, 5,000 steps, dropout in "
    "{0.0, 0.1, 0.2, 0.3, 0.5}."
)

RISE_MIN = 0.05  # dropout 0's val loss must end this far above its minimum to count as "turns up"


def sizes(size: str) -> dict:
    """The slice, the training and the dropout rates at each size; `overrides`: of the recipe's model, context and
    batch (tiny: lab.TINY_LM)."""
    return lab.pick(
        size,
        tiny=dict(
            chars=9_500,
            validation_fraction=2_500 / 9_500,
            learning_rate=2e-3,
            steps=12,
            evals=4,
            rates=(0.0, 0.1),
            overrides=lab.TINY_LM,
        ),
        default=dict(
            chars=9_500,
            validation_fraction=2_500 / 9_500,
            learning_rate=2e-3,
            steps=500,
            evals=20,
            rates=(0.0, 0.1, 0.3),
            overrides={},
        ),
        full=dict(
            chars=250_000,
            validation_fraction=0.2,
            learning_rate=1e-3,
            steps=5000,
            evals=25,
            rates=(0.0, 0.1, 0.2, 0.3, 0.5),
            overrides={
                "model.num_layers": 6,
                "model.num_heads": 6,
                "model.d_model": 384,
                "model.d_ff": 1536,
                "data.seq_len": 256,
                "batch_size": 32,
            },
        ),
    )


@contextlib.contextmanager
def train_loss_without_dropout():
    """While active, every LM evaluation also reports `train_eval_loss`: the eval-mode (dropout off) loss on the
    first len(validation) tokens of the training text, computed with the loop's own eval step."""
    from jaxformer import data
    from jaxformer.training.tasks.base import evaluate_batches
    from jaxformer.training.tasks.lm import LanguageModelling

    original = LanguageModelling.evaluate

    def evaluate(self, eval_step, state, model) -> dict:
        row = original(self, eval_step, state, model)
        probe = data.ArrayTokens(self.train_tokens.windows([0], len(self.eval_tokens))[0])
        cfg = self.config
        batches = data.pipeline.eval_windows(probe, batch_size=cfg.batch_size, seq_len=cfg.data.seq_len)
        row["train_eval_loss"] = evaluate_batches(eval_step, state, batches)["val_loss"]
        return row

    LanguageModelling.evaluate = evaluate
    try:
        yield
    finally:
        LanguageModelling.evaluate = original


def write_slice(path: str, chars: int, validation_fraction: float) -> dict:
    """Writes the first `chars` characters of tiny Shakespeare's train split to `path`; checks that the char
    tokenizer (fitted to the training part) covers the validation tail."""
    from jaxformer import data

    text = data.tfds_text("tiny_shakespeare", "train", data_dir=None)[:chars]
    cut = int(len(text) * (1.0 - validation_fraction))
    unknown = sorted(set(text[cut:]) - set(text[:cut]))
    if unknown:
        raise ValueError(f"validation tail has characters absent from the training part: {unknown}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return dict(train_chars=cut, val_chars=len(text) - cut, vocab=len(set(text[:cut])))


def summarize(rate: float, history: list[dict]) -> dict:
    rows = [r for r in history if "val_loss" in r]
    steps = [r["step"] for r in rows]
    val = [r["val_loss"] for r in rows]
    train = [r["train_loss"] for r in rows]
    train_eval = [r["train_eval_loss"] for r in rows]
    best = int(np.argmin(val))
    return dict(
        dropout=rate,
        steps=steps,
        val=val,
        train=train,
        train_eval=train_eval,
        min_val=val[best],
        min_step=steps[best],
        final_val=val[-1],
        final_train=train[-1],
        final_train_eval=train_eval[-1],
        rise=val[-1] - val[best],
        gap=val[-1] - train_eval[-1],
        gap_train_mode=val[-1] - train[-1],
    )


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, train_loss_without_dropout():
        path = os.path.join(tmp, "shakespeare_slice.txt")
        corpus = write_slice(path, s["chars"], s["validation_fraction"])
        for rate in s["rates"]:
            config = lab.lm_config(
                s["steps"],
                **{
                    "data.source": "text_file",
                    "data.path": path,
                    "data.validation_fraction": s["validation_fraction"],
                    "model.dropout_rate": rate,
                    "model.attention_dropout_rate": 0.0,
                    "schedule": "constant",  # no decay: the model keeps fitting the training text to the end
                    "learning_rate": s["learning_rate"],
                    "optimizer.weight_decay": 0.0,
                    **s["overrides"],
                },
            )
            config.eval_every = s["steps"] // s["evals"]
            config.log_every = config.eval_every
            tokens_per_step = config.batch_size * config.data.seq_len
            history = lab.train_lm(config)["history"]
            r = summarize(rate, history)
            runs.append(r)
            print(
                f"dropout {rate}: min val {r['min_val']:.3f} @ {r['min_step']}, final val {r['final_val']:.3f}, "
                f"final train {r['final_train']:.3f} (dropout off {r['final_train_eval']:.3f}), gap {r['gap']:.3f}",
                flush=True,
            )

    none = runs[0]
    dropped = [r for r in runs if r["dropout"] >= 0.1]
    best = min(dropped, key=lambda r: r["final_val"])
    overfits = none["rise"] > RISE_MIN
    larger_gap = all(none["gap"] > r["gap"] for r in dropped)
    better = best["final_val"] < none["final_val"]
    if not overfits:
        supported = False  # no overfitting to reduce: the claim is not tested
    elif larger_gap and better:
        supported = True
    else:
        supported = None

    epochs = s["steps"] * tokens_per_step / corpus["train_chars"]
    per_rate = "; ".join(
        f"dropout {r['dropout']:g}: val min {r['min_val']:.3f} at step {r['min_step']}, final {r['final_val']:.3f} "
        f"(+{r['rise']:.3f}), final train {r['final_train']:.3f} with dropout on / {r['final_train_eval']:.3f} off, "
        f"gap {r['gap']:.3f}"
        for r in runs
    )
    gaps = ", ".join(f"{r['gap']:.3f}" for r in dropped)
    rates = ", ".join(f"{r['dropout']:g}" for r in dropped)
    result = (
        f"Trained on {corpus['train_chars']:,} characters (~{epochs:.0f} epochs in {s['steps']:,} steps), "
        f"validated on the next {corpus['val_chars']:,}. {per_rate}. Without dropout the validation loss "
        f"{'turns up' if overfits else 'does not turn up'}: it bottoms out at {none['min_val']:.3f} (step "
        f"{none['min_step']}) and ends {none['rise']:.3f} higher (threshold {RISE_MIN}), while its dropout-off "
        f"training loss falls to {none['final_train_eval']:.3f}, a train/val gap of {none['gap']:.3f} vs "
        f"{gaps} with dropout {rates}. The best dropout ({best['dropout']:g}) ends at val "
        f"{best['final_val']:.3f} vs {none['final_val']:.3f} without dropout "
        f"(no dropout minus best: {none['final_val'] - best['final_val']:+.3f}; best-ever val {best['min_val']:.3f} vs "
        f"{none['min_val']:.3f})."
    )
    if not overfits:
        result += (
            f" The no-dropout model did not overfit (val rise {none['rise']:.3f} <= {RISE_MIN}), so whether dropout "
            f"reduces overfitting is not tested by this run."
        )
    else:
        result += (
            f" Overfitting shown; no-dropout gap larger than every dropout rate's: {'yes' if larger_gap else 'no'}; "
            f"best dropout ends with lower val loss: {'yes' if better else 'no'}."
        )
    return lab.Outcome(result=result, supported=supported, numbers=dict(runs=runs, corpus=corpus, sizes=s))


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    runs = numbers["runs"]
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(runs)))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    for r, c in zip(runs, colors, strict=True):
        label = f"dropout {r['dropout']:g}"
        ax.plot(r["steps"], r["val"], color=c, lw=2, label=f"{label}: validation")
        ax.plot(r["steps"], r["train_eval"], color=c, lw=1.2, ls="--", label=f"{label}: train (dropout off)")
        ax.plot(r["steps"], r["train"], color=c, lw=0.8, ls=":", label=f"{label}: train (as trained)")
        ax.plot([r["min_step"]], [r["min_val"]], "o", color=c, ms=6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / char)")
    lo = min(min(r["train_eval"]) for r in runs)
    hi = max(max(r["val"][1:] + r["train"][1:]) for r in runs)  # the first evaluation is still near uniform
    ax.set_ylim(max(0.0, lo - 0.2), hi + 0.2)
    ax.set_title("Loss curves (dots: minimum validation loss)", fontsize=10)
    ax.legend(fontsize=7, ncol=1, loc="lower left")
    ax.grid(alpha=0.3)

    ax = axes[1]
    for r, c in zip(runs, colors, strict=True):
        gap = np.asarray(r["val"]) - np.asarray(r["train_eval"])
        ax.plot(r["steps"], gap, color=c, lw=2, label=f"dropout {r['dropout']:g}")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("validation - train loss (both dropout off)")
    ax.set_title("Generalisation gap", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    c = numbers["corpus"]
    fig.suptitle(
        f"Overfitting a {c['train_chars']:,}-character slice of tiny Shakespeare, with and without dropout",
        fontsize=12,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
