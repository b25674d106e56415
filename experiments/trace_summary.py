"""Where the time went: a text summary of a `jax.profiler` trace.

    python experiments/trace_summary.py TRACE_DIR [--top 30]

`jax.profiler.trace(TRACE_DIR, create_perfetto_trace=True)` writes `*.trace.json.gz` (Chrome trace format) next
to the xplane. This reads the newest one and sums the complete events ("ph": "X") by name within each process
(on a GPU the device streams are their own processes; on the CPU the XLA thunks run on the host's threads), so
that the heaviest kernels or fusions can be read off without TensorBoard. Nested events are counted at every
level, so totals within a process can exceed its wall time; compare names with names.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os

# Coarse kinds, matched in order on the lower-cased event name; the first hit wins.
KINDS = (
    ("attention", ("cudnn", "fmha", "flash", "dot_product_attention", "attention")),
    ("matmul", ("gemm", "cutlass", "nvjet", "cublas", "__ynn", "ynn_fusion", "dot", "matmul", "sm90_xmma")),
    ("copy / transpose", ("copy", "transpose", "memcpy", "memset")),
    ("reduction", ("reduce", "reduction")),
    ("fusion / elementwise", ("fusion", "loop_", "input_", "triton", "convert", "add", "multiply")),
)


def kind_of(name: str) -> str:
    lower = name.lower()
    for kind, needles in KINDS:
        if any(n in lower for n in needles):
            return kind
    return "other"


def newest_trace(trace_dir: str) -> str:
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(
            f"No *.trace.json.gz under {trace_dir!r}: trace with jax.profiler.trace(dir, create_perfetto_trace=True)."
        )
    return max(paths, key=os.path.getmtime)


def summarize(trace_dir: str, top: int = 30) -> dict:
    """{"trace": path, "processes": [{"name", "events", "total_ms", "kinds": {kind: ms}, "top": [...]}, ...]}, the
    processes ordered by summed event time, each with its `top` names by summed time (ms, count)."""
    path = newest_trace(trace_dir)
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process_names = {
        e["pid"]: e.get("args", {}).get("name", str(e["pid"]))
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    by_process: dict = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        cell = by_process[e.get("pid")][e.get("name", "?")]
        cell[0] += float(e["dur"]) / 1e3
        cell[1] += 1
    processes = []
    for pid, names in by_process.items():
        kinds: dict = collections.defaultdict(float)
        for name, (ms, _) in names.items():
            kinds[kind_of(name)] += ms
        ranked = sorted(names.items(), key=lambda item: -item[1][0])
        processes.append(
            {
                "name": process_names.get(pid, str(pid)),
                "events": sum(count for _, count in names.values()),
                "total_ms": sum(ms for ms, _ in names.values()),
                "kinds": dict(sorted(kinds.items(), key=lambda item: -item[1])),
                "top": [{"name": name, "ms": ms, "count": count} for name, (ms, count) in ranked[:top]],
            }
        )
    processes.sort(key=lambda p: -p["total_ms"])
    return {"trace": path, "processes": processes}


def format_summary(summary: dict, processes: int = 3) -> str:
    lines = [f"trace: {summary['trace']}"]
    for p in summary["processes"][:processes]:
        lines.append(f"\n== {p['name']}: {p['events']} events, {p['total_ms']:.1f} ms summed")
        lines.append("   by kind: " + ", ".join(f"{k} {ms:.1f} ms" for k, ms in p["kinds"].items()))
        for row in p["top"]:
            lines.append(f"   {row['ms']:9.2f} ms {row['count']:6d}x  {row['name'][:110]}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace_dir")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--processes", type=int, default=3, help="how many processes (by summed time) to print")
    args = parser.parse_args()
    print(format_summary(summarize(args.trace_dir, args.top), args.processes))


if __name__ == "__main__":
    main()
