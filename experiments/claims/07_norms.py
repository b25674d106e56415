"""Claim 07: LayerNorm and RMSNorm suit Transformers better than BatchNorm, because they normalise each token on
its own: no dependence on the batch, on the other sequences or the padding in it, and no train / inference gap.

    python experiments/claims/07_norms.py [--full]

(a) trains the same char-level GPT on tiny Shakespeare with the library's own loop (`lab.train_lm`'s recipe; the
run's workdir is kept until the trained model is read back with `load_trained`) for each norm and batch size, at
an equal number of training tokens. Besides the loop's `val_loss` (eval mode: BatchNorm uses its running averages)
the trained model is evaluated on the same validation text in train mode (BatchNorm uses the statistics of the
evaluation batch, which, in a causal LM, include every later token of every sequence in the batch).
(b) measures how much one sequence's logits move when it is run alone rather than in a batch of other sequences,
and how much the logits at positions <= t move when the tokens after t are re-drawn, in both modes.
(c) runs the library's padding-aware BatchNorm inside a random-init BERT in train mode with more and more padding,
against the same BERT whose BatchNorm statistics count the padding (the attention padding mask kept on in both),
and checks the first norm by hand in NumPy.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

from jaxformer import data, ops
from jaxformer.models.bert import BERT
from jaxformer.models.config import ModelConfig
from jaxformer.nn.blocks import apply_norm
from jaxformer.nn.norms import BatchNorm

CLAIM = (
    "LayerNorm (and RMSNorm) suit Transformers better than BatchNorm: they normalise each token on its own, so they "
    "do not depend on the batch size or on the other sequences and padding in the batch, and they behave the same "
    "in training and at inference."
)
SETUP = (
    "(a) A char-level GPT on tiny Shakespeare (2 layers, d=128, 4 heads, context 64; the shakespeare_char_cpu "
    "recipe: AdamW, lr 1e-3 warmup-cosine, no dropout), trained with the library's loop for norm in {layernorm, "
    "rmsnorm, batchnorm} (pre-norm, incl. the final norm) at batch sizes 4 and 32 with an EQUAL number of training "
    "tokens (600 steps at batch 4, 75 steps at batch 32: 153,600 tokens each). Reported: the loop's val_loss on "
    "the whole validation text (eval mode: BatchNorm uses its running averages), the same loss in train mode "
    "(BatchNorm uses the evaluation batch's statistics, at the training batch size), and the last logged train "
    "loss. (b) With each batch-4 model: max |Δ logits| of one validation window run alone vs inside a batch with 7 "
    "other windows, and of the logits at positions <= 31 when tokens 32.. of every row are re-drawn, in train and "
    "eval mode. (c) Random-init BERT-tiny (2 layers, d=64) with norm=batchnorm in train mode (batch statistics), "
    "4 sequences of lengths 5-24 padded to 24, 32, 48, 88 with fresh padding ids each time: max |Δ hidden| at real "
    "tokens vs the 24-token batch, with the library's masked BatchNorm (`valid=`) and with statistics over every "
    "position (the attention padding mask on in both); the first norm (after the embedding sum) is also recomputed "
    "in NumPy. --full: 4 layers, batch sizes 4, 32, 128 at 8000 steps of batch 4's tokens, 12 batch-mates."
)

NORMS = ("layernorm", "rmsnorm", "batchnorm")
BN_MOMENTUM = inspect.signature(BatchNorm.__init__).parameters["momentum"].default  # the library's default
SAME_MAX = 1e-4  # a difference counts as "none" (float32 round-off) below this
REAL_MIN = 1e-2  # a difference counts as "real" above this


def sizes(size: str) -> dict:
    """(a)'s and (b)'s settings at each size; `model`: overrides of the recipe's model and context besides the
    layers (tiny: lab.TINY_LM's, whose layers and batch size this claim sets itself)."""
    tiny_model = {k: v for k, v in lab.TINY_LM.items() if k not in ("model.num_layers", "batch_size")}
    return lab.pick(
        size,
        tiny=dict(layers=1, batch_sizes=[4, 8], steps_at_4=8, mates=3, cut=16, model=tiny_model),
        default=dict(layers=2, batch_sizes=[4, 32], steps_at_4=600, mates=7, cut=32, model={}),
        full=dict(layers=4, batch_sizes=[4, 32, 128], steps_at_4=8000, mates=12, cut=32, model={}),
    )


def max_abs(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def fmt(value: float) -> str:
    return "exactly 0" if value == 0.0 else f"{value:.1e}"


# -- (a) training ----------------------------------------------------------------------------------------------------


def split_modes(model: nnx.Module):
    """(train graphdef, eval graphdef, state): merge either graphdef with the state for that mode's forward."""
    model.train()
    train_def, state = nnx.split(model)
    model.eval()
    eval_def, _ = nnx.split(model)
    return train_def, eval_def, state


@functools.partial(jax.jit, static_argnums=0)
def logits_fn(graphdef, state, tokens, valid):
    """The logits of a pure forward: the BatchNorm statistics it updates are thrown away."""
    return nnx.merge(graphdef, state)(tokens, valid=valid)


@functools.partial(jax.jit, static_argnums=0)
def nll_sum(graphdef, state, inputs, targets, valid):
    logits = nnx.merge(graphdef, state)(inputs, valid=valid)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nll * valid), jnp.sum(valid)


def val_loss(graphdef, state, eval_tokens: np.ndarray, batch_size: int, seq_len: int) -> float:
    """Mean next-token loss over the whole validation text, as the loop's evaluation batches it."""
    total = count = 0.0
    for b in data.pipeline.eval_windows(data.ArrayTokens(eval_tokens), batch_size=batch_size, seq_len=seq_len):
        s, n = nll_sum(graphdef, state, b["inputs"], b["targets"], b["weights"])
        total, count = total + float(s), count + float(n)
    return total / count


def batch_dependence(graphdef, state, eval_tokens: np.ndarray, seq_len: int, mates: int, cut: int, rng) -> dict:
    """(b) for one mode: alone vs in a batch, and the effect of re-drawing the tokens after `cut`."""
    starts = rng.choice(len(eval_tokens) - seq_len, size=mates + 1, replace=False)
    batch = np.stack([eval_tokens[s : s + seq_len] for s in starts]).astype(np.int32)
    full = np.ones(batch.shape, bool)
    in_batch = logits_fn(graphdef, state, batch, full)
    alone = logits_fn(graphdef, state, batch[:1], full[:1])
    changed = batch.copy()
    changed[:, cut + 1 :] = rng.integers(0, int(eval_tokens.max()) + 1, size=changed[:, cut + 1 :].shape)
    after = logits_fn(graphdef, state, changed, full)
    return dict(
        alone_vs_batch=max_abs(alone[0], in_batch[0]),
        future=max_abs(in_batch[:, : cut + 1], after[:, : cut + 1]),
        logit_scale=float(jnp.max(jnp.abs(in_batch))),
    )


def train_all(s: dict) -> tuple[dict, dict]:
    runs, dependence = {}, {}
    eval_tokens = None
    for norm in NORMS:
        for bs in s["batch_sizes"]:
            steps = s["steps_at_4"] * 4 // bs
            overrides = {"model.num_layers": s["layers"], "model.norm": norm, "batch_size": bs}
            config = lab.lm_config(steps, **s["model"], **overrides)
            if eval_tokens is None:
                eval_tokens = lab.load_tokens(config)[2]
            out = lab.train_lm(config, keep_model=True)
            final, history, model = out["final"], out["history"], out["model"]
            train_def, eval_def, state = split_modes(model)
            T = config.data.seq_len
            runs[f"{norm}/{bs}"] = dict(
                norm=norm,
                batch_size=bs,
                steps=steps,
                tokens=steps * bs * T,
                val_loss=final["val_loss"],
                val_loss_train_mode=val_loss(train_def, state, eval_tokens, bs, T),
                train_loss=history[-1]["train_loss"],
                curve=[[r["step"], r["train_loss"]] for r in history],
            )
            print(
                f"{norm} batch {bs}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in runs[f"{norm}/{bs}"].items() if "loss" in k)
            )
            if bs == min(s["batch_sizes"]):
                dependence[norm] = {
                    mode: batch_dependence(g, state, eval_tokens, T, s["mates"], s["cut"], np.random.default_rng(7))
                    for mode, g in (("train", train_def), ("eval", eval_def))
                }
    return runs, dependence


# -- (c) padding -----------------------------------------------------------------------------------------------------


def naive_bert_hidden(model: BERT, tokens, valid):
    """BERT's forward with the attention padding mask but BatchNorm statistics over every position, padding too."""
    x = model.embed(tokens)
    x = model.blocks(x, mask=ops.padding_mask(valid), valid=None)
    return apply_norm(model.final_norm, x, None)


def padding_experiment(rng: np.random.Generator) -> dict:
    cfg = ModelConfig.variant(
        "bert-tiny", norm="batchnorm", dropout_rate=0.0, attention_dropout_rate=0.0, max_len=128, norm_epsilon=1e-5
    )
    model = BERT(cfg, rngs=nnx.Rngs(3))
    model.train()  # batch statistics
    graphdef, state = nnx.split(model)
    B, T, extras = 4, 24, [0, 8, 24, 64]
    lengths = rng.integers(5, T + 1, size=B)
    lengths[0] = T
    tokens = rng.integers(1, cfg.vocab_size, size=(B, T))

    @jax.jit
    def forward(state, tok, val):
        """(masked hidden, naive hidden, the embedding sum that the first BatchNorm normalises)."""
        masked = nnx.merge(graphdef, state)(tok, valid=val).hidden
        naive = naive_bert_hidden(nnx.merge(graphdef, state), tok, val)
        m = nnx.merge(graphdef, state)
        m.embed.norm = None
        return masked, naive, m.embed(tok)

    def padded(extra):
        valid = np.arange(T + extra)[None, :] < lengths[:, None]
        tok = np.concatenate([tokens, np.zeros((B, extra), tokens.dtype)], axis=1)
        return np.where(valid, tok, rng.integers(1, cfg.vocab_size, size=tok.shape)).astype(np.int32), valid

    def bn(x, weights):  # NumPy batch norm over (B, T) with per-token weights; scale 1, bias 0 at init
        w = weights[..., None].astype(np.float64)
        mean = (x * w).sum((0, 1)) / w.sum()
        var = (np.square(x - mean) * w).sum((0, 1)) / w.sum()
        return (x - mean) / np.sqrt(var + cfg.norm_epsilon)

    real = np.arange(T)[None, :] < lengths[:, None]
    base_tok, base_valid = padded(0)
    masked0, naive0, x0 = forward(state, base_tok, base_valid)
    x0 = np.asarray(x0, np.float64)
    base_np = dict(masked=bn(x0, base_valid), naive=bn(x0, np.ones_like(base_valid)))
    # The library's first BatchNorm against the NumPy formula, on the same activations.
    fresh = nnx.merge(graphdef, state)  # a copy: its statistics update leaves `state` alone
    first_norm = np.asarray(fresh.embed.norm(jnp.asarray(x0, jnp.float32), jnp.asarray(base_valid)))
    library_vs_numpy = float(np.max(np.abs(first_norm - base_np["masked"])[real]))
    rows = []
    for extra in extras[1:]:
        tok, valid = padded(extra)
        masked, naive, x = forward(state, tok, valid)
        x = np.asarray(x, np.float64)
        rows.append(
            dict(
                extra=extra,
                padding_share=float(1 - real.sum() / valid.size),
                masked=float(jnp.max(jnp.abs(masked[:, :T] - masked0)[real])),
                naive=float(jnp.max(jnp.abs(naive[:, :T] - naive0)[real])),
                numpy_masked=float(np.max(np.abs(bn(x, valid)[:, :T] - base_np["masked"])[real])),
                numpy_naive=float(np.max(np.abs(bn(x, np.ones_like(valid))[:, :T] - base_np["naive"])[real])),
            )
        )
    return dict(
        lengths=[int(n) for n in lengths],
        base_len=T,
        base_padding_share=float(1 - real.sum() / real.size),
        rows=rows,
        library_vs_numpy=library_vs_numpy,
        hidden_scale=float(jnp.max(jnp.abs(masked0)[real])),
    )


# -- verdict ---------------------------------------------------------------------------------------------------------


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    runs, dep = train_all(s)
    pad = padding_experiment(np.random.default_rng(0))
    return summarise(dict(runs=runs, dependence=dep, padding=pad, sizes=s))


def summarise(numbers: dict) -> lab.Outcome:
    """The verdict and the result text, from the numbers alone."""
    runs, dep, pad, s = numbers["runs"], numbers["dependence"], numbers["padding"], numbers["sizes"]
    bss = s["batch_sizes"]

    def r(norm, bs):
        return runs[f"{norm}/{bs}"]

    loss_ok = all(
        r(n, bs)["val_loss"] <= r("batchnorm", bs)["val_loss"] for n in ("layernorm", "rmsnorm") for bs in bss
    )
    keys = ("alone_vs_batch", "future")
    per_token = [dep[n][m][k] for n in ("layernorm", "rmsnorm") for m in ("train", "eval") for k in keys]
    ln_modes = max(
        abs(r(n, bs)["val_loss_train_mode"] - r(n, bs)["val_loss"]) for n in ("layernorm", "rmsnorm") for bs in bss
    )
    bn_train = dep["batchnorm"]["train"]
    bn_eval = dep["batchnorm"]["eval"]
    masked_pad = max(row["masked"] for row in pad["rows"])
    naive_pad = min(row["naive"] for row in pad["rows"])
    mechanism_ok = (
        max(per_token) < SAME_MAX
        and ln_modes < SAME_MAX
        and min(bn_train["alone_vs_batch"], bn_train["future"]) > REAL_MIN
        and max(bn_eval["alone_vs_batch"], bn_eval["future"]) < SAME_MAX
        and masked_pad < SAME_MAX
        and naive_pad > REAL_MIN
    )
    supported = True if loss_ok and mechanism_ok else (None if loss_ok or mechanism_ok else False)

    def losses(bs):
        return ", ".join(f"{n} {r(n, bs)['val_loss']:.3f}" for n in NORMS)

    gaps = "; ".join(
        f"batch {bs}: {r('batchnorm', bs)['val_loss_train_mode']:.3f} in train mode vs "
        f"{r('batchnorm', bs)['val_loss']:.3f} in eval mode"
        for bs in bss
    )
    trains = "; ".join(f"batch {bs}: " + ", ".join(f"{n} {r(n, bs)['train_loss']:.3f}" for n in NORMS) for bs in bss)
    last, first = pad["rows"][-1], pad["rows"][0]
    short, long = (
        min(r(n, bs)["steps"] for n in NORMS for bs in bss),
        max(r(n, bs)["steps"] for n in NORMS for bs in bss),
    )
    result = (
        f"(a) Validation loss (eval mode) at an equal {r('layernorm', bss[0])['tokens']:,} training tokens: "
        + "; ".join(f"batch {bs} ({r('layernorm', bs)['steps']} steps): {losses(bs)}" for bs in bss)
        + f". LayerNorm and RMSNorm {'match or beat' if loss_ok else 'do not always beat'} BatchNorm at every batch "
        f"size. Last logged train loss (train mode, training batches) — {trains}. BatchNorm's loss on the validation "
        f"text depends on the mode — {gaps}; for LayerNorm/RMSNorm the two modes agree to {fmt(ln_modes)}. "
        f"(b) Batch-{bss[0]} models: one sequence alone vs in a batch with {s['mates']} others moves "
        f"BatchNorm's logits by {bn_train['alone_vs_batch']:.2f} in train mode (logits up to "
        f"{bn_train['logit_scale']:.1f}) and by {fmt(bn_eval['alone_vs_batch'])} in eval mode; LayerNorm by "
        f"{fmt(dep['layernorm']['train']['alone_vs_batch'])}, RMSNorm by "
        f"{fmt(dep['rmsnorm']['train']['alone_vs_batch'])}. Re-drawing the tokens after position "
        f"{s['cut']} moves the logits at positions <= {s['cut']} by {bn_train['future']:.2f} with BatchNorm in train "
        f"mode (its statistics see the future: causality is broken), {fmt(bn_eval['future'])} in eval mode, and "
        f"{fmt(dep['layernorm']['train']['future'])} / {fmt(dep['rmsnorm']['train']['future'])} with "
        f"LayerNorm / RMSNorm. (c) Random-init BERT-tiny with BatchNorm in train mode, padding raised from "
        f"{pad['base_padding_share']:.0%} to {last['padding_share']:.0%} of the batch: hidden states at real tokens "
        f"move by {fmt(masked_pad)} with the library's masked BatchNorm, and by {first['naive']:.2f} "
        f"(+{first['extra']} pads) to {last['naive']:.2f} (+{last['extra']}) when the statistics count the padding "
        f"(hidden states up to "
        f"{pad['hidden_scale']:.1f}); at the first norm alone, recomputed in NumPy, {fmt(last['numpy_masked'])} vs "
        f"{last['numpy_naive']:.2f} (library vs NumPy: {fmt(pad['library_vs_numpy'])}). Thresholds: same < "
        f"{SAME_MAX:.0e}, real > {REAL_MIN:.0e}. Caveat: the train/eval gap is not all leak: BatchNorm's running "
        f"averages (momentum {BN_MOMENTUM}) still hold {BN_MOMENTUM**short:.0%} of their initial values (mean 0, "
        f"var 1) after {short} steps and {BN_MOMENTUM**long:.1%} after {long}, and they lag the changing weights."
    )
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    runs, dep, pad, s = numbers["runs"], numbers["dependence"], numbers["padding"], numbers["sizes"]
    bss = s["batch_sizes"]
    colors = {"layernorm": "tab:blue", "rmsnorm": "tab:green", "batchnorm": "tab:red"}
    fig, axes = plt.subplots(1, 4, figsize=(24, 5.5), gridspec_kw=dict(width_ratios=[1, 1.1, 1.3, 1.1]))
    width = 0.8 / len(NORMS)
    xs = np.arange(len(bss))

    ax = axes[0]
    for i, n in enumerate(NORMS):
        vals = [runs[f"{n}/{bs}"]["val_loss"] for bs in bss]
        bars = ax.bar(xs + (i - 1) * width, vals, width, label=n, color=colors[n])
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    low = min(runs[k]["val_loss"] for k in runs)
    ax.set_ylim(low - 0.3, max(runs[k]["val_loss"] for k in runs) + 0.15)
    tokens = runs[f"layernorm/{bss[0]}"]["tokens"]
    ax.set_xticks(xs, [f"batch {bs}\n({runs[f'layernorm/{bs}']['steps']} steps)" for bs in bss])
    ax.set_ylabel("validation loss (eval mode)")
    ax.set_title(f"(a) val loss at equal tokens ({tokens:,})", fontsize=10)
    ax.legend(fontsize=9)

    ax = axes[1]
    for i, n in enumerate(NORMS):
        for j, bs in enumerate(bss):
            r = runs[f"{n}/{bs}"]
            x = j + (i - 1) * width
            ax.plot([x, x], [r["val_loss_train_mode"], r["val_loss"]], color=colors[n], lw=2)
            ax.scatter([x], [r["val_loss"]], color=colors[n], marker="o", zorder=3, label=f"{n}" if j == 0 else None)
            ax.scatter([x], [r["val_loss_train_mode"]], color=colors[n], marker="v", zorder=3, s=50)
            ax.scatter([x], [r["train_loss"]], color=colors[n], marker="x", zorder=3)
    ax.scatter([], [], color="gray", marker="o", label="val, eval mode (running stats)")
    ax.scatter([], [], color="gray", marker="v", label="val, train mode (batch stats)")
    ax.scatter([], [], color="gray", marker="x", label="last train loss")
    ax.set_xticks(xs, [f"batch {bs}" for bs in bss])
    ax.set_ylabel("loss")
    ax.set_title("(a) train vs inference: the same validation text in both modes", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[2]
    floor = 1e-9
    groups = [
        ("alone vs\nin batch\n(train mode)", "train", "alone_vs_batch"),
        ("alone vs\nin batch\n(eval mode)", "eval", "alone_vs_batch"),
        (f"tokens > {s['cut']}\nre-drawn\n(train mode)", "train", "future"),
        (f"tokens > {s['cut']}\nre-drawn\n(eval mode)", "eval", "future"),
    ]
    gx = np.arange(len(groups))
    for i, n in enumerate(NORMS):
        vals = [max(dep[n][mode][key], floor) for _, mode, key in groups]
        ax.bar(gx + (i - 1) * width, vals, width, color=colors[n], label=n)
        for x, v in zip(gx + (i - 1) * width, vals, strict=True):
            ax.text(x, v * 1.5, "0" if v <= floor else f"{v:.0e}", ha="center", fontsize=6.5, rotation=90, va="bottom")
    ax.axhline(SAME_MAX, color="gray", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, 1e3)
    ax.set_xticks(gx, [g[0] for g in groups], fontsize=8)
    ax.set_ylabel("max |Δ logits|  (0 drawn at 1e-9)")
    ax.set_title(f"(b) batch dependence, batch-{bss[0]} models", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[3]
    share = [100 * row["padding_share"] for row in pad["rows"]]
    for key, label, style in (
        ("masked", "masked BatchNorm (library)", "o-"),
        ("naive", "BatchNorm counting padding", "s-"),
        ("numpy_masked", "first norm, NumPy, masked", "o:"),
        ("numpy_naive", "first norm, NumPy, counting padding", "s:"),
    ):
        ax.plot(
            share,
            [max(row[key], floor) for row in pad["rows"]],
            style,
            label=label,
            color="tab:blue" if "masked" in key else "tab:red",
        )
    ax.axhline(SAME_MAX, color="gray", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, 1e2)
    ax.set_xlabel(f"padding share of the batch, % (base: {100 * pad['base_padding_share']:.0f}%)")
    ax.set_ylabel("max |Δ hidden| at real tokens  (0 drawn at 1e-9)")
    ax.set_title("(c) BERT-tiny, BatchNorm in train mode: more padding", fontsize=10)
    ax.legend(fontsize=8, loc="center right")
    fig.suptitle("LayerNorm / RMSNorm normalise each token alone; BatchNorm couples the batch", fontsize=12)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
