"""How fast could the CPU train step be if everything but its matmuls were free? The step's dots, timed alone.

    python experiments/matmul_ceiling_cpu.py                 # shakespeare_char_cpu as configured, ~1 minute
    python experiments/matmul_ceiling_cpu.py --wide --rounds 3 --steps_per_round 4   # d_model 512, 8 layers, ~4 min

Collects every `dot_general` of the real train step's jaxpr (forward, backward, rematerialised recomputation; a
scan's body counted `length` times), then times each distinct one alone: a jitted `lax.dot_general` with the
same shapes, dtypes and dimension numbers, median of repeated calls, with XLA free to pick its own layouts for it.
Reported, all from one process:

  - matmul_ms: the sum of those times, what the step's matmuls cost with no element-wise work, copies, launches
    or scheduling around them;
  - ceiling_mfu: model FLOPs (bench_train's 6 N + 12 L T D) / matmul_ms / the 2048^3 matmul's FLOP/s: the MFU
    the step would reach if only its matmuls took time;
  - step_ms and mfu of the compiled step, timed in the same rounds, for the share the rest costs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from jax.extend import core as jex_core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host
from bench_train import matmul_flops_per_s, model_flops_per_step, recipe_config, recipe_step  # not a package


def collect_dots(jaxpr, multiplier: int = 1, counts=None) -> collections.Counter:
    """{(lhs aval, rhs aval, dimension_numbers, preferred dtype): count} over `jaxpr` and its sub-jaxprs."""
    counts = collections.Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            key = (lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype), eqn.params["dimension_numbers"])
            counts[key] += multiplier
        if eqn.primitive.name == "while":
            raise ValueError("a while loop's trip count is unknown; only scans are counted")
        inner = multiplier * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    collect_dots(sub.jaxpr, inner, counts)
                elif isinstance(sub, jex_core.Jaxpr):
                    collect_dots(sub, inner, counts)
    return counts


def time_dot(lhs_shape, lhs_dtype, rhs_shape, rhs_dtype, dims, calls: int = 10, repeats: int = 5) -> float:
    """Seconds per call of one jitted dot_general with these operands: `calls` calls queued back to back (so
    Python's dispatch overlaps the previous call), the median over `repeats` such batches."""
    lhs = jax.random.normal(jax.random.key(0), lhs_shape, lhs_dtype)
    rhs = jax.random.normal(jax.random.key(1), rhs_shape, rhs_dtype)
    fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims))
    fn(lhs, rhs).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [fn(lhs, rhs) for _ in range(calls)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def dot_flops(lhs_shape, rhs_shape, dims) -> int:
    (lhs_contract, rhs_contract), (lhs_batch, _) = dims
    contract = int(np.prod([lhs_shape[d] for d in lhs_contract]))
    lhs_free = [d for i, d in enumerate(lhs_shape) if i not in (*lhs_contract, *lhs_batch)]
    rhs_free = [d for i, d in enumerate(rhs_shape) if i not in (*rhs_contract, *dims[1][1])]
    batch = int(np.prod([lhs_shape[d] for d in lhs_batch]))
    return 2 * batch * contract * int(np.prod(lhs_free)) * int(np.prod(rhs_free))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shakespeare_char_cpu", help="a recipe's name or a .py file")
    parser.add_argument("--wide", action="store_true", help="d_model 512, 8 layers, 8 heads, d_ff 2048, context 256")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (all dots, steps, the 2048^3 matmul)")
    parser.add_argument("--steps_per_round", type=int, default=20)
    parser.add_argument("--vocab_size", type=int, default=65)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    config = recipe_config(args.config, wide=args.wide, smoke=args.smoke)
    if args.smoke:
        args.rounds = 1

    model_cfg, state, train_step, batch = recipe_step(config, args.vocab_size)
    B, T = config.batch_size, config.data.seq_len
    dots = collect_dots(jax.make_jaxpr(train_step)(state, batch()).jaxpr)
    compiled = train_step.lower(state, batch()).compile()
    for _ in range(3):
        state, metrics = compiled(state, batch())
    jax.block_until_ready(metrics)

    rounds = []
    for _ in range(args.rounds):
        per_dot = {key: time_dot(*key) for key in dots}
        matmul_s = sum(per_dot[key] * n for key, n in dots.items())
        steps = []
        for _ in range(args.steps_per_round):
            b = batch()
            start = time.perf_counter()
            state, metrics = compiled(state, b)
            jax.block_until_ready(metrics)
            steps.append(time.perf_counter() - start)
        rounds.append((matmul_s, statistics.median(steps), matmul_flops_per_s(), per_dot))

    _, model_flops = model_flops_per_step(state.params, model_cfg, B * T, T)
    matmul_s = statistics.median(r[0] for r in rounds)
    step_s = statistics.median(r[1] for r in rounds)
    peak = statistics.median(r[2] for r in rounds)
    dot_rows = []
    for key, n in sorted(dots.items(), key=lambda kv: -statistics.median(r[3][kv[0]] for r in rounds) * kv[1]):
        seconds = statistics.median(r[3][key] for r in rounds)
        flops = dot_flops(key[0], key[2], key[4])
        dot_rows.append(
            {
                "lhs": list(key[0]),
                "rhs": list(key[2]),
                "dims": str(key[4]),
                "count": n,
                "ms_each": 1e3 * seconds,
                "gflops_per_s": flops / seconds / 1e9,
            }
        )
    executed_flops = sum(dot_flops(k[0], k[2], k[4]) * n for k, n in dots.items())
    result = {
        "config": config.name,
        "scan_layers": config.model.get("scan_layers", False),
        "remat": config.model.get("remat", "none"),
        "rounds": args.rounds,
        "dots_per_step": sum(dots.values()),
        "distinct_dots": len(dots),
        "model_gflops_per_step": model_flops / 1e9,
        "executed_dot_gflops_per_step": executed_flops / 1e9,
        "matmul_ms": 1e3 * matmul_s,
        "step_ms": 1e3 * step_s,
        "matmul_gflops_per_s": peak / 1e9,
        "ceiling_mfu": model_flops / matmul_s / peak,
        "mfu": model_flops / step_s / peak,
        "dots": dot_rows,
        "jax": jax.__version__,
        "host": host.describe(),
    }
    for row in dot_rows:
        print(
            f"  {row['count']:3d} x  {row['lhs']!s:>16} . {row['rhs']!s:<16} {row['ms_each']:7.3f} ms  "
            f"{row['gflops_per_s']:6.1f} GFLOP/s  {row['dims']}"
        )
    print(json.dumps({k: v for k, v in result.items() if k != "dots"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
