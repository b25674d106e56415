"""How fast can batch-1 decoding of a Gemma-2-2B-shaped model be on this CPU, and where does each library stand?

    python experiments/decode_roofline_cpu.py \
        --decode_json experiments/results/decode_hf_gemma2_f32_cpu.json \
        --decode_json experiments/results/decode_hf_gemma2_bf16_cpu.json \
        --json experiments/results/decode_roofline_cpu.json

Three measurements in one process (about 2 minutes), then the arithmetic:

  1. memory bandwidth: the GB/s of summing a 1 GiB float32 array (jitted jax and torch, best of 3 medians each);
  2. the matmuls of a decode step at Gemma 2 2B's widest layer (x [M, 2304] times the 2304 x 9216 gate/up weight,
     M = 1, 8, 32 rows; six such weights in turn, so they stream from memory), in float32 and bfloat16 with
     float32 accumulation: XLA with the weight stored
     [in, out] (jaxformer's and flax's layout, "mk,kn"), XLA with it stored [out, in] (torch's layout, "mk,nk"),
     and torch's `F.linear` ([out, in]); GB/s of weight read and GFLOP/s each;
  3. the floor of one decode step: every weight is read once per step (2.61e9 parameters, the tied 256000 x 2304
     table included since the head reads all of it), so step >= weight bytes / bandwidth, with the bandwidth the
     most any measurement above reached (sums and streamed products alike: an optimistic floor). With a bench_decode_hf
     JSON, each batch-1 row gets the best total-tokens/s ratio jaxformer could reach against the transformers
     time measured there: transformers' own first-token time plus 32 steps at the floor.
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
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host

GEMMA2_2B_PARAMS = 2_614_341_888  # ModelConfig.variant("gemma2-2b"), tests/models/test_param_counts.py
D, F = 2304, 9216


def median_seconds(fn, calls: int = 10, repeats: int = 5) -> float:
    """Median over `repeats` of (time of `calls` back-to-back calls) / calls; `fn` returns something to block on."""
    block = lambda out: out.block_until_ready() if hasattr(out, "block_until_ready") else out
    block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        block(out)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def bandwidth_gbs(rounds: int = 3) -> dict:
    """The best of `rounds` medians, per library: this machine's speed drifts, and the floor below should be
    the most the memory ever gave."""
    n = 2**28  # 1 GiB of float32
    x = jnp.ones((n,), jnp.float32)
    t = torch.ones(n, dtype=torch.float32)
    total = jax.jit(jnp.sum)
    jax_s = min(median_seconds(lambda: total(x), calls=5) for _ in range(rounds))
    torch_s = min(median_seconds(lambda: t.sum(), calls=5) for _ in range(rounds))
    return {"jax_sum": n * 4 / jax_s / 1e9, "torch_sum": n * 4 / torch_s / 1e9}


def matmul_rows(copies: int = 6) -> list[dict]:
    """Each timing multiplies by `copies` distinct weights in turn (510 MB in float32), more than any cache holds,
    so the weights stream from memory as in a decode step."""
    rows = []
    rng = np.random.default_rng(0)
    for dtype in ("float32", "bfloat16"):
        jdt, tdt = jnp.dtype(dtype), getattr(torch, dtype)
        host_w = [rng.standard_normal((D, F), np.float32) * 0.02 for _ in range(copies)]
        w_kn = [jnp.asarray(w, jdt) for w in host_w]
        w_nk = [jnp.asarray(w.T, jdt) for w in host_w]
        w_torch = [torch.from_numpy(np.ascontiguousarray(w.T)).to(tdt) for w in host_w]
        del host_w

        def products(spec, jdt=jdt):
            return jax.jit(
                lambda lhs, ws: [jnp.einsum(spec, lhs, w, preferred_element_type=jnp.float32).astype(jdt) for w in ws]
            )

        kn, nk = products("mk,kn->mn"), products("mk,nk->mn")
        for m in (1, 8, 32):
            x = jnp.asarray(rng.standard_normal((m, D), np.float32), jdt)
            xt = torch.from_numpy(np.asarray(x.astype(jnp.float32))).to(tdt)
            calls = {
                "xla [in, out]": lambda kn=kn, x=x, w=w_kn: kn(x, w)[-1],
                "xla [out, in]": lambda nk=nk, x=x, w=w_nk: nk(x, w)[-1],
                "torch [out, in]": lambda xt=xt, ws=w_torch: [torch.nn.functional.linear(xt, w) for w in ws][-1],
            }
            with torch.inference_mode():
                seconds = {lib: median_seconds(call) / copies for lib, call in calls.items()}
            weight_bytes = D * F * jdt.itemsize
            for lib, s in seconds.items():
                rows.append(
                    {
                        "dtype": dtype,
                        "rows": m,
                        "lib": lib,
                        "ms": s * 1e3,
                        "weight_gbs": weight_bytes / s / 1e9,
                        "gflops": 2 * m * D * F / s / 1e9,
                    }
                )
    return rows


def floors(bandwidth: float, decode_jsons: list[str]) -> list[dict]:
    out = []
    for path in decode_jsons:
        with open(path) as f:
            record = json.load(f)
        for row in record["rows"]:
            if row["batch"] != 1:
                continue
            itemsize = jnp.dtype(row["dtype"]).itemsize
            floor_s = GEMMA2_2B_PARAMS * itemsize / (bandwidth * 1e9)
            hf, jf, new = row["transformers"], row["jaxformer"], row["new_tokens"]
            hf_total = hf["first_token_s"] + (new - 1) * hf["decode_step_s"]
            best_total = hf["first_token_s"] + (new - 1) * floor_s  # transformers' prefill, steps at the floor
            out.append(
                {
                    "dtype": row["dtype"],
                    "mode": row["mode"],
                    "floor_step_ms": floor_s * 1e3,
                    "hf_step_ms": hf["decode_step_s"] * 1e3,
                    "jf_step_ms": jf["decode_step_s"] * 1e3,
                    "hf_share_of_bandwidth": floor_s / hf["decode_step_s"],
                    "jf_share_of_bandwidth": floor_s / jf["decode_step_s"],
                    "best_possible_total_ratio": hf_total / best_total,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode_json", action="append", default=[], help="a bench_decode_hf.py --json output")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = host.cpu_info()
    machine = (
        f"{cpu['model']}, {host.vector_extensions(cpu['flags'])}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"torch {torch.__version__}"
    )
    print(machine)
    bw = bandwidth_gbs()
    print(f"memory bandwidth (sum of 1 GiB): jax {bw['jax_sum']:.1f} GB/s, torch {bw['torch_sum']:.1f} GB/s")
    print("\n| dtype | rows | library, weight layout | ms | weight GB/s | GFLOP/s |\n|---|---:|---|---:|---:|---:|")
    mm = matmul_rows()
    bandwidth = max([*bw.values(), *(r["weight_gbs"] for r in mm)])
    for r in mm:
        cells = f"{r['ms']:.2f} | {r['weight_gbs']:.1f} | {r['gflops']:.0f}"
        print(f"| {r['dtype']} | {r['rows']} | {r['lib']} | {cells} |")
    fl = floors(bandwidth, args.decode_json)
    print(f"\nthe floor's bandwidth: {bandwidth:.1f} GB/s (the most measured above)")
    if fl:
        print(
            "\n| dtype | decoding | floor ms/step | transformers ms/step (share of bandwidth) "
            "| jaxformer ms/step (share) | best possible total ratio |\n|---|---|---:|---:|---:|---:|"
        )
        for r in fl:
            print(
                f"| {r['dtype']} | {r['mode']} | {r['floor_step_ms']:.0f} | {r['hf_step_ms']:.0f} "
                f"({r['hf_share_of_bandwidth']:.0%}) | {r['jf_step_ms']:.0f} ({r['jf_share_of_bandwidth']:.0%}) "
                f"| {r['best_possible_total_ratio']:.2f}x |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine, "cpu": cpu, "bandwidth_gbs": bw, "floor_bandwidth_gbs": bandwidth, "matmuls": mm,
                 "floors": fl},
                f,
                indent=1,
            )  # fmt: skip


if __name__ == "__main__":
    main()
