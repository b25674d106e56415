"""Training-step benchmark: median step time and "CPU MFU" of a config's jitted train step.

    python experiments/bench_train.py                                   # shakespeare_char_cpu, ~1 minute
    python experiments/bench_train.py --config shakespeare_char --steps 20   # a recipe name or a .py file
    python experiments/bench_train.py --smoke                           # tiny sizes, seconds
    python experiments/bench_train.py --wide                            # d_model 512, 8 layers, context 256
    python experiments/bench_train.py --no-scan_layers --remat none     # the plain loop of blocks
    python experiments/bench_train.py --profile /tmp/trace              # + where the step's time goes

MFU = model FLOPs per step / step time / peak FLOP/s, where
  - model FLOPs per step = tokens per step * (6 N + 12 L T D) (the PaLM / nanoGPT estimate: N parameters without
    the position table, 6 for forward + backward matmuls, 12 L T D for the attention scores and their use), and
  - peak FLOP/s is measured in the same process: a jitted float32 [2048, 2048] @ [2048, 2048] (2 * 2048^3 FLOPs),
    median of repeated calls: what XLA's CPU matmul reaches on this machine, not a datasheet number.
The step is the real `jaxformer.training` train step (AdamW, clipping, schedule) on random tokens. Steps and the
matmul are timed in alternating rounds; the result is the median per-round MFU, with its range. Also reported:
compile time (ahead-of-time lower + compile of the step) and XLA's temporary buffer bytes for it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.configs import load_config
from jaxformer.training import build_run, create_train_state, make_train_step
from jaxformer.training.tasks.lm import lm_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/ is not a package
import host
import trace_summary


def recipe_config(name: str, *, wide: bool = False, smoke: bool = False):
    """The config `name` (a recipe's name or a .py file); `wide`: d_model 512, 8 layers, 8 heads, d_ff 2048,
    context 256 (issue 6 of 6's wider recipe); `smoke`: one tiny layer, context 16, batch 2."""
    config = load_config(name)
    if wide:
        config.name += "_wide"
        config.model.update(num_layers=8, d_model=512, d_ff=2048, num_heads=8)
        config.data.seq_len = 256
    if smoke:
        config.model.update(num_layers=1, d_model=32, d_ff=64, num_heads=2)
        config.data.seq_len, config.batch_size = 16, 2
    return config


def recipe_step(config, vocab_size: int):
    """(model config, train state, the jitted train step, a function drawing a random-token batch) for `config`."""
    run = build_run(config, data_fields={"vocab_size": vocab_size, "max_len": config.data.seq_len})
    model_cfg, schedule, optimizer = run.model_config, run.schedule, run.optimizer
    graphs, state = create_train_state(run.make_model(), optimizer)
    B, T = config.batch_size, config.data.seq_len
    rng = np.random.default_rng(0)

    def batch():
        tokens = rng.integers(0, vocab_size, size=(B, T + 1)).astype(np.int32)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    return model_cfg, state, make_train_step(graphs, optimizer, schedule, lm_loss), batch


def model_flops_per_step(params, model_cfg, tokens_per_step: int, seq_len: int) -> tuple[int, int]:
    """(parameter count, model FLOPs per step = tokens * (6 N + 12 L T D)), N without the position table."""
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    position_table = model_cfg.max_len * model_cfg.d_model if model_cfg.positional == "learned" else 0
    N, L, D = count - position_table, model_cfg.num_layers, model_cfg.d_model
    return count, tokens_per_step * (6 * N + 12 * L * seq_len * D)


def matmul_flops_per_s(n: int = 2048, rounds: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shakespeare_char_cpu", help="a recipe's name or a .py file")
    parser.add_argument("--steps", type=int, default=200, help="timed steps (after 5 warm-up steps), over all rounds")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of steps and matmul timing")
    parser.add_argument("--vocab_size", type=int, default=65, help="tiny Shakespeare has 65 characters")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--wide", action="store_true", help="d_model 512, 8 layers, 8 heads, d_ff 2048, context 256")
    parser.add_argument(
        "--scan_layers", action=argparse.BooleanOptionalAction, default=None, help="default: the config's setting"
    )
    parser.add_argument("--remat", help="ModelConfig.remat: none | full | dots | dots_no_batch (default: the config's)")
    parser.add_argument("--profile", help="trace 10 more steps with jax.profiler into this folder and summarize")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    config = recipe_config(args.config, wide=args.wide, smoke=args.smoke)
    if args.smoke:
        args.steps, args.rounds = 4, 2
    if args.scan_layers is not None:
        config.model.scan_layers = args.scan_layers
    if args.remat is not None:
        config.model.remat = args.remat
    scan_layers, remat = config.model.get("scan_layers", False), config.model.get("remat", "none")

    model_cfg, state, train_step, batch = recipe_step(config, args.vocab_size)
    B, T = config.batch_size, config.data.seq_len
    start = time.perf_counter()
    compiled = train_step.lower(state, batch()).compile()
    compile_s = time.perf_counter() - start
    temp_bytes = compiled.memory_analysis().temp_size_in_bytes
    for _ in range(5):
        state, metrics = compiled(state, batch())
    jax.block_until_ready(metrics)
    # This machine's speed drifts by +-15% over minutes (shared cores), so step time and the matmul roofline are
    # measured in alternating rounds and MFU is taken per round: the ratio is steadier than either number.
    rounds = []
    for _ in range(args.rounds):
        times = []
        for _ in range(args.steps // args.rounds):
            b = batch()
            start = time.perf_counter()
            state, metrics = compiled(state, b)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        rounds.append((statistics.median(times), matmul_flops_per_s()))
    profile = None
    if args.profile:
        with jax.profiler.trace(args.profile, create_perfetto_trace=True):
            for _ in range(10):
                state, metrics = compiled(state, batch())
            jax.block_until_ready(metrics)
        profile = trace_summary.summarize(args.profile, top=40)
        print(trace_summary.format_summary(profile, processes=2))
    params, flops_per_step = model_flops_per_step(state.params, model_cfg, B * T, T)
    L, D = model_cfg.num_layers, model_cfg.d_model
    mfus = sorted(flops_per_step / step_s / peak for step_s, peak in rounds)
    step_s = statistics.median(step for step, _ in rounds)
    peak = statistics.median(p for _, p in rounds)
    result = {
        "config": config.name,
        "scan_layers": scan_layers,
        "remat": remat,
        "params": params,
        "layers": L,
        "d_model": D,
        "compile_s": compile_s,
        "temp_bytes": temp_bytes,
        "tokens_per_step": B * T,
        "rounds": args.rounds,
        "step_ms": 1e3 * step_s,
        "tokens_per_s": B * T / step_s,
        "model_gflops_per_step": flops_per_step / 1e9,
        "achieved_gflops_per_s": flops_per_step / step_s / 1e9,
        "matmul_gflops_per_s": peak / 1e9,
        "mfu": statistics.median(mfus),
        "mfu_min": mfus[0],
        "mfu_max": mfus[-1],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": host.describe(),
        "profile": profile,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=1))
    options = f"scan={scan_layers} remat={remat}"
    print(
        f"\n| {config.name} | {options} | {params:,} | {B}x{T} | {compile_s:.1f} s | {temp_bytes / 2**20:.1f} MiB | "
        f"{result['step_ms']:.1f} ms | {result['tokens_per_s']:.0f} | "
        f"{result['achieved_gflops_per_s']:.1f} | {result['matmul_gflops_per_s']:.1f} | "
        f"**{100 * result['mfu']:.1f}%** ({100 * mfus[0]:.1f}-{100 * mfus[-1]:.1f}) |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
