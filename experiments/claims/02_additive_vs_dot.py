"""Claim 02: dot-product attention is much faster than additive (Bahdanau) attention and, scaled by 1/sqrt(d_k),
learns as well; unscaled, it falls behind additive attention at large d_k.

    python experiments/claims/02_additive_vs_dot.py            # default size: a 2-core CPU, minutes
    python experiments/claims/02_additive_vs_dot.py --full     # more d_k, seeds and steps; a bigger speed test
    python experiments/claims/02_additive_vs_dot.py --size tiny  # two d_k, 10 steps: every line in seconds

(a) Quality: one attention layer on associative recall. A context holds S (key, value) pairs with distinct key
tokens; a query is one of those key tokens, and the target is the value token paired with it. Token embeddings are
fixed random N(0, 1) vectors of width D; what is learned is the attention's query/key projections (D -> d_k, LeCun
init, so projected entries have unit variance as in the paper's argument), additive attention's score vector v,
and a linear readout of the attended value embedding. Each (mechanism, d_k) is one jitted `lax.scan` training run,
vmapped over seeds, on batches drawn beforehand with numpy (compiled once per shape).

(b) Speed: forward + backward of each mechanism (projections included) at B=8, T=S=128, one head, timed in
interleaved rounds on the loaded CPU; ratios are taken within a round.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

from jaxformer.ops.attention import dot_product_attention
from jaxformer.ops.classic_attention import additive_attention

CLAIM = (
    "Dot-product attention is much faster than additive attention and, with the 1/sqrt(d_k) scaling, performs as "
    "well; additive attention beats unscaled dot-product attention for large d_k (Vaswani et al. 2017, section "
    "3.2.1, citing Britz et al.)."
)
SETUP = (
    "(a) Associative recall with one attention layer: S=16 (key, value) pairs per context, distinct keys from 64 "
    "key tokens, 16 value tokens, 4 queries per context (each one of the context's keys; target = its value). Token "
    "embeddings are fixed random N(0, 1) vectors of width D=64; learned are the query/key projections D -> d_k "
    "(LeCun init: projected entries of unit variance), additive attention's score vector v (its hidden width is "
    "d_k), and a linear readout of the attended value embedding. Mechanisms: additive (Bahdanau, "
    "jaxformer.ops.additive_attention), dot scaled by 1/sqrt(d_k) and dot unscaled (jaxformer.ops."
    "dot_product_attention with scale=1). Adam (lr 1e-3), batch 32 contexts, 300 steps, 2 seeds per (mechanism, "
    "d_k) for d_k in {8, 32, 128, 512}; accuracy and loss on 1024 fresh contexts (4096 queries) per seed. (b) "
    "Forward + backward time (jitted, float32, projections included, gradients w.r.t. inputs and weights) at B=8, "
    "T=S=128, one head, d_model = d_k in {32, 128, 512}: median over 5 interleaved rounds, and the median of the "
    "per-round additive/dot ratios (unscaled dot is the same computation with another constant). --full: d_k up to "
    "1024, 4 seeds, 600 steps; speed at T=S=256, d_k up to 1024, 10 rounds. Supported if scaled dot's accuracy is "
    "within 0.02 of additive's or above it at every d_k, unscaled dot's accuracy at the largest d_k is more than "
    "0.05 below both others, and additive is at least 5x slower at every d_k timed; partly supported if some of "
    "the three hold; not supported if none does."
)

D, KEY_VOCAB, VALUE_VOCAB, PAIRS, QUERIES, BATCH, LR = 64, 64, 16, 16, 4, 32, 1e-3
EVAL_CONTEXTS = 1024
MECHANISMS = ("additive", "scaled", "unscaled")
MATCH_TOL = 0.02  # scaled dot "performs as well" as additive: accuracy within this, or better
DEGRADE_MIN = 0.05  # unscaled dot "degrades": accuracy this far below both others at the largest d_k
SLOW_MIN = 5.0  # additive "much slower": at least this ratio at every timed d_k


def sizes(size: str) -> dict:
    """(a) the d_k trained, seeds and steps per run; (b) the timed T = S, d_k and interleaved rounds."""
    return lab.pick(
        size,
        tiny=dict(dims=[8, 32], seeds=2, steps=10, speed_len=16, speed_dims=[16], rounds=2),
        default=dict(dims=[8, 32, 128, 512], seeds=2, steps=300, speed_len=128, speed_dims=[32, 128, 512], rounds=5),
        full=dict(
            dims=[8, 32, 128, 512, 1024], seeds=4, steps=600, speed_len=256, speed_dims=[32, 128, 512, 1024], rounds=10
        ),
    )


# -- (a) quality ---------------------------------------------------------------------------------------------------


def make_data(rng: np.random.Generator, shape: tuple[int, ...]) -> dict:
    """Contexts of shape `shape`: distinct key tokens, random value tokens, and the positions that are queried."""
    keys = np.argsort(rng.random((*shape, KEY_VOCAB)), axis=-1)[..., :PAIRS]
    values = rng.integers(0, VALUE_VOCAB, (*shape, PAIRS))
    positions = rng.integers(0, PAIRS, (*shape, QUERIES))
    return {name: jnp.asarray(x, jnp.int32) for name, x in dict(keys=keys, values=values, positions=positions).items()}


def init_params(rng: np.random.Generator, mechanism: str, d: int) -> dict:
    params = dict(
        w_q=rng.normal(size=(D, d)) / math.sqrt(D),
        w_k=rng.normal(size=(D, d)) / math.sqrt(D),
        w_out=rng.normal(size=(D, VALUE_VOCAB)) / math.sqrt(D),
        b_out=np.zeros(VALUE_VOCAB),
    )
    if mechanism == "additive":
        params["v"] = rng.normal(size=(d,)) / math.sqrt(d)
    return {name: jnp.asarray(x, jnp.float32) for name, x in params.items()}


def attend(params: dict, mechanism: str, x_query, x_key, x_value):
    """One head, BTNH with N=1: the mechanism's output for queries/keys given as token embeddings."""
    if mechanism == "additive":
        w_q, w_k, v = params["w_q"][None], params["w_k"][None], params["v"][None]
        return additive_attention(x_query, x_key, x_value, w_q, w_k, v)
    d = params["w_q"].shape[1]
    scale = 1.0 / math.sqrt(d) if mechanism == "scaled" else 1.0
    return dot_product_attention(x_query @ params["w_q"], x_key @ params["w_k"], x_value, scale=scale)


