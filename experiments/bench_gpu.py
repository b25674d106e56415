"""GPU benchmark in one run (~6 minutes on an H100, compilation included): matmul peak, attention kernels, the
GPT-2 small train step (MFU) and KV-cached decoding.

    python experiments/bench_gpu.py --json experiments/results/gpu_h100.json           # the full run
    python experiments/bench_gpu.py --parts peak,train --batch 16 --seq 1024           # some parts only
    python experiments/bench_gpu.py --smoke --json /tmp/gpu_smoke.json                 # tiny sizes, CPU, < 1 minute

Parts (`--parts`, default all; each runs in its own try/except, and the JSON is rewritten after each one, so a run
killed part-way still leaves the parts it finished):

1. peak: jitted bf16 [n, n] @ [n, n] (n = 8192, random normal inputs), median of 20 calls each waited on ->
   peak = 2 n^3 / median seconds. Also the rate with 20 calls queued back to back (no per-call sync), recorded only.
2. attention: bf16, causal, B=8, N=12, H=64, T = 1024, 2048, 4096 (BTNH layout), forward and forward+backward (the
   gradient of sum(output) with respect to q, k, v), median of 20 calls each, for `jax.nn.dot_product_attention`
   with implementation="cudnn" and "xla", and `jaxformer.ops.dot_product_attention`; ratio = time / cuDNN's time.
   The JSON also holds the mean time of 20 calls queued back to back (`*_queued_ms`: no per-call dispatch).
   Correctness: rel_err = ||out - ref|| / ||ref|| against the same call in float32 (the bf16 inputs upcast, XLA,
   matmul precision "highest"); for the backward the largest of the three rel_errs of dq, dk, dv.
3. train: the real `jaxformer.training` train step (AdamW, clipping, schedule, as `build_run` / `create_train_state` /
   `make_train_step` make it) of `gpt2-small` with bf16 compute, float32 parameters, dropout 0, on random tokens
   (vocab 50257), batch 16 x 1024, for attention_impl "xla" and "cudnn" (`--train_impls`). Compile time = lower +
   compile (AOT) of the step; then 3 warm-up steps and the median of 20 steps (each waited on via its metrics).
     flops_per_step = B T (6 N + 12 L T D)   (PaLM / nanoGPT; N = parameters without the position table)
     model TFLOP/s = flops_per_step / step seconds;  MFU = model TFLOP/s / measured bf16 peak of part 1.
4. decode: `jaxformer.decoding.generate` of `gpt2-small` (bf16 compute and parameters, random weights), prompt 32
   tokens, 256 new tokens, greedy, batch 1 and 8: tokens/s = B * new tokens / median seconds of 5 calls (after a
   compile call, timed separately).

cuDNN failures (e.g. "cuDNN is not detected" on CPU) are recorded as error strings, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx

from jaxformer import ops
from jaxformer.decoding import generate
from jaxformer.models import GPT, ModelConfig
from jaxformer.training import build_run, create_train_state, make_train_step
from jaxformer.training.defaults import default_config
from jaxformer.training.tasks.lm import lm_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/ is not a package
import host
import trace_summary

PARTS = ("peak", "attention", "train", "decode")


def error_string(e: BaseException) -> str:
    """The exception's type and first line: short enough for a table cell."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def timed_calls(fn, args, reps: int) -> tuple[float, float, float]:
    """(first call seconds = compile + run, median seconds of `reps` further calls each waited on, mean seconds of
    `reps` calls queued back to back and waited on once: no per-call dispatch and sync in it)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready([fn(*args) for _ in range(reps)])
    return first, statistics.median(times), (time.perf_counter() - start) / reps


# -- 1. peak ------------------------------------------------------------------------------------------------------


def bench_peak(n: int, reps: int) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    dot = jax.jit(jnp.dot)
    for _ in range(3):
        jax.block_until_ready(dot(a, b))
    _, median_s, queued_s = timed_calls(dot, (a, b), reps)
    flops = 2 * n**3
    return {
        "n": n,
        "dtype": "bfloat16",
        "reps": reps,
        "median_ms": 1e3 * median_s,
        "tflops": flops / median_s / 1e12,
        "queued_ms": 1e3 * queued_s,
        "tflops_queued": flops / queued_s / 1e12,
    }


# -- 2. attention -------------------------------------------------------------------------------------------------


def attention_impls() -> dict:
    return {
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
        "jax.nn xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
        "jaxformer": lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True),
    }


def grad_of_sum(fn):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))


def rel_err(x, ref) -> float:
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    return float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))


def bench_attention(shapes, reps: int, progress) -> list[dict]:
    rows = []
    reference = attention_impls()["jax.nn xla"]
    for B, T, N, H in shapes:
        keys = jax.random.split(jax.random.key(T), 3)
        q, k, v = (jax.random.normal(key, (B, T, N, H), jnp.bfloat16) for key in keys)
        q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
        with jax.default_matmul_precision("highest"):  # float32 matmuls, not TF32 (GPU) or bf16 passes
            ref_out = jax.block_until_ready(jax.jit(reference)(q32, k32, v32))
            ref_grads = jax.block_until_ready(jax.jit(grad_of_sum(reference))(q32, k32, v32))
        times = {}
        for name, fn in attention_impls().items():
            row = {"shape": f"B={B},T={T},N={N},H={H}", "T": T, "impl": name}
            try:
                fwd, fwd_bwd = jax.jit(fn), jax.jit(grad_of_sum(fn))
                row["fwd_first_s"], fwd_s, fwd_queued_s = timed_calls(fwd, (q, k, v), reps)
                row["fwd_bwd_first_s"], fwd_bwd_s, fwd_bwd_queued_s = timed_calls(fwd_bwd, (q, k, v), reps)
                row["fwd_ms"], row["fwd_bwd_ms"] = 1e3 * fwd_s, 1e3 * fwd_bwd_s
                row["fwd_queued_ms"], row["fwd_bwd_queued_ms"] = 1e3 * fwd_queued_s, 1e3 * fwd_bwd_queued_s
                row["fwd_rel_err"] = rel_err(fwd(q, k, v), ref_out)
                row["bwd_rel_err"] = max(rel_err(g, r) for g, r in zip(fwd_bwd(q, k, v), ref_grads, strict=True))
                times[name] = (fwd_s, fwd_bwd_s)
            except Exception as e:
                row["error"] = error_string(e)
            rows.append(row)
        for row in rows[-len(attention_impls()) :]:
            if "cudnn" in times and row["impl"] in times:
                row["fwd_ratio_vs_cudnn"] = times[row["impl"]][0] / times["cudnn"][0]
                row["fwd_bwd_ratio_vs_cudnn"] = times[row["impl"]][1] / times["cudnn"][1]
            progress(f"attention {row['shape']} {row['impl']}: " + attention_cells(row))
        del q, k, v, q32, k32, v32, ref_out, ref_grads
    return rows


def attention_cells(row: dict) -> str:
    if "error" in row:
        return row["error"]
    ratio = lambda key: f" ({row[key]:.2f}x cudnn)" if key in row else ""
    return (
        f"fwd {row['fwd_ms']:.3f} ms{ratio('fwd_ratio_vs_cudnn')}, fwd+bwd {row['fwd_bwd_ms']:.3f} ms"
        f"{ratio('fwd_bwd_ratio_vs_cudnn')}, rel err fwd {row['fwd_rel_err']:.1e} bwd {row['bwd_rel_err']:.1e}"
    )


# -- 3. train -----------------------------------------------------------------------------------------------------


def train_config(impl: str, batch: int, seq: int, scan_layers: bool, smoke: bool, remat: str, vocab_multiple: int):
    config = default_config()
    config.name = f"gpt2-small-bf16-{impl}"
    config.model.variant = "gpt2-small"
    config.model.dtype = "bfloat16"
    config.model.dropout_rate = 0.0
    config.model.attention_impl = impl
    config.model.scan_layers = scan_layers
    config.model.remat = remat
    config.model.vocab_multiple = vocab_multiple
    if smoke:
        config.model.num_layers, config.model.d_model, config.model.num_heads, config.model.d_ff = 2, 64, 4, 256
    config.batch_size = batch
    config.data.seq_len = seq
    return config


def compiled_memory(compiled) -> dict | None:
    """XLA's buffer assignment for the compiled step (bytes): temporaries (activations kept for the backward pass
    and scratch), arguments and outputs; None where the backend does not report it."""
    try:
        m = compiled.memory_analysis()
        return {
            "temp_bytes": int(m.temp_size_in_bytes),
            "argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes),
        }
    except Exception:  # not every backend / jax version has it
        return None


def bench_train_step(impl: str, args, peak_tflops: float | None) -> dict:
    config = train_config(impl, args.batch, args.seq, args.scan_layers, args.smoke, args.remat, args.vocab_multiple)
    B, T = config.batch_size, config.data.seq_len
    run = build_run(config, data_fields={"vocab_size": args.vocab, "max_len": T})
    model_cfg, schedule, optimizer = run.model_config, run.schedule, run.optimizer
    graphs, state = create_train_state(run.make_model(), optimizer)
    train_step = make_train_step(graphs, optimizer, schedule, lm_loss)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):  # a few device-resident batches, cycled: no host work inside the timed steps
        tokens = rng.integers(0, args.vocab, size=(B, T + 1)).astype(np.int32)
        batches.append({"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])})

    start = time.perf_counter()
    compiled = train_step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - start
    memory = compiled_memory(compiled)
    start = time.perf_counter()
    state, metrics = compiled(state, batches[0])
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - start
    for i in range(args.warmup - 1):
        state, metrics = compiled(state, batches[(i + 1) % len(batches)])
    jax.block_until_ready(metrics)
    times = []
    for i in range(args.steps):
        b = batches[i % len(batches)]
        start = time.perf_counter()
        state, metrics = compiled(state, b)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    profile = None
    if args.profile:  # a few more steps under the profiler, after the timed ones (tracing slows them)
        trace_dir = os.path.join(args.profile, impl)
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for i in range(args.profile_steps):
                state, metrics = compiled(state, batches[i % len(batches)])
            jax.block_until_ready(metrics)
        profile = trace_summary.summarize(trace_dir, top=40)
        print(trace_summary.format_summary(profile, processes=3), flush=True)

    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    position_table = model_cfg.max_len * model_cfg.d_model if model_cfg.positional == "learned" else 0
    N, L, D = params - position_table, model_cfg.num_layers, model_cfg.d_model
    flops_per_step = B * T * (6 * N + 12 * L * T * D)
    achieved = flops_per_step / step_s / 1e12
    return {
        "impl": impl,
        "remat": args.remat,
        "scan_layers": args.scan_layers,
        "vocab": args.vocab,
        "vocab_multiple": args.vocab_multiple,
        "memory": memory,
        "params": params,
        "params_without_positions": N,
        "layers": L,
        "d_model": D,
        "batch": B,
        "seq": T,
        "tokens_per_step": B * T,
        "steps": args.steps,
        "compile_s": compile_s,
        "first_step_s": first_step_s,
        "step_ms": 1e3 * step_s,
        "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times),
        "tokens_per_s": B * T / step_s,
        "model_tflops_per_step": flops_per_step / 1e12,
        "model_tflops_per_s": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None,
        "final_loss": float(metrics["loss"]),
        "profile": profile,
    }


def bench_train(args, peak_tflops: float | None, progress) -> list[dict]:
    rows = []
    for impl in args.train_impls.split(","):
        try:
            row = bench_train_step(impl, args, peak_tflops)
        except Exception as e:
            row = {"impl": impl, "error": error_string(e), "traceback": traceback.format_exc()}
        rows.append(row)
        progress(f"train {impl}: " + train_cells(row))
    return rows


def train_cells(row: dict) -> str:
    if "error" in row:
        return row["error"]
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
    temp = f", temp {row['memory']['temp_bytes'] / 2**30:.2f} GiB" if row.get("memory") else ""
    return (
        f"{row['step_ms']:.1f} ms/step, {row['tokens_per_s']:,.0f} tok/s, {row['model_tflops_per_s']:.1f} TFLOP/s, "
        f"MFU {mfu}, compile {row['compile_s']:.1f} s{temp}"
    )


# -- 4. decode ----------------------------------------------------------------------------------------------------


def bench_decode(args, progress) -> list[dict]:
    overrides = dict(dtype="bfloat16", param_dtype="bfloat16", dropout_rate=0.0)
    if args.smoke:
        overrides.update(num_layers=2, d_model=64, num_heads=4, d_ff=256, vocab_size=args.vocab)
    cfg = ModelConfig.variant("gpt2-small", **overrides)
    cfg = cfg.replace(max_len=max(cfg.max_len, args.prompt_len + args.new_tokens))
    model = GPT(cfg, rngs=nnx.Rngs(0))
    rows = []
    for B in args.decode_batches:
        row = {"batch": B, "prompt": args.prompt_len, "new_tokens": args.new_tokens, "rounds": args.decode_rounds}
        try:
            prompt = jax.random.randint(jax.random.key(B), (B, args.prompt_len), 0, cfg.vocab_size, jnp.int32)
            call = lambda prompt: generate(model, prompt, args.new_tokens, rng=jax.random.key(0), temperature=0.0)
            first_s, median_s, _ = timed_calls(call, (prompt,), args.decode_rounds)
            row.update(
                first_call_s=first_s,
                median_s=median_s,
                ms_per_token_step=1e3 * median_s / args.new_tokens,
                tokens_per_s=B * args.new_tokens / median_s,
            )
        except Exception as e:
            row.update(error=error_string(e), traceback=traceback.format_exc())
        rows.append(row)
        progress(f"decode batch {B}: " + decode_cells(row))
    return rows


def decode_cells(row: dict) -> str:
    if "error" in row:
        return row["error"]
    return (
        f"{row['tokens_per_s']:,.0f} tok/s ({row['median_s']:.3f} s per call, {row['ms_per_token_step']:.2f} ms "
        f"per step), first call {row['first_call_s']:.1f} s"
    )


# -- main ---------------------------------------------------------------------------------------------------------


def print_tables(results: dict) -> None:
    env = results["env"]
    print(f"\n{env['device_kind']} ({env['backend']}), jax {env['jax']}, flax {env['flax']}, {results['wall_s']:.0f} s")
    print()
    peak = results.get("peak")
    if peak:
        print(
            f"bf16 matmul {peak['n']}^3: {peak['median_ms']:.3f} ms, **{peak['tflops']:.1f} TFLOP/s** "
            f"(queued back to back: {peak['tflops_queued']:.1f})\n"
        )
    if results.get("attention"):
        print("| shape | impl | fwd ms | fwd / cudnn | fwd+bwd ms | fwd+bwd / cudnn | rel err fwd | rel err bwd |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in results["attention"]:
            if "error" in r:
                print(f"| {r['shape']} | {r['impl']} | {r['error'][:80]} | | | | | |")
                continue
            ratio = lambda key, r=r: f"{r[key]:.2f}" if key in r else "-"
            print(
                f"| {r['shape']} | {r['impl']} | {r['fwd_ms']:.3f} | {ratio('fwd_ratio_vs_cudnn')} | "
                f"{r['fwd_bwd_ms']:.3f} | {ratio('fwd_bwd_ratio_vs_cudnn')} | {r['fwd_rel_err']:.1e} | "
                f"{r['bwd_rel_err']:.1e} |"
            )
        print()
    if results.get("train"):
        print("| train impl | B x T | params | compile s | step ms | tokens/s | model TFLOP/s | MFU |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in results["train"]:
            if "error" in r:
                print(f"| {r['impl']} | {r['error'][:80]} | | | | | | |")
                continue
            mfu = f"**{100 * r['mfu']:.1f}%**" if r["mfu"] is not None else "-"
            print(
                f"| {r['impl']} | {r['batch']}x{r['seq']} | {r['params']:,} | {r['compile_s']:.1f} | "
                f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['model_tflops_per_s']:.1f} | {mfu} |"
            )
        print()
    if results.get("decode"):
        print("| decode batch | prompt | new tokens | first call s | s per call | ms per step | tokens/s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in results["decode"]:
            if "error" in r:
                print(f"| {r['batch']} | {r['error'][:80]} | | | | | |")
                continue
            print(
                f"| {r['batch']} | {r['prompt']} | {r['new_tokens']} | {r['first_call_s']:.1f} | "
                f"{r['median_s']:.3f} | {r['ms_per_token_step']:.2f} | {r['tokens_per_s']:,.0f} |"
            )
        print()
    for part, tb in results["errors"].items():
        print(f"part {part} failed:\n{tb}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, < 1 minute): checks the script runs")
    parser.add_argument("--json", help="write the results here (after every part)")
    parser.add_argument("--matmul", type=int, default=8192, help="n of the bf16 n x n x n peak matmul")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per matmul / attention measurement")
    parser.add_argument("--attention_seqs", default="1024,2048,4096")
    parser.add_argument("--batch", type=int, default=16, help="train batch size")
    parser.add_argument("--seq", type=int, default=1024, help="train sequence length")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--steps", type=int, default=20, help="timed train steps")
    parser.add_argument("--warmup", type=int, default=3, help="train steps before timing (the first compiles)")
    parser.add_argument("--scan_layers", action="store_true", help="train with scan_layers=True (faster compile)")
    parser.add_argument("--remat", default="none", help="ModelConfig.remat of the train part")
    parser.add_argument("--vocab_multiple", type=int, default=1, help="ModelConfig.vocab_multiple of the train part")
    parser.add_argument("--train_impls", default="xla,cudnn", help="attention_impl values for the train part")
    parser.add_argument("--profile", help="trace --profile_steps more train steps into this folder and summarize")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--decode_batches", default="1,8")
    parser.add_argument("--decode_rounds", type=int, default=5)
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    attention_shapes = [(8, int(T), 12, 64) for T in args.attention_seqs.split(",")]
    if args.smoke:
        args.matmul, args.reps, args.batch, args.seq, args.vocab = 512, 3, 2, 64, 256
        args.steps, args.warmup, args.prompt_len, args.new_tokens, args.decode_rounds = 3, 2, 4, 8, 2
        attention_shapes = [(2, 32, 2, 16), (2, 64, 2, 16)]
    args.decode_batches = [int(b) for b in args.decode_batches.split(",")]

    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {line}", flush=True)

    device = jax.devices()[0]
    results = {
        "env": {
            "device_kind": device.device_kind,
            "platform": device.platform,
            "backend": jax.default_backend(),
            "device_count": jax.device_count(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "host": host.describe(),
            "smoke": args.smoke,
            "argv": sys.argv[1:],
        },
        "part_s": {},
        "errors": {},
        "wall_s": 0.0,
    }
    progress(f"{device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, flax {flax.__version__}")

    def save() -> None:
        results["wall_s"] = time.perf_counter() - start
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    for part in parts:
        part_start = time.perf_counter()
        try:
            if part == "peak":
                results["peak"] = bench_peak(args.matmul, args.reps)
                p = results["peak"]
                progress(f"peak: bf16 {p['n']}^3 {p['median_ms']:.3f} ms, {p['tflops']:.1f} TFLOP/s")
            elif part == "attention":
                results["attention"] = bench_attention(attention_shapes, args.reps, progress)
            elif part == "train":
                peak_tflops = results.get("peak", {}).get("tflops")
                results["train"] = bench_train(args, peak_tflops, progress)
            elif part == "decode":
                results["decode"] = bench_decode(args, progress)
        except Exception:
            results["errors"][part] = traceback.format_exc()
            progress(f"{part} FAILED: {results['errors'][part].strip().splitlines()[-1]}")
        results["part_s"][part] = time.perf_counter() - part_start
        save()
    print_tables(results)


if __name__ == "__main__":
    main()
