"""nanoGPT's CPU recipe (`shakespeare_char_cpu`: 4 layers, 4 heads, d 128, context 64, batch 12) in bfloat16 compute
against float32, and what decides the difference: which of its dots reach the CPU's bf16 matmul kernels.

    python experiments/bench_bf16_cpu.py --no_perf             # 200 loop steps per dtype, 2048^3 matmuls
    python experiments/bench_bf16_cpu.py --smoke --no_perf     # tiny sizes, 256^3 matmuls

Measured: the recipe with config.model.dtype = "bfloat16" (float32 master weights) against float32, loop steps
interleaved in alternating rounds (experiments/recipe_bench.py); jitted 2048^3 matmuls in float32, bf16 -> bf16 and
bf16 -> f32 (preferred_element_type), and at the recipe's feed-forward shapes; a dense layer's gradient written
three ways in bf16; the dots of the compiled float32 and bf16 steps by operand types (experiments/hlo_text.py); and,
where `perf` works (not with --no_perf), the hottest machine-code symbols (the matmul kernels' names give their
element types and ISA) of the bf16 matmuls and the bf16 step. torch's matmuls for comparison. Whether a CPU has
BF16 instructions decides all of this: the record names the CPU and its vector extensions (experiments/host.py).

The other studies of the recipe against PyTorch: bench_step_vs_pytorch.py (the train step, interleaved),
bench_run_vs_pytorch.py (the whole commands), profile_loop_step.py (where a loop step's time goes).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import hlo_text
import host
import jax
import jax.numpy as jnp
import recipe_bench as rb


def compiled_matmul(m: int, k: int, n: int, case: str):
    """(dot, a, b): a jitted [m, k] @ [k, n] on random operands, compiled: "f32", "bf16" (bf16 -> bf16) or
    "bf16_f32out" (bf16 operands, preferred_element_type=float32)."""
    dtype = jnp.float32 if case == "f32" else jnp.bfloat16
    preferred = jnp.float32 if case == "bf16_f32out" else None
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=preferred))
    dot(a, b).block_until_ready()
    return dot, a, b


def matmul_gflops(n: int, case: str, rounds: int = 5) -> float:
    """GFLOP/s of a jitted [n, n] @ [n, n] (`compiled_matmul`'s cases)."""
    dot, a, b = compiled_matmul(n, n, n, case)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def matmul_hlo(n: int, case: str) -> dict:
    dtype = jnp.float32 if case == "f32" else jnp.bfloat16
    preferred = jnp.float32 if case == "bf16_f32out" else None
    a = jnp.ones((n, n), dtype)
    text = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=preferred)).lower(a, a).compile().as_text()
    inst = hlo_text.hlo_instructions(text)
    return {
        "dots": sorted({d["signature"] for d in hlo_text.dots_of(inst)}),
        "converts": sum(1 for k, v in inst.items() if k != "__computations__" and v["opcode"] == "convert"),
        "fusion_kinds": sorted(set(re.findall(r'"kind":"(__\w+)"', text))),
    }


