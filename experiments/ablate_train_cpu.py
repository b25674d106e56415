"""Where the CPU train step's time goes, by ablation and by candidate rewrites, all timed in one process.

    python experiments/ablate_train_cpu.py                                   # every variant, ~5 minutes
    python experiments/ablate_train_cpu.py --variants baseline,no_gelu --rounds 10 --steps_per_round 10
    python experiments/ablate_train_cpu.py --wide                            # d_model 512, 8 layers, context 256

Each variant patches one piece of the library while the `shakespeare_char_cpu` train step (AdamW, clipping,
schedule, random tokens) is traced and compiled; the compiled steps are then timed in interleaved rounds (a new
random order each round), so the machine's drift hits every variant alike. Reported: the median step time of each
variant and its ratio to `baseline` in the same run.

Ablations (wrong models, upper bounds of what a faster op could save):
  no_gelu         the FFN activation is the identity
  no_layernorm    every LayerNorm returns its input
  no_softmax      attention uses exp(logits) (masked) without the max subtraction and normalisation
The library's current step is `baseline`. Its earlier formulations (same maths), for before / after in one run:
  gelu_autodiff        tanh-GELU differentiated by autodiff (jax.nn.gelu), not ops.gelu's hand-written JVP
  layernorm_autodiff   LayerNorm differentiated through mean / var / rsqrt, not ops.layer_norm's custom JVP
  before               both of the above: the step before those two changes
  layernorm_vjp        a custom VJP over the whole LayerNorm (scale and bias too), saving x_hat and 1/sigma
Execution settings (ModelConfig): scan, remat_full, scan_remat_full, scan_remat_dots_no_batch, scan_remat_dots,
attention_jax_nn (jax.nn.dot_product_attention's XLA path instead of jaxformer's dense attention).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxformer.ops as ops
import jaxformer.ops.activations as activations
from jaxformer.training import build_run, create_train_state, make_train_step
from jaxformer.training.tasks.lm import lm_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host
from bench_train import recipe_config  # experiments/ is not a package


def layer_norm_autodiff(x, scale=None, bias=None, *, epsilon: float = 1e-5):
    """ops.layer_norm as it was before its hand-written derivative: autodiff of mean / var / rsqrt."""
    xf = x.astype(jnp.float32)
    centered = xf - jnp.mean(xf, axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + epsilon)
    y = y if scale is None else y * scale
    return (y if bias is None else y + bias).astype(x.dtype)


@jax.custom_vjp
def _layer_norm_vjp_core(x, scale, bias, epsilon):
    return _layer_norm_vjp_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_vjp_fwd(x, scale, bias, epsilon):
    xf = x.astype(jnp.float32)
    centered = xf - jnp.mean(xf, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    x_hat = centered * rstd
    return (x_hat * scale + bias).astype(x.dtype), (x_hat, rstd, scale)


def _layer_norm_vjp_bwd(residuals, dy):
    x_hat, rstd, scale = residuals
    dy = dy.astype(jnp.float32)
    g = dy * scale
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True) - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, jnp.sum(dy * x_hat, axis=lead), jnp.sum(dy, axis=lead), None


_layer_norm_vjp_core.defvjp(_layer_norm_vjp_fwd, _layer_norm_vjp_bwd)


def layer_norm_vjp(x, scale=None, bias=None, *, epsilon: float = 1e-5):
    """A custom VJP over the whole LayerNorm, scale and bias included (reverse mode only)."""
    D = x.shape[-1]
    scale = jnp.ones((D,), jnp.float32) if scale is None else scale
    bias = jnp.zeros((D,), jnp.float32) if bias is None else bias
    return _layer_norm_vjp_core(x, scale, bias, epsilon)


def gelu_autodiff(x):
    """ops.gelu as it was before its custom JVP: jax.nn.gelu's tanh form, differentiated by autodiff."""
    return jax.nn.gelu(x, approximate=True)


# Execution settings (ModelConfig fields), same model and maths:
CONFIG_VARIANTS = {
    "scan": dict(scan_layers=True),
    "remat_full": dict(remat="full"),
    "scan_remat_full": dict(scan_layers=True, remat="full"),
    "scan_remat_dots_no_batch": dict(scan_layers=True, remat="dots_no_batch"),
    "scan_remat_dots": dict(scan_layers=True, remat="dots"),
    "attention_jax_nn": dict(attention_impl="jax_nn"),
}
VARIANTS = (
    *CONFIG_VARIANTS,
    "baseline",
    "before",
    "gelu_autodiff",
    "layernorm_autodiff",
    "layernorm_vjp",
    "no_gelu",
    "no_layernorm",
    "no_softmax",
)


