"""Attention benchmark: jaxformer's dense and blockwise paths against jax.nn and flax.nnx.

    python experiments/bench_attention.py            # full run, ~20 minutes on a 2-core CPU
    python experiments/bench_attention.py --part dense        # or --part blockwise, or --part block-size
    python experiments/bench_attention.py --smoke    # tiny sizes, seconds (checks the script still works)

Part 1 (dense, float32, causal): `ops.dot_product_attention` vs `jax.nn.dot_product_attention` vs
`flax.nnx.dot_product_attention`, forward and forward+backward, at B=8,T=256,N=4,H=32 and B=1,T=4096,N=8,H=64, plus
`ops.blockwise_attention` at the same shapes. All run in one process, interleaved in a shuffled order each
round; the table gives the median over rounds and each time divided by jax.nn's.

Part 2 (blockwise, causal, B=1,N=8,H=64): forward+backward at T = 4096, 16384, 32768, each in a fresh
subprocess so that its peak RSS (ru_maxrss) belongs to that length alone.

`--part packed` (causal, B=1, T=8192, N=8, H=64, documents of random lengths averaging 512 tokens packed into one
row): blockwise with the segment ids (non-decreasing: each query block visits only the key blocks of its own
documents) against the same call with the ids negated (the same mask, but non-increasing ids, so nothing is
skipped: the code path before segment skipping), blockwise causal without segments, and the dense path with
`segment_mask`; forward+backward, interleaved in one process.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time

import host
import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import ops


def make_inputs(B, T, N, H, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, cot = (jax.random.normal(key, (B, T, N, H), jnp.float32) for key in keys)
    return q, k, v, cot


def implementations(T: int, block_size: int):
    from flax import nnx

    causal = ops.causal_mask(T)
    return {
        "jaxformer dense": lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True),
        "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
        "flax.nnx": lambda q, k, v: nnx.dot_product_attention(q, k, v, mask=causal),
        "jaxformer blockwise": lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, block_size=block_size),
    }


def forward_and_backward(fn):
    """q, k, v, cotangent -> (dq, dk, dv): one forward and one backward pass."""

    def run(q, k, v, cot):
        _, vjp = jax.vjp(fn, q, k, v)
        return vjp(cot)

    return run


def time_once(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def interleaved_medians(fns: dict, args, rounds: int, seed: int = 0) -> dict[str, float]:
    """Runs every function once per round, in a new random order each round; returns median seconds."""
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(time_once(fns[name], *args))
    return {name: statistics.median(ts) for name, ts in times.items()}


def dense_comparison(shapes, rounds_small: int, rounds_large: int, block_size: int) -> list[dict]:
    rows = []
    for B, T, N, H in shapes:
        q, k, v, cot = make_inputs(B, T, N, H)
        impls = implementations(T, block_size)
        rounds = rounds_small if T <= 1024 else rounds_large
        fwd = interleaved_medians({n: jax.jit(f) for n, f in impls.items()}, (q, k, v), rounds)
        bwd = interleaved_medians(
            {n: jax.jit(forward_and_backward(f)) for n, f in impls.items()}, (q, k, v, cot), rounds
        )
        for name in impls:
            rows.append(
                {
                    "shape": f"B={B},T={T},N={N},H={H}",
                    "impl": name,
                    "rounds": rounds,
                    "fwd_ms": 1e3 * fwd[name],
                    "fwd_ratio_vs_jax_nn": fwd[name] / fwd["jax.nn"],
                    "fwd_bwd_ms": 1e3 * bwd[name],
                    "fwd_bwd_ratio_vs_jax_nn": bwd[name] / bwd["jax.nn"],
                }
            )
    return rows


def peak_rss_mib() -> float:
    """Peak resident memory of this process. VmHWM belongs to the current address space; ru_maxrss would
    also count the parent's peak, which Linux carries across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; other systems differ


def blockwise_one_length(T: int, block_size: int, repeats: int, B=1, N=8, H=64) -> dict:
    """Runs in its own process: forward+backward of causal blockwise attention at length T."""
    q, k, v, cot = make_inputs(B, T, N, H)
    jax.block_until_ready((q, k, v, cot))
    rss_inputs = peak_rss_mib()
    fn = lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, block_size=block_size)
    fwd = jax.jit(fn)
    fwd_bwd = jax.jit(forward_and_backward(fn))
    compile_start = time.perf_counter()
    jax.block_until_ready(fwd(q, k, v))
    jax.block_until_ready(fwd_bwd(q, k, v, cot))
    compile_s = time.perf_counter() - compile_start
    fwd_s = statistics.median(time_once(fwd, q, k, v) for _ in range(repeats))
    fwd_bwd_s = statistics.median(time_once(fwd_bwd, q, k, v, cot) for _ in range(repeats))
    return {
        "T": T,
        "block_size": block_size,
        "repeats": repeats,
        "fwd_ms": 1e3 * fwd_s,
        "fwd_bwd_ms": 1e3 * fwd_bwd_s,
        "first_calls_s": compile_s,
        "rss_after_inputs_mib": rss_inputs,
        "peak_rss_mib": peak_rss_mib(),
        "dense_scores_per_head_mib": T * T * 4 / 2**20,
    }


