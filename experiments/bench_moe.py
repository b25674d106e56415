"""The routed feed-forward, forward + backward: grouped matmuls (`ops.moe_ffn`: blocks, and jax.lax.ragged_dot)
against every expert on every token (`ops.moe_ffn_dense`) and the static-capacity path (`ops.moe_ffn_capacity`).

    python experiments/bench_moe.py --json experiments/results/moe_cpu.json      # about a minute on 2 CPU cores
    python experiments/bench_moe.py --smoke

T tokens of width D through E experts (gated SiLU FFNs of width F), top-k routing from random router logits,
float32; the loss is sum(out^2) and its gradient is taken with respect to x, the router logits and every expert
weight. Each variant is jitted, run once to compile (reported apart), then timed over `--repeats` calls (median).
The three must agree (the capacity path with a capacity factor of E / k, so nothing is dropped); the script checks it.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import describe

from jaxformer import ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--d_ff", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--capacity_factor", type=float, default=1.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.d_model, args.d_ff, args.repeats = 64, 32, 64, 2
    T, D, F, E, k = args.tokens, args.d_model, args.d_ff, args.experts, args.k
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(T, D)), jnp.float32)
    logits = jnp.asarray(rng.normal(size=(T, E)), jnp.float32)
    w_gate, w_up = (jnp.asarray(rng.normal(size=(E, D, F)) / np.sqrt(D), jnp.float32) for _ in range(2))
    w_down = jnp.asarray(rng.normal(size=(E, F, D)) / np.sqrt(F), jnp.float32)

    def loss_of(ffn):
        def loss(x, logits, w_gate, w_up, w_down):
            weights, experts = ops.route(logits, k)
            out = ffn(x, experts, weights, w_gate, w_up, w_down)
            return jnp.sum((out[0] if isinstance(out, tuple) else out) ** 2)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))

    variants = {
        "grouped (blocks of 128)": lambda *a: ops.moe_ffn(*a, implementation="blocks"),
        "grouped (ragged_dot)": lambda *a: ops.moe_ffn(*a, implementation="ragged_dot"),
        "every expert (dense)": ops.moe_ffn_dense,
        f"capacity {args.capacity_factor}": lambda *a: ops.moe_ffn_capacity(*a, capacity_factor=args.capacity_factor),
        "capacity E/k (no drops)": lambda *a: ops.moe_ffn_capacity(*a, capacity_factor=E / k),
    }
    inputs = (x, logits, w_gate, w_up, w_down)
    rows, values = {}, {}
    for name, ffn in variants.items():
        fn = loss_of(ffn)
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*inputs))
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            times.append(time.perf_counter() - start)
        values[name] = out
        rows[name] = {"first_call_s": compile_s, "median_s": statistics.median(times), "times_s": times}
    reference = values["every expert (dense)"]
    agree = {}
    for name in ("grouped (blocks of 128)", "grouped (ragged_dot)", "capacity E/k (no drops)"):
        leaves = zip(jax.tree.leaves(values[name]), jax.tree.leaves(reference), strict=True)
        agree[name] = max(float(jnp.max(jnp.abs(a - b)) / (1e-6 + float(jnp.max(jnp.abs(b))))) for a, b in leaves)
    dense = rows["every expert (dense)"]["median_s"]
    print(f"{describe()}; T={T} D={D} F={F} E={E} k={k}, float32, forward + backward, median of {args.repeats}")
    print("| variant | median | first call (compile + run) | speed-up over every expert |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        speedup = dense / row["median_s"]
        print(f"| {name} | {row['median_s'] * 1e3:.1f} ms | {row['first_call_s']:.2f} s | {speedup:.2f}x |")
    print("max relative difference from every expert:", {n: f"{v:.1e}" for n, v in agree.items()})
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        record = {
            "machine": describe(),
            "shape": {"T": T, "D": D, "F": F, "E": E, "k": k},
            "rows": rows,
            "agree": agree,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
