"""Claim 08: residual connections are what let a deep Transformer train.

    TFDS_DATA_DIR=... python experiments/claims/08_residuals.py [--full]

The model is written here from the library's layers (nn.Embed, nn.LearnedPositions, nn.LayerNorm,
nn.MultiHeadAttention, nn.FeedForward) so that the one switch `residual` changes nothing but the "+ x" of the two
sublayers of every block: pre-norm `x = x + Attn(LN(x))`, `x = x + FFN(LN(x))` against `x = Attn(LN(x))`,
`x = FFN(LN(x))`. Both variants share the initialisation (same seed, same parameter tree), the data order and
the optimiser.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

from jaxformer import nn
from jaxformer.models.stack import BlockStack

CLAIM = (
    "Residual connections are what let a deep Transformer train: without them gradients shrink from layer to "
    "layer and a deep stack stalls, with them every layer gets gradient."
)
SETUP = (
    "A char-level pre-norm Transformer LM on tiny Shakespeare written in the script from jaxformer.nn layers "
    "(token + learned position embeddings, L blocks of [LayerNorm -> causal attention -> (+x)] and [LayerNorm -> "
    "GELU FFN -> (+x)], final LayerNorm, linear head), with and without the two '+x' (everything else shared: "
    "same seed, initialisation, data order, optimiser). Default: L in {2, 8, 16}, d_model=64, 4 heads, d_ff=256, "
    "context 64, batch 16, AdamW (lr 1e-3, 20 warmup steps, cosine to 10%, weight decay 0.01, clip 1.0), 300 "
    "steps. --full: L in {2, 8, 16, 32}, d_model=128, 2000 steps. Measured: the training loss every step; final "
    "train and validation loss (64 fixed windows of 64 characters each); the gradient norm ||dL/dW|| of every "
    "block's parameters on a fixed batch of 32 training windows, at initialisation and after training."
)

GAP = 0.3  # nats: "much worse" final loss
SPREAD_NO_RES = 100.0  # "orders of magnitude": late / early block gradient norm at L_max without residuals
SPREAD_RES = 10.0  # "within ~10x": max / min block gradient norm at L_max with residuals


def sizes(size: str) -> dict:
    """The depths, width and training at each size (`warmup`: steps of linear warmup before the cosine)."""
    return lab.pick(
        size,
        tiny=dict(depths=[1, 2], d_model=32, heads=2, steps=10, batch=8, warmup=2),
        default=dict(depths=[2, 8, 16], d_model=64, heads=4, steps=300, batch=16, warmup=20),
        full=dict(depths=[2, 8, 16, 32], d_model=128, heads=4, steps=2000, batch=16, warmup=20),
    )


CONTEXT = 64
EVAL_WINDOWS = 64
GRAD_WINDOWS = 32
LR, WEIGHT_DECAY, CLIP = 1e-3, 0.01, 1.0


# -- the model -------------------------------------------------------------------------------------------------------


class Block(nnx.Module):
    """[LN -> causal attention -> (+x)], [LN -> FFN -> (+x)]; `residual=False` drops the two '+x' only."""

    def __init__(self, d: int, heads: int, residual: bool, *, rngs: nnx.Rngs):
        self.residual = residual
        self.attention_norm = nn.LayerNorm(d, rngs=rngs)
        self.attention = nn.MultiHeadAttention(d, heads, use_bias=True, rngs=rngs)
        self.ffn_norm = nn.LayerNorm(d, rngs=rngs)
        self.ffn = nn.FeedForward(d, 4 * d, activation="gelu", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.attention(self.attention_norm(x), is_causal=True)
        x = x + h if self.residual else h
        h = self.ffn(self.ffn_norm(x))
        return x + h if self.residual else h


class CharLM(nnx.Module):
    def __init__(self, vocab: int, d: int, heads: int, depth: int, residual: bool, *, rngs: nnx.Rngs):
        self.embed = nn.Embed(vocab, d, rngs=rngs)
        self.positions = nn.LearnedPositions(CONTEXT, d, rngs=rngs)
        # Scanned over stacked [L, ...] parameters: one block to compile whatever the depth.
        self.blocks = BlockStack(lambda r: Block(d, heads, residual, rngs=r), depth, scan=True, rngs=rngs)
        self.final_norm = nn.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.positions(jnp.arange(tokens.shape[1]))
        x = self.blocks(x)
        return self.head(self.final_norm(x))


def loss_fn(model: CharLM, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: CharLM, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model: CharLM, x: jax.Array, y: jax.Array) -> jax.Array:
    return loss_fn(model, x, y)


@nnx.jit
def block_grad_norms(model: CharLM, x: jax.Array, y: jax.Array) -> jax.Array:
    """`[L]`: ||dL/dW|| over all the parameters (norms, attention, FFN) of each block, on the batch (x, y)."""
    grads = nnx.grad(loss_fn)(model, x, y)
    stacked = jax.tree.leaves(grads["blocks"])  # every leaf [L, ...]
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in stacked))


# -- data and training -----------------------------------------------------------------------------------------------


def corpus():
    tokenizer, train, val = lab.load_tokens(lab.lm_config(1))
    return tokenizer.vocab_size, train, val


def windows(tokens: np.ndarray, starts: np.ndarray) -> tuple[jax.Array, jax.Array]:
    idx = starts[:, None] + np.arange(CONTEXT + 1)[None, :]
    chunk = tokens[idx]
    return jnp.asarray(chunk[:, :-1]), jnp.asarray(chunk[:, 1:])


def unigram_entropy(tokens: np.ndarray, vocab: int) -> float:
    p = np.bincount(tokens, minlength=vocab) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def train_one(depth: int, residual: bool, s: dict, data: dict) -> dict:
    model = CharLM(data["vocab"], s["d_model"], s["heads"], depth, residual, rngs=nnx.Rngs(0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, LR, s["warmup"], s["steps"], end_value=0.1 * LR)
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(schedule, weight_decay=WEIGHT_DECAY))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    start = time.perf_counter()
    grad_init = np.asarray(block_grad_norms(model, *data["grad_batch"]))
    losses = []
    for step in range(s["steps"]):
        x, y = windows(data["train"], data["starts"][step])
        losses.append(train_step(model, optimizer, x, y))
        if step == 0:
            losses[0].block_until_ready()
            compiled = time.perf_counter() - start
    losses = [float(v) for v in losses]
    grad_final = np.asarray(block_grad_norms(model, *data["grad_batch"]))
    out = dict(
        depth=depth,
        residual=residual,
        losses=losses,
        train_loss=float(evaluate(model, *data["train_eval"])),
        val_loss=float(evaluate(model, *data["val_eval"])),
        grad_init=grad_init.tolist(),
        grad_final=grad_final.tolist(),
        seconds=time.perf_counter() - start,
        first_step_seconds=compiled,
    )
    print(
        f"  L={depth:2d} residual={residual!s:5}: train {out['train_loss']:.3f} val {out['val_loss']:.3f}, "
        f"block grad norm at init {grad_init.min():.1e}..{grad_init.max():.1e} ({out['seconds']:.0f} s)",
        flush=True,
    )
    return out


def spread(g: list[float]) -> dict:
    """Summary of per-block gradient norms: first/last block, last/first ratio and max/min ratio."""
    g = np.asarray(g)
    return dict(
        first=float(g[0]), last=float(g[-1]), last_over_first=float(g[-1] / g[0]), ratio=float(g.max() / g.min())
    )


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    vocab, train, val = corpus()
    rng = np.random.default_rng(0)
    high = len(train) - CONTEXT - 1
    data = dict(
        vocab=vocab,
        train=train,
        starts=rng.integers(0, high, size=(s["steps"], s["batch"])),  # the same data order for every model
        train_eval=windows(train, rng.integers(0, high, size=EVAL_WINDOWS)),
        val_eval=windows(val, rng.integers(0, len(val) - CONTEXT - 1, size=EVAL_WINDOWS)),
        grad_batch=windows(train, rng.integers(0, high, size=GRAD_WINDOWS)),
    )
    runs = [train_one(depth, residual, s, data) for depth in s["depths"] for residual in (True, False)]
    deep = max(s["depths"])
    res = next(r for r in runs if r["depth"] == deep and r["residual"])
    nores = next(r for r in runs if r["depth"] == deep and not r["residual"])
    entropy = unigram_entropy(train, vocab)
    g_res, g_nores = spread(res["grad_init"]), spread(nores["grad_init"])
    gf_res, gf_nores = spread(res["grad_final"]), spread(nores["grad_final"])
    gap = nores["val_loss"] - res["val_loss"]
    stalled = gap > GAP or nores["val_loss"] > entropy - GAP
    vanishing = g_nores["last_over_first"] > SPREAD_NO_RES
    even = g_res["ratio"] < SPREAD_RES
    supported = True if (stalled and vanishing and even) else (None if (stalled or vanishing) else False)

    shallow = [
        f"L={d}: {r['val_loss']:.3f} with vs {n['val_loss']:.3f} without"
        for d in s["depths"]
        for r in runs
        for n in runs
        if r["depth"] == n["depth"] == d and r["residual"] and not n["residual"]
    ]
    result = (
        f"Final validation loss (nats/char) with vs without residuals: {'; '.join(shallow)} (unigram entropy "
        f"{entropy:.3f}). At L={deep} the no-residual model ends {gap:+.3f} nats from the residual one "
        f"(train {nores['train_loss']:.3f} vs {res['train_loss']:.3f}). Per-block gradient norms ||dL/dW|| at "
        f"initialisation, L={deep}: without residuals block 1 gets {g_nores['first']:.1e} and block {deep} "
        f"{g_nores['last']:.1e} (last/first = {g_nores['last_over_first']:.1e}, max/min {g_nores['ratio']:.1e}); "
        f"with residuals block 1 gets {g_res['first']:.1e} and block {deep} {g_res['last']:.1e} (max/min "
        f"{g_res['ratio']:.1f}x). After training: without residuals last/first = {gf_nores['last_over_first']:.1e} "
        f"(max/min {gf_nores['ratio']:.1e}), with residuals max/min {gf_res['ratio']:.1f}x. Criteria: loss gap > "
        f"{GAP} nats or within {GAP} of the unigram entropy ({'met' if stalled else 'not met'}), no-residual "
        f"last/first > {SPREAD_NO_RES:.0f}x ({'met' if vanishing else 'not met'}), residual max/min < "
        f"{SPREAD_RES:.0f}x ({'met' if even else 'not met'})."
    )
    numbers = dict(
        sizes=s,
        unigram_entropy=entropy,
        runs=runs,
        deep=deep,
        deep_loss_gap=gap,
        grad_init_residual=g_res,
        grad_init_no_residual=g_nores,
        grad_final_residual=gf_res,
        grad_final_no_residual=gf_nores,
    )
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


# -- figure ----------------------------------------------------------------------------------------------------------


def smooth(values: list[float], width: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values)
    width = max(1, min(width, len(v)))
    kernel = np.ones(width) / width
    return np.arange(width, len(v) + 1), np.convolve(v, kernel, mode="valid")


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    runs, deep, entropy = numbers["runs"], numbers["deep"], numbers["unigram_entropy"]
    depths = numbers["sizes"]["depths"]
    colors = dict(zip(depths, plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(depths))), strict=True))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))

    ax = axes[0]
    width = max(1, numbers["sizes"]["steps"] // 40)
    for r in runs:
        steps, loss = smooth(r["losses"], width)
        ls = "-" if r["residual"] else "--"
        label = f"L={r['depth']} {'with' if r['residual'] else 'without'} residual"
        ax.plot(steps, loss, ls, color=colors[r["depth"]], label=label, lw=1.4)
    ax.axhline(entropy, color="gray", ls=":", lw=1.0, label=f"unigram entropy {entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (nats/char, {width}-step mean)")
    ax.set_ylim(1.0, max(4.6, entropy + 0.5))
    ax.set_title("Training loss: solid = with residuals, dashed = without", fontsize=10)
    ax.legend(fontsize=8)

    deep_runs = [r for r in runs if r["depth"] == deep]
    for ax, key, when in ((axes[1], "grad_init", "at initialisation"), (axes[2], "grad_final", "after training")):
        for r in deep_runs:
            layers = np.arange(1, deep + 1)
            color = "tab:blue" if r["residual"] else "tab:red"
            label = "with residuals" if r["residual"] else "without residuals"
            ax.plot(layers, r[key], "o-", color=color, label=label, ms=4)
        ax.set_yscale("log")
        ax.set_xlabel("block (1 = nearest the input)")
        ax.set_ylabel("||dL/dW_block||")
        ax.set_title(f"Per-block gradient norm, L={deep}, {when}", fontsize=10)
        ax.legend(fontsize=9)
        ax.grid(True, which="both", alpha=0.3)

    bars = ", ".join(
        f"L={d}: {r['val_loss']:.2f}/{n['val_loss']:.2f}"
        for d in depths
        for r in runs
        for n in runs
        if r["depth"] == n["depth"] == d and r["residual"] and not n["residual"]
    )
    fig.suptitle(f"Residual connections in a deep Transformer (final val loss with/without: {bars})", fontsize=12)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