def loss_and_accuracy(params: dict, mechanism: str, emb_key, emb_value, data: dict):
    query_tokens = jnp.take_along_axis(data["keys"], data["positions"], axis=-1)
    targets = jnp.take_along_axis(data["values"], data["positions"], axis=-1)
    x_query = emb_key[query_tokens][:, :, None]  # [B, QUERIES, 1, D]
    x_key = emb_key[data["keys"]][:, :, None]  # [B, PAIRS, 1, D]
    x_value = emb_value[data["values"]][:, :, None]
    out = attend(params, mechanism, x_query, x_key, x_value)[:, :, 0]
    logits = out @ params["w_out"] + params["b_out"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return loss, jnp.mean(logits.argmax(-1) == targets)


@functools.partial(jax.jit, static_argnames="mechanism")
def train(params, emb_key, emb_value, data, eval_data, mechanism: str):
    """Trains one model per seed (leading axis of every argument); returns per-step train loss and accuracy and
    the final eval loss and accuracy."""
    optimizer = optax.adam(LR)

    def one_seed(params, emb_key, emb_value, data, eval_data):
        def step(carry, batch):
            params, state = carry
            grad_fn = jax.value_and_grad(loss_and_accuracy, has_aux=True)
            (loss, accuracy), grads = grad_fn(params, mechanism, emb_key, emb_value, batch)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), (loss, accuracy)

        (params, _), (losses, accuracies) = jax.lax.scan(step, (params, optimizer.init(params)), data)
        eval_loss, eval_accuracy = loss_and_accuracy(params, mechanism, emb_key, emb_value, eval_data)
        return losses, accuracies, eval_loss, eval_accuracy

    return jax.vmap(one_seed)(params, emb_key, emb_value, data, eval_data)