@contextlib.contextmanager
def patched(variant: str):
    """Swaps library functions for the variant while its step is traced."""
    saved = []

    def swap(obj, name, value):
        saved.append((obj, name, getattr(obj, name) if not isinstance(obj, dict) else obj[name]))
        if isinstance(obj, dict):
            obj[name] = value
        else:
            setattr(obj, name, value)

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    if variant == "no_gelu":
        swap(activations.ACTIVATIONS, "gelu", lambda x: x)
    elif variant in ("gelu_autodiff", "before"):
        swap(activations.ACTIVATIONS, "gelu", gelu_autodiff)
    elif variant == "no_layernorm":
        swap(ops, "layer_norm", lambda x, scale=None, bias=None, *, epsilon=1e-5: x)
    if variant in ("layernorm_autodiff", "before"):
        swap(ops, "layer_norm", layer_norm_autodiff)
    if variant == "layernorm_vjp":
        swap(ops, "layer_norm", layer_norm_vjp)
    if variant == "no_softmax":
        swap(jax.nn, "softmax", lambda x, axis=-1: jnp.exp(jnp.minimum(x, 0.0)))
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            if isinstance(obj, dict):
                obj[name] = value
            else:
                setattr(obj, name, value)


def compiled_step(config, variant: str, vocab: int, batch):
    config = config.copy_and_resolve_references()
    config.model.update(CONFIG_VARIANTS.get(variant, {}))
    with patched(variant):
        run = build_run(config, data_fields={"vocab_size": vocab, "max_len": config.data.seq_len})
        schedule, optimizer = run.schedule, run.optimizer
        graphs, state = create_train_state(run.make_model(), optimizer)
        step = make_train_step(graphs, optimizer, schedule, lm_loss)
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
    return compiled, state, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shakespeare_char_cpu", help="a recipe's name or a .py file")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps_per_round", type=int, default=10)
    parser.add_argument("--wide", action="store_true", help="d_model 512, 8 layers, 8 heads, d_ff 2048, context 256")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    config = recipe_config(args.config, wide=args.wide, smoke=args.smoke)
    if args.smoke:
        args.rounds, args.steps_per_round = 2, 2
    B, T, vocab = config.batch_size, config.data.seq_len, 65
    rng = np.random.default_rng(0)

    def batch():
        tokens = rng.integers(0, vocab, size=(B, T + 1)).astype(np.int32)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    steps, compile_s = {}, {}
    for v in variants:
        compiled, state, compile_s[v] = compiled_step(config, v, vocab, batch())
        for _ in range(3):
            state, metrics = compiled(state, batch())
        jax.block_until_ready(metrics)
        steps[v] = [compiled, state]
        print(f"{v}: compiled in {compile_s[v]:.1f} s, loss {float(metrics['loss']):.3f}", flush=True)

    times = {v: [] for v in variants}
    order = list(variants)
    for _ in range(args.rounds):
        random.shuffle(order)
        for v in order:
            compiled, state = steps[v]
            for _ in range(args.steps_per_round):
                b = batch()
                start = time.perf_counter()
                state, metrics = compiled(state, b)
                jax.block_until_ready(metrics)
                times[v].append(time.perf_counter() - start)
            steps[v][1] = state
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    result = {
        "config": config.name,
        "batch": B,
        "seq": T,
        "jax": jax.__version__,
        "machine": host.describe(),
        "variants": {},
    }
    print(f"\n{config.name}, {B}x{T}, {result['machine']}: median of {args.rounds} x {args.steps_per_round} steps")
    print("| variant | step ms | vs baseline | compile s |")
    print("|---|---:|---:|---:|")
    for v in variants:
        med = statistics.median(times[v])
        ratio = med / base if base else float("nan")
        result["variants"][v] = {"step_ms": 1e3 * med, "ratio": ratio, "compile_s": compile_s[v]}
        print(f"| {v} | {1e3 * med:.1f} | {ratio:.2f} | {compile_s[v]:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
