"""Where a jaxformer loop step's time goes, on nanoGPT's CPU recipe (`shakespeare_char_cpu`: 4 layers, 4 heads, d 128,
context 64, batch 12): a jax.profiler trace (Python tracer off) of `--profile_steps` loop steps, split per step into
the device program (matmuls / other XLA ops, CPU-ms over its threads) and the host work around it (batching,
transfer + dispatch, metric fetch), using the compiled step's HLO to tell matmul ops from the rest
(experiments/hlo_text.py; experiments/trace_summary.py prints the heaviest ops).

    python experiments/profile_loop_step.py --profile /tmp/loop_step_trace   # 20 loop steps
    python experiments/profile_loop_step.py --smoke                          # tiny sizes, 4 steps

The loop step is the training loop's body (jaxformer/training/loop.py): next(grain iterator) ->
StepRunner.train_step -> jax.device_get of loss / nll / grad_norm -> float(), each part annotated in the trace.
The record names the CPU and its vector extensions (experiments/host.py).

The studies of the recipe against PyTorch: bench_step_vs_pytorch.py (the train step, interleaved),
bench_run_vs_pytorch.py (the whole commands), bench_bf16_cpu.py (bfloat16 compute).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics

import hlo_text
import jax
import recipe_bench as rb
import trace_summary


def profile_loop(jx: rb.Jaxformer, trace_dir: str, steps: int) -> dict:
    """Traces `steps` loop steps and splits each into host work and the device program (see the module doc)."""
    for _ in range(3):
        jx.loop_step()
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Python function events would inflate the host time they measure
    options.host_tracer_level = 2
    shutil.rmtree(trace_dir, ignore_errors=True)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True, profiler_options=options):
        for _ in range(steps):
            with jax.profiler.TraceAnnotation("bench_loop_step"):
                jx.loop_step(annotate=True)
    kinds = hlo_text.op_kinds(hlo_text.hlo_instructions(jx.compiled_step().as_text()))
    summary = trace_summary.summarize(trace_dir, top=25)
    breakdown = step_breakdown(trace_summary.newest_trace(trace_dir), kinds)
    breakdown["trace_summary"] = summary
    return breakdown


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def step_breakdown(trace_path: str, kinds: dict[str, str]) -> dict:
    """Per traced loop step (medians, ms): wall; the device program's span (first to last XLA op) and its op time
    by kind summed over threads (CPU-ms); the host parts (batch, step call = transfer + dispatch, fetch) and how
    much of each the device program did not overlap."""
    with gzip.open(trace_path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {
        (e["pid"], e.get("tid")): e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    steps = sorted((e for e in spans if e["name"] == "bench_loop_step"), key=lambda e: e["ts"])
    if not steps:
        raise RuntimeError(f"No bench_loop_step events in {trace_path}.")
    main = (steps[0]["pid"], steps[0].get("tid"))
    by_thread: dict = {}
    for e in spans:
        by_thread.setdefault((e["pid"], e.get("tid")), []).append(e)
    # Self time of every event (its duration less that of the events nested in it on the same thread).
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in evs:
            e["self"] = e["dur"]
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                stack[-1]["self"] -= e["dur"]
            stack.append(e)
    ops = [e for e in spans if e["name"] in kinds]
    executor = [e for e in spans if e["name"].startswith("ThunkExecutor::Execute") and "wait" not in e["name"]]
    matched = {e["name"] for e in ops}
    rows = []
    for s in steps:
        t0, t1 = s["ts"], s["ts"] + s["dur"]
        inside = [e for e in ops if t0 <= e["ts"] < t1]
        if not inside:
            continue
        d0 = min(e["ts"] for e in inside)
        d1 = max(e["ts"] + e["dur"] for e in inside)
        row = {"wall": s["dur"], "device_span": d1 - d0}
        for kind in ("matmul", "other", "control"):
            row[f"device_{kind}_cpu"] = sum(max(e["self"], 0.0) for e in inside if kinds[e["name"]] == kind)
        row["executor_cpu"] = sum(max(e["self"], 0.0) for e in executor if t0 <= e["ts"] < t1)
        row["device_threads"] = len({(e["pid"], e.get("tid")) for e in inside})
        parts = [e for e in by_thread[main] if e["name"].startswith("bench_") and t0 <= e["ts"] < t1]
        for part in ("batch", "step_call", "fetch"):
            evs = [e for e in parts if e["name"] == f"bench_{part}"]
            dur = sum(e["dur"] for e in evs)
            hidden = sum(_overlap(e["ts"], e["ts"] + e["dur"], d0, d1) for e in evs)
            row[part] = dur
            row[f"{part}_exposed"] = dur - hidden
        # Inside the step call: putting the batch on the device (shard_process_batch) vs the rest of the dispatch.
        call = [e for e in parts if e["name"] == "bench_step_call"]
        transfer = 0.0
        if call:
            c0, c1 = call[0]["ts"], call[0]["ts"] + call[0]["dur"]
            puts = [
                e
                for e in by_thread[main]
                if c0 <= e["ts"] < c1 and ("DevicePut" in e["name"] or "device_put" in e["name"].lower())
            ]
            outer = [e for e in puts if not any(o is not e and o["ts"] <= e["ts"] < o["ts"] + o["dur"] for o in puts)]
            transfer = sum(e["dur"] for e in outer)
        row["transfer"] = transfer
        row["dispatch"] = row["step_call"] - transfer
        row["host_exposed"] = row["wall"] - row["device_span"]
        row["unaccounted"] = row["wall"] - row["batch"] - row["step_call"] - row["fetch"]
        rows.append(row)
    keys = rows[0].keys() if rows else []
    median = {k: statistics.median(r[k] for r in rows) / (1.0 if k == "device_threads" else 1e3) for k in keys}
    return {
        "trace": trace_path,
        "steps": len(rows),
        "per_step_ms": median,
        "thread_names": sorted({threads.get((e["pid"], e.get("tid")), "?") for e in ops}),
        "ops_matched_to_hlo": len(matched),
    }


def format_breakdown(b: dict) -> str:
    m = b["per_step_ms"]
    lines = [
        f"Where a jaxformer loop step's time goes ({b['steps']} traced steps, medians, ms; device ops on "
        f"{m['device_threads']:.0f} threads: {', '.join(b['thread_names'])}):",
        f"  wall per step                         {m['wall']:7.2f}",
        f"  device program span (first..last op)  {m['device_span']:7.2f}",
        f"    matmul ops (CPU-ms, all threads)    {m['device_matmul_cpu']:7.2f}",
        f"    other XLA ops (CPU-ms)              {m['device_other_cpu']:7.2f}",
        f"    while-loop bookkeeping (CPU-ms)     {m['device_control_cpu']:7.2f}",
        f"    thunk executor itself (CPU-ms)      {m['executor_cpu']:7.2f}",
        f"  host time not overlapped by device    {m['host_exposed']:7.2f}  (wall - span)",
        f"    batching: next(grain iterator)      {m['batch']:7.2f}  (exposed {m['batch_exposed']:.2f})",
        f"    step call: transfer of the batch    {m['transfer']:7.2f}",
        f"    step call: dispatch (rest)          {m['dispatch']:7.2f}  (call exposed {m['step_call_exposed']:.2f})",
        f"    metrics: device_get + float()       {m['fetch_exposed']:7.2f}  (after the program ends)",
        f"    sync: device_get waiting for it     {m['fetch'] - m['fetch_exposed']:7.2f}  (overlapped, not host work)",
        f"    loop body outside those three       {m['unaccounted']:7.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rb.add_recipe_arguments(parser)
    parser.add_argument("--profile", metavar="DIR", default="/tmp/loop_step_trace", help="trace into DIR (emptied)")
    parser.add_argument("--profile_steps", type=int, default=20, help="loop steps traced")
    args = parser.parse_args()
    if args.smoke:
        args.profile_steps = 4
    config = rb.recipe_config(args)
    result = rb.record(config, with_torch=False)
    jx = rb.Jaxformer(config)
    result["profile"] = profile_loop(jx, args.profile, args.profile_steps)
    jx.close()
    print("\n" + trace_summary.format_summary(result["profile"]["trace_summary"], processes=1))
    print("\n" + format_breakdown(result["profile"]))
    rb.write_json(args.json, result)


if __name__ == "__main__":
    main()