def torch_matmul_gflops(n: int, dtype_name: str, rounds: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def perf_symbols(target: str, args) -> dict:
    """The hottest symbols (perf record) of this script run with --perf_target `target` (and the recipe options of
    `args`): the top ones and the matmul kernels among them; {"error"} without a working perf."""
    if not shutil.which("perf"):
        return {"error": "perf not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "perf.data")
        cmd = ["perf", "record", "-q", "-F", "499", "-o", out, "--", sys.executable, os.path.abspath(__file__)]
        cmd += ["--perf_target", target, "--config", args.config] + (["--smoke"] if args.smoke else [])
        cmd += [f"--text={args.text}"] if args.text else []
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode or not os.path.exists(out):
            return {"error": (run.stderr or run.stdout)[-500:]}
        report = subprocess.run(
            ["perf", "report", "-i", out, "--stdio", "--sort", "symbol", "--percent-limit", "0.5"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    rows = []
    for line in report.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+\[\.\]\s+(.*)$", line)
        if m:
            rows.append({"percent": float(m.group(1)), "symbol": re.split(r"\s{2,}", m.group(2).strip())[0][:100]})
    # The matmul kernels by name: YNNPACK's say their element types and ISA (..._avx512bf16 uses vdpbf16ps).
    dots = [r for r in rows if re.search(r"dot_|gemm|matmul", r["symbol"])]
    return {"top": rows[:8], "dot_kernels": dots[:8]}


def run_perf_target(target: str, args) -> None:
    """What `perf_symbols` records: a few seconds of one computation."""
    if target.startswith("matmul_"):
        case = target.removeprefix("matmul_")
        dtype = jnp.float32 if case == "f32" else jnp.bfloat16
        preferred = jnp.float32 if case == "bf16_f32out" else None
        a = jnp.ones((2048, 2048), dtype)
        dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=preferred))
        for _ in range(30):
            dot(a, a).block_until_ready()
        return
    config = rb.recipe_config(args)
    config.model.dtype = "bfloat16" if target == "step_bf16" else "float32"
    jx = rb.Jaxformer(config)
    for _ in range(100 if not args.smoke else 10):
        jx.prepared_step()
    jx.close()


def bf16_report(args, config) -> dict:
    """The recipe in bfloat16 compute against float32 (interleaved), and what XLA:CPU does with bf16 dots."""
    config16 = copy.deepcopy(config)
    config16.model.dtype = "bfloat16"
    jx32, jx16 = rb.Jaxformer(config), rb.Jaxformer(config16)
    timed = rb.interleaved(
        {"float32 loop step": jx32.loop_step, "bfloat16 loop step": jx16.loop_step},
        steps=args.bf16_steps,
        rounds=args.rounds,
        warmup=args.warmup,
    )
    timing = rb.summarize_times(timed, [("bfloat16 loop step", "float32 loop step")])
    hlo = {}
    for name, jx in (("float32", jx32), ("bfloat16", jx16)):
        inst = hlo_text.hlo_instructions(jx.compiled_step().as_text())
        sigs: dict[str, int] = {}
        runners: dict[str, int] = {}
        for d in hlo_text.dots_of(inst):
            sigs[d["signature"]] = sigs.get(d["signature"], 0) + 1
            kind = "ynn_fusion" if d["run_by"].startswith("ynn_fusion") else inst[d["run_by"]]["opcode"]
            runners[kind] = runners.get(kind, 0) + 1
        converts = sum(1 for k, v in inst.items() if k != "__computations__" and v["opcode"] == "convert")
        hlo[name] = {"dots_by_signature": sigs, "dots_run_by": runners, "convert_instructions": converts}
    losses = rb.loss_agreement(jx32.losses, jx16.losses)
    jx32.close()
    jx16.close()
    n = 256 if args.smoke else 2048
    cases = ("f32", "bf16", "bf16_f32out")
    gflops: dict[str, list[float]] = {c: [] for c in cases}
    for _ in range(3):
        for c in cases:
            gflops[c].append(matmul_gflops(n, c))
    shapes = {}
    T = config.batch_size * config.data.seq_len
    D, F = jx32.model_cfg.d_model, jx32.model_cfg.d_ff
    for label, (m, k, nn) in {"ffn_in [BT,D]x[D,F]": (T, D, F), "ffn_out [BT,F]x[F,D]": (T, F, D)}.items():
        shapes[label] = {c: small_matmul_us(m, k, nn, c) for c in cases}
    result = {
        "steps": timing,
        "loss_bf16_vs_f32": losses,
        "matmul_n": n,
        "matmul_gflops": {c: statistics.median(v) for c, v in gflops.items()},
        "matmul_hlo": {c: matmul_hlo(n, c) for c in cases},
        "recipe_shape_matmul_us": shapes,
        "dense_layer_grad": dense_grad_variants(T, D, F),
        "torch_matmul_gflops": {d: torch_matmul_gflops(n, d) for d in ("float32", "bfloat16")},
        "step_hlo": hlo,
        "xla_flags_env": os.environ.get("XLA_FLAGS", ""),
        "cpu_flags": host.cpu_info()["flags"],
    }
    if not args.no_perf:
        result["perf"] = {t: perf_symbols(t, args) for t in ("matmul_bf16_f32out", "matmul_bf16", "step_bf16")}
    return result


def dense_grad_variants(m: int, k: int, n: int) -> dict:
    """A dense layer's gradient, jitted, at the recipe's shape (x [m, k] @ w [k, n], then tanh and a sum): float32;
    bf16 operands as jaxformer's bf16 layers compute (bf16 -> bf16 dot); bf16 operands with
    preferred_element_type=float32 (autodiff's backward dots then take float32 cotangents); and the same with a
    custom VJP whose backward dots also take bf16 operands and return float32. Time per call and the dot
    signatures of each optimized HLO: which dots reach the bf16 kernel."""
    bf16, f32 = jnp.bfloat16, jnp.float32

    @jax.custom_vjp
    def matmul(a, b):
        return jnp.einsum("mk,kn->mn", a, b, preferred_element_type=f32).astype(bf16)

    def matmul_fwd(a, b):
        return matmul(a, b), (a, b)

    def matmul_bwd(res, g):
        a, b = res
        da = jnp.einsum("mn,kn->mk", g, b, preferred_element_type=f32).astype(a.dtype)
        db = jnp.einsum("mk,mn->kn", a, g, preferred_element_type=f32).astype(b.dtype)
        return da, db

    matmul.defvjp(matmul_fwd, matmul_bwd)

    def preferred(x, w):
        return jnp.einsum("mk,kn->mn", x.astype(bf16), w.astype(bf16), preferred_element_type=f32).astype(bf16)

    variants = {
        "float32": lambda x, w: x @ w,
        "bf16 (jaxformer's bf16 layers)": lambda x, w: x.astype(bf16) @ w.astype(bf16),
        "bf16, preferred_element_type=f32": preferred,
        "bf16, preferred f32 + custom VJP": lambda x, w: matmul(x.astype(bf16), w.astype(bf16)),
    }
    x = jax.random.normal(jax.random.key(0), (m, k), f32)
    w = 0.05 * jax.random.normal(jax.random.key(1), (k, n), f32)
    out = {}
    for name, layer in variants.items():
        grad = jax.jit(jax.grad(lambda x, w, layer=layer: jnp.tanh(layer(x, w)).astype(f32).sum(), argnums=(0, 1)))
        compiled = grad.lower(x, w).compile()
        jax.block_until_ready(compiled(x, w))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(20):
                result = compiled(x, w)
            jax.block_until_ready(result)
            times.append((time.perf_counter() - t0) / 20)
        dots = sorted(d["signature"] for d in hlo_text.dots_of(hlo_text.hlo_instructions(compiled.as_text())))
        out[name] = {"us": 1e6 * statistics.median(times), "dots": dots}
    return out


def small_matmul_us(m: int, k: int, n: int, case: str, calls: int = 200) -> float:
    """Microseconds per call of a small jitted [m, k] @ [k, n] (dispatch included)."""
    dot, a, b = compiled_matmul(m, k, n, case)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = dot(a, b)
        out.block_until_ready()
        times.append((time.perf_counter() - t0) / calls)
    return 1e6 * statistics.median(times)


def print_bf16(b: dict) -> None:
    per = b["steps"]["per_step_ms"]
    r = b["steps"]["ratios"]["bfloat16 loop step / float32 loop step"]
    print(
        f"\nbfloat16 compute (float32 params): loop step {per['bfloat16 loop step']['median']:.2f} ms vs float32 "
        f"{per['float32 loop step']['median']:.2f} ms: {r['median_of_rounds']:.2f}x; losses differ by "
        f"{b['loss_bf16_vs_f32']['max_abs_diff_all']:.3f} at most over {b['loss_bf16_vs_f32']['steps_compared']} steps"
    )
    n = b["matmul_n"]
    g = b["matmul_gflops"]
    print(
        f"jitted {n}^3 matmul GFLOP/s: f32 {g['f32']:.0f}, bf16 -> bf16 {g['bf16']:.0f}, bf16 -> f32 "
        f"(preferred_element_type) {g['bf16_f32out']:.0f}; torch {b['torch_matmul_gflops']}"
    )
    for case, h in b["matmul_hlo"].items():
        print(f"  optimized HLO of the {case} matmul: {h}")
    for label, us in b["recipe_shape_matmul_us"].items():
        print(f"  {label}: " + ", ".join(f"{c} {v:.0f} us" for c, v in us.items()))
    for name, v in b["dense_layer_grad"].items():
        print(f"  dense layer gradient at [BT,D]x[D,F], {name}: {v['us']:.0f} us, dots {v['dots']}")
    for name, h in b["step_hlo"].items():
        print(f"  {name} train step dots: {h}")
    print(f"  CPU: {host.describe()}; XLA_FLAGS={b['xla_flags_env']!r}")
    for target, p in b.get("perf", {}).items():
        if "error" in p:
            print(f"  perf, {target}: {p['error']}")
            continue
        dots = ", ".join(f"{r['symbol']} {r['percent']:.1f}%" for r in p["dot_kernels"][:3]) or "none"
        print(f"  perf, {target}: matmul kernels {dots}; top symbol {p['top'][0]['symbol']} {p['top'][0]['percent']}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rb.add_recipe_arguments(parser)
    parser.add_argument("--bf16_steps", type=int, default=200, help="timed loop steps per dtype, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each dtype first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--no_perf", action="store_true", help="skip the perf record evidence")
    parser.add_argument("--perf_target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.perf_target:
        run_perf_target(args.perf_target, args)
        return
    if args.smoke:
        args.bf16_steps, args.rounds, args.warmup = 8, 2, 2
    import torch

    torch.set_num_threads(args.threads)
    config = rb.recipe_config(args)
    result = rb.record(config)
    result["bf16"] = bf16_report(args, config)
    print_bf16(result["bf16"])
    rb.write_json(args.json, result)


if __name__ == "__main__":
    main()