def blockwise_scaling(lengths, block_size: int, repeats: int) -> list[dict]:
    rows = []
    for T in lengths:
        cmd = [sys.executable, __file__, "--one-length", str(T), "--block-size", str(block_size)]
        cmd += ["--repeats", str(repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def block_size_sweep(T: int, block_sizes, repeats: int, B=1, N=8, H=64) -> list[dict]:
    """Causal blockwise forward and forward+backward at length T for each block size (one process)."""
    q, k, v, cot = make_inputs(B, T, N, H)
    rows = []
    for block_size in block_sizes:
        fn = lambda q, k, v, bs=block_size: ops.blockwise_attention(q, k, v, is_causal=True, block_size=bs)
        fwd, fwd_bwd = jax.jit(fn), jax.jit(forward_and_backward(fn))
        jax.block_until_ready((fwd(q, k, v), fwd_bwd(q, k, v, cot)))
        rows.append(
            {
                "T": T,
                "block_size": block_size,
                "fwd_ms": 1e3 * statistics.median(time_once(fwd, q, k, v) for _ in range(repeats)),
                "fwd_bwd_ms": 1e3 * statistics.median(time_once(fwd_bwd, q, k, v, cot) for _ in range(repeats)),
            }
        )
    print("| T | block | fwd ms | fwd+bwd ms |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['block_size']} | {r['fwd_ms']:.0f} | {r['fwd_bwd_ms']:.0f} |")
    return rows


def print_tables(dense_rows, block_rows):
    print(f"\n{host.describe()}, {jax.devices()[0].device_kind}, float32, causal\n")
    if dense_rows:
        print_dense_table(dense_rows)
    if block_rows:
        print_blockwise_table(block_rows)


def print_dense_table(dense_rows):
    print("| shape | implementation | fwd ms | fwd / jax.nn | fwd+bwd ms | fwd+bwd / jax.nn |")
    print("|---|---|---:|---:|---:|---:|")
    for r in dense_rows:
        print(
            f"| {r['shape']} | {r['impl']} | {r['fwd_ms']:.2f} | {r['fwd_ratio_vs_jax_nn']:.2f} | "
            f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_ratio_vs_jax_nn']:.2f} |"
        )
    print()


def print_blockwise_table(block_rows):
    print("| T | block | fwd ms | fwd+bwd ms | peak RSS MiB | RSS after inputs MiB | one dense T x T f32 MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in block_rows:
        print(
            f"| {r['T']} | {r['block_size']} | {r['fwd_ms']:.0f} | {r['fwd_bwd_ms']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['rss_after_inputs_mib']:.0f} | {r['dense_scores_per_head_mib']:.0f} |"
        )


def packed_comparison(T: int, mean_doc: int, block_size: int, rounds: int, B=1, N=8, H=64) -> list[dict]:
    q, k, v, cot = make_inputs(B, T, N, H)
    rng = np.random.default_rng(0)
    starts = rng.random((B, T)) < 1.0 / mean_doc  # a new document starts here
    ids = jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)
    blockwise = lambda segment_ids: (
        lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, segment_ids=segment_ids, block_size=block_size)
    )
    impls = {
        "blockwise, segment ids (blocks skipped)": blockwise(ids),
        "blockwise, negated ids (same mask, nothing skipped)": blockwise(-ids),
        "blockwise, causal only (no segments)": blockwise(None),
        "dense + segment_mask": lambda q, k, v: ops.dot_product_attention(
            q, k, v, is_causal=True, mask=ops.segment_mask(ids)
        ),
    }
    times = interleaved_medians({n: jax.jit(forward_and_backward(f)) for n, f in impls.items()}, (q, k, v, cot), rounds)
    base = times["blockwise, negated ids (same mask, nothing skipped)"]
    rows = [
        {"impl": n, "T": T, "documents": int(ids.max()) + 1, "fwd_bwd_ms": 1e3 * t, "ratio_vs_unskipped": t / base}
        for n, t in times.items()
    ]
    print(f"\n| packed, T={T}, {rows[0]['documents']} documents | fwd+bwd ms | vs nothing skipped |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['impl']} | {row['fwd_bwd_ms']:.0f} | {row['ratio_vs_unskipped']:.2f} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the script runs")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--part", choices=["all", "dense", "blockwise", "block-size", "packed"], default="all")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--one-length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_length:
        print(json.dumps(blockwise_one_length(args.one_length, args.block_size, args.repeats)))
        return
    if args.part == "block-size":
        rows = block_size_sweep(4096, [128, 256, 512, 1024], repeats=5)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"jax": jax.__version__, "host": host.describe(), "block_size_sweep": rows}, f, indent=1)
        return
    if args.part == "packed" or args.smoke:
        rows = packed_comparison(128, 24, 16, 2, N=2, H=8) if args.smoke else packed_comparison(8192, 512, 512, 5)
        if args.part == "packed":
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"jax": jax.__version__, "host": host.describe(), "packed": rows}, f, indent=1)
            return
    if args.smoke:
        dense = dense_comparison([(2, 32, 2, 8), (1, 64, 2, 8)], 3, 3, block_size=16)
        block = blockwise_scaling([64, 128], block_size=32, repeats=1)
    else:
        dense, block = [], []
        if args.part in ("all", "blockwise"):  # first, while this process is small
            block = blockwise_scaling([4096, 16384, 32768], args.block_size, args.repeats)
        if args.part in ("all", "dense"):
            dense = dense_comparison([(8, 256, 4, 32), (1, 4096, 8, 64)], 50, 7, args.block_size)
    print_tables(dense, block)
    if args.json:
        with open(args.json, "w") as f:
            record = {"jax": jax.__version__, "host": host.describe(), "dense": dense, "blockwise": block}
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