def quality_experiment(s: dict) -> dict:
    rng = np.random.default_rng(0)
    seeds, steps = s["seeds"], s["steps"]
    data = make_data(rng, (seeds, steps, BATCH))  # the same batches for every (mechanism, d_k)
    eval_data = make_data(rng, (seeds, EVAL_CONTEXTS))
    emb_key = jnp.asarray(rng.normal(size=(seeds, KEY_VOCAB, D)), jnp.float32)
    emb_value = jnp.asarray(rng.normal(size=(seeds, VALUE_VOCAB, D)), jnp.float32)
    out = {m: dict(accuracy=[], loss=[], seed_accuracy=[], seed_loss=[], curve=[]) for m in MECHANISMS}
    window = max(1, steps // 30)  # the training-loss curve, averaged over windows of steps
    for d in s["dims"]:
        for m in MECHANISMS:
            per_seed = [init_params(np.random.default_rng(1000 * i + d), m, d) for i in range(seeds)]
            params = jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)
            losses, _, eval_loss, eval_acc = train(params, emb_key, emb_value, data, eval_data, mechanism=m)
            losses = np.asarray(losses).mean(0)  # over seeds
            curve = losses[: steps // window * window].reshape(-1, window).mean(1)
            out[m]["accuracy"].append(float(np.mean(eval_acc)))
            out[m]["loss"].append(float(np.mean(eval_loss)))
            out[m]["seed_accuracy"].append([float(a) for a in eval_acc])
            out[m]["seed_loss"].append([float(a) for a in eval_loss])
            out[m]["curve"].append([float(c) for c in curve])
            print(f"  d_k={d}: {m} accuracy {out[m]['accuracy'][-1]:.3f}, loss {out[m]['loss'][-1]:.3f}", flush=True)
    out["curve_steps"] = [int(window * (i + 0.5)) for i in range(steps // window)]
    return out


# -- (b) speed -------------------------------------------------------------------------------------------------------


def make_step(mechanism: str):
    """jitted forward + backward (w.r.t. inputs and weights) of one attention head, projections included."""

    def loss(args, cotangent):
        x_query, x_key, x_value, w_q, w_k, v = args
        if mechanism == "additive":
            out = additive_attention(x_query, x_key, x_value, w_q[None], w_k[None], v[None])
        else:
            out = dot_product_attention(x_query @ w_q, x_key @ w_k, x_value)
        return jnp.sum(out * cotangent)

    return jax.jit(jax.grad(loss))


def speed_experiment(s: dict) -> dict:
    B, L, rounds = 8, s["speed_len"], s["rounds"]
    steps = {m: make_step(m) for m in ("additive", "dot")}
    rng = np.random.default_rng(1)
    inputs = {}
    for d in s["speed_dims"]:
        shapes = [(B, L, 1, d)] * 3 + [(d, d), (d, d), (d,)]
        args = tuple(
            jnp.asarray(rng.normal(size=shape) / (math.sqrt(d) if len(shape) == 2 else 1), jnp.float32)
            for shape in shapes
        )
        inputs[d] = (args, jnp.asarray(rng.normal(size=(B, L, 1, d)), jnp.float32))
        for step in steps.values():
            jax.block_until_ready(step(*inputs[d]))  # compile and warm up
    times = {m: {d: [] for d in s["speed_dims"]} for m in steps}
    for r in range(rounds):
        for d in s["speed_dims"]:
            order = list(steps) if r % 2 == 0 else list(steps)[::-1]
            for m in order:
                start = time.perf_counter()
                jax.block_until_ready(steps[m](*inputs[d]))
                times[m][d].append(time.perf_counter() - start)
    ratios = [float(np.median(np.asarray(times["additive"][d]) / np.asarray(times["dot"][d]))) for d in s["speed_dims"]]
    return dict(
        dims=s["speed_dims"],
        B=B,
        T=L,
        rounds=rounds,
        additive_ms=[1e3 * float(np.median(times["additive"][d])) for d in s["speed_dims"]],
        dot_ms=[1e3 * float(np.median(times["dot"][d])) for d in s["speed_dims"]],
        ratio=ratios,
        additive_hidden_mb=[B * L * L * d * 4 / 2**20 for d in s["speed_dims"]],  # the [B, T, S, d] tanh input
        dot_logits_mb=B * L * L * 4 / 2**20,
    )


# -- claim -----------------------------------------------------------------------------------------------------------


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    quality = quality_experiment(s)
    speed = speed_experiment(s)
    dims = s["dims"]
    add, sca, uns = (quality[m]["accuracy"] for m in MECHANISMS)
    gaps = [a - b for a, b in zip(add, sca, strict=True)]  # additive minus scaled, per d_k
    matches = max(gaps) <= MATCH_TOL
    degrade = min(sca[-1], add[-1]) - uns[-1]
    degrades = degrade > DEGRADE_MIN
    slow = min(speed["ratio"]) >= SLOW_MIN
    held = [matches, degrades, slow]
    supported = True if all(held) else (None if any(held) else False)

    def accs(values):
        return ", ".join(f"{v:.3f}" for v in values)

    def seeds(m, i):
        return "/".join(f"{a:.3f}" for a in quality[m]["seed_accuracy"][i])

    worst, best = int(np.argmax(gaps)), int(np.argmin(gaps))
    losses = {m: quality[m]["loss"] for m in MECHANISMS}
    result = (
        f"(a) Eval accuracy at d_k = {', '.join(map(str, dims))} after {s['steps']} steps (mean of {s['seeds']} "
        f"seeds): additive {accs(add)}; dot scaled {accs(sca)}; dot unscaled {accs(uns)} (eval loss: additive "
        f"{accs(losses['additive'])}; scaled {accs(losses['scaled'])}; unscaled {accs(losses['unscaled'])}). "
        f"Scaled minus additive accuracy per d_k: {', '.join(f'{0.0 - g:+.3f}' for g in gaps)} (the largest shortfall "
        f"of scaled, {max(gaps):+.3f}, is at d_k={dims[worst]}; the seeds at d_k={dims[best]}: additive "
        f"{seeds('additive', best)}, scaled {seeds('scaled', best)}). "
        f"Unscaled dot goes from {uns[0]:.3f} at d_k={dims[0]} to {uns[-1]:.3f} at d_k={dims[-1]} (seeds "
        f"{seeds('unscaled', -1)}), {degrade:.3f} below the worse of the other two there. "
        f"(b) Forward+backward at B={speed['B']}, T=S={speed['T']}, d_k = {', '.join(map(str, speed['dims']))}: "
        f"additive {', '.join(f'{t:.1f}' for t in speed['additive_ms'])} ms vs dot "
        f"{', '.join(f'{t:.2f}' for t in speed['dot_ms'])} ms, additive/dot = "
        f"{', '.join(f'{r:.0f}x' for r in speed['ratio'])} (median of per-round ratios over {speed['rounds']} "
        f"interleaved rounds); additive's [B, T, S, d_k] tanh input alone is "
        f"{', '.join(f'{mb:.0f}' for mb in speed['additive_hidden_mb'])} MiB against dot's "
        f"{speed['dot_logits_mb']:.1f} MiB of logits. Criteria: scaled within {MATCH_TOL} of additive at every "
        f"d_k: {matches}; unscaled more than {DEGRADE_MIN} below both at d_k={dims[-1]}: {degrades}; additive at "
        f"least {SLOW_MIN:.0f}x slower at every timed d_k: {slow}."
    )
    return lab.Outcome(result=result, supported=supported, numbers=dict(quality=quality, speed=speed, sizes=s))


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    quality, speed, s = numbers["quality"], numbers["speed"], numbers["sizes"]
    dims = s["dims"]
    styles = {
        "additive": ("tab:green", "^", "additive (Bahdanau)"),
        "scaled": ("tab:blue", "o", "dot, scaled 1/sqrt(d_k)"),
        "unscaled": ("tab:red", "s", "dot, unscaled"),
    }
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))

    for ax, key, title in ((axes[0], "accuracy", "Eval accuracy"), (axes[1], "loss", "Eval loss")):
        for m, (color, marker, label) in styles.items():
            ax.plot(dims, quality[m][key], marker=marker, color=color, label=label)
            per_seed = np.asarray(quality[m][f"seed_{key}"])
            for j in range(per_seed.shape[1]):
                ax.plot(dims, per_seed[:, j], ls="none", marker=marker, color=color, alpha=0.35, ms=4)
        ax.set_title(f"{title} after {s['steps']} steps (line: mean, dots: seeds)", fontsize=10)
        ax.set_xlabel("d_k")
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1.03)
    axes[1].set_ylabel("cross-entropy")
    axes[1].set_yscale("log")

    ax = axes[2]
    for m, (color, _, label) in styles.items():
        for i, ls in ((0, ":"), (len(dims) - 1, "-")):
            ax.plot(quality["curve_steps"], quality[m]["curve"][i], ls=ls, color=color, label=f"{label}, d_k={dims[i]}")
    ax.set_yscale("log")
    ax.set_title("Training loss (mean over seeds)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")

    ax = axes[3]
    ax.plot(speed["dims"], speed["additive_ms"], marker="^", color="tab:green", label="additive")
    ax.plot(speed["dims"], speed["dot_ms"], marker="o", color="tab:blue", label="dot product")
    for d, t, r in zip(speed["dims"], speed["additive_ms"], speed["ratio"], strict=True):
        ax.annotate(f"{r:.0f}x", (d, t), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
    ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.set_title(f"Forward+backward, B={speed['B']}, T=S={speed['T']} (labels: additive/dot)", fontsize=10)
    ax.set_xlabel("d_k")
    ax.set_ylabel("ms (median of rounds)")

    for ax in axes:
        if ax is not axes[2]:
            ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
