"""The whole commands of nanoGPT's CPU recipe (`shakespeare_char_cpu`), jaxformer's and PyTorch's, one after the other
as subprocesses: wall time and peak RSS of each process tree (psutil, every 0.1 s; experiments/bench_data.py's
run_measured).

    python experiments/bench_run_vs_pytorch.py --repeats 1     # ~5 minutes on 2 cores (2000 steps each)
    python experiments/bench_run_vs_pytorch.py --smoke         # tiny sizes, 20 steps each

The commands: `jaxformer train --config shakespeare_char_cpu` (what `make run` runs on a CPU, into a temporary
workdir) and `torch_reference.py` eager and --compile (the same model, initial parameters, optimizer and batches:
experiments/torch_reference.py), whose recipe (initial parameters, tokens) is exported once beforehand by a jax
process (timed separately: a PyTorch user's run has no such step). `make run` also starts python twice to print the
backend; that is timed too. Every torch.compile run starts with an empty inductor cache, as every jaxformer run
compiles from scratch. Each run is split into phases: jaxformer's from the times at which its metrics.jsonl grew,
torch's from its summary. The record names the CPU and its vector extensions (experiments/host.py).

The other studies of the recipe against PyTorch: bench_step_vs_pytorch.py (the train step, interleaved),
profile_loop_step.py (where a loop step's time goes), bench_bf16_cpu.py (bfloat16 compute).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import bench_data  # run_measured
import recipe_bench as rb
import torch_reference as ref

HERE = os.path.dirname(os.path.abspath(__file__))


def watch_rows(path: str, stop: threading.Event, t_start: float, out: list) -> None:
    """Appends (seconds since t_start, rows) whenever `path` (a metrics.jsonl) gains lines."""
    seen = 0
    while not stop.is_set():
        try:
            with open(path) as f:
                n = sum(1 for line in f if line.strip())
        except OSError:
            n = 0
        if n > seen:
            out.append((time.perf_counter() - t_start, n))
            seen = n
        time.sleep(0.05)


def in_loop_extra(marks: list, rows: list[dict], step_ms: float, config) -> dict:
    """Seconds the loop spent beyond its steps between consecutive metrics rows (the times at which
    metrics.jsonl grew, less the steps in between at the median step time), by what happened in between:
    an evaluation (before a row at an eval step), a checkpoint save (after a row at a checkpoint step)."""
    extra: dict[str, float] = {}
    for (t0, n0), (t1, n1) in itertools.pairwise(marks):
        before, after = rows[n0 - 1]["step"], rows[n1 - 1]["step"]
        seconds = t1 - t0 - (after - before) * step_ms / 1e3
        what = [
            w
            for w, hit in (
                ("eval", after % config.eval_every == 0),
                ("checkpoint", before % config.checkpoint_every == 0),
            )
            if hit
        ]
        key = " + ".join(what) or "logging only"
        extra[key] = extra.get(key, 0.0) + seconds
    return extra


def whole(args, overrides: dict, config, out_dir: str) -> dict:
    """The whole commands (see the module doc), each measured as a process tree."""
    python = sys.executable
    jaxformer_bin = os.path.join(os.path.dirname(python), "jaxformer")
    script = os.path.join(HERE, "torch_reference.py")
    flags = {**overrides, "warmup_steps": config.warmup_steps}
    ref_flags = ["--config", args.config] + (["--smoke"] if args.smoke else [])
    ref_flags += [f"--steps={config.num_steps}", f"--threads={args.threads}"]
    ref_flags += [f"--text={args.text}"] if args.text else []
    npz = os.path.join(out_dir, "recipe.npz")
    result: dict = {"steps": config.num_steps, "runs": []}
    export = bench_data.run_measured([python, script, "--export", npz, *ref_flags])
    if export["returncode"]:
        sys.exit(f"export failed:\n{export['output_tail']}")
    result["export"] = {k: export[k] for k in ("seconds", "peak_rss_bytes")}
    preamble = (
        "CONFIG=$(PY -c \"import jax; print('shakespeare_char_cpu' if jax.default_backend() == 'cpu' else "
        "'shakespeare_char')\"); echo \"backend $(PY -c 'import jax; print(jax.default_backend())')\""
    ).replace("PY", python)
    pre = bench_data.run_measured(["bash", "-c", preamble])
    result["make_run_preamble_s"] = pre["seconds"]
    for repeat in range(args.repeats):
        for impl in ("jaxformer", "torch eager", "torch.compile"):
            if impl == "torch.compile" and args.no_compile:
                continue
            run_dir = os.path.join(out_dir, f"{impl.replace(' ', '_').replace('.', '_')}_{repeat}")
            if impl == "jaxformer":
                cmd = [jaxformer_bin, "train", "--config", args.config, "--workdir", run_dir]
                cmd += [f"--config.{k}={v}" for k, v in flags.items()]
            else:
                cmd = [python, script, "--init", npz, "--out_dir", run_dir, *ref_flags]
                cmd += ["--summary_json", os.path.join(out_dir, f"summary_{len(result['runs'])}.json")]
                cmd += ["--compile"] if impl == "torch.compile" else []
            stop, marks = threading.Event(), []
            watcher = threading.Thread(
                target=watch_rows,
                args=(os.path.join(run_dir, "metrics.jsonl"), stop, time.perf_counter(), marks),
                daemon=True,
            )
            watcher.start()
            # jaxformer has no persistent compilation cache: torch.compile starts cold too (its own cache dir).
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=run_dir + "_inductor_cache")
            run = bench_data.run_measured(cmd, env=env)
            stop.set()
            watcher.join()
            if run["returncode"]:
                sys.exit(f"{impl} failed:\n{run['output_tail']}")
            row = {"impl": impl, "repeat": repeat, "seconds": run["seconds"], "peak_rss_bytes": run["peak_rss_bytes"]}
            if impl == "jaxformer":
                rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
                step_ms = statistics.median(r["step_ms"] for r in rows if r.get("step_ms"))
                row.update(
                    val_loss=rows[-1]["val_loss"],
                    val_losses={r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
                    step_ms_median=step_ms,
                    first_row_s=marks[0][0] if marks else None,
                    last_row_s=marks[-1][0] if marks else None,
                    steps_s=config.num_steps * step_ms / 1e3,
                    in_loop_extra_s=in_loop_extra(marks, rows, step_ms, config),
                )
                row["outside_steps_s"] = row["seconds"] - row["steps_s"]
            else:
                with open(cmd[cmd.index("--summary_json") + 1]) as f:
                    summary = json.load(f)
                row.update({k: summary[k] for k in ("val_loss", "val_losses", "step_ms_median")})
                row.update({k: summary[k] for k in ("setup_s", "train_loop_s", "eval_s", "checkpoint_s", "sample_s")})
                row["steps_s"] = config.num_steps * summary["step_ms_median"] / 1e3
                row["outside_steps_s"] = row["seconds"] - row["steps_s"]
            result["runs"].append(row)
            print(
                f"  {impl:14s} {row['seconds']:7.1f} s  peak RSS {row['peak_rss_bytes'] / 2**20:6.0f} MiB  "
                f"val_loss {row['val_loss']:.4f}  median step {row['step_ms_median']:.1f} ms",
                flush=True,
            )
    for impl in ("torch eager", "torch.compile"):
        ours = [r for r in result["runs"] if r["impl"] == "jaxformer"]
        theirs = [r for r in result["runs"] if r["impl"] == impl]
        if ours and theirs:
            wall_ours = statistics.median(r["seconds"] for r in ours)
            wall_theirs = statistics.median(r["seconds"] for r in theirs)
            result[f"jaxformer / {impl}"] = {
                "wall": wall_ours / wall_theirs,
                "wall_with_make_preamble": (wall_ours + result["make_run_preamble_s"]) / wall_theirs,
                "peak_rss": statistics.median(r["peak_rss_bytes"] for r in ours)
                / statistics.median(r["peak_rss_bytes"] for r in theirs),
            }
    return result


def print_whole(w: dict) -> None:
    for r in w["runs"]:
        if r["impl"] == "jaxformer":
            # From the times at which metrics.jsonl grew: startup + compile + the first log_every steps; the
            # logged steps (with evaluations and checkpoints); after the last row (final checkpoint, samples, plot).
            last = r["last_row_s"] or 0.0
            print(
                f"  jaxformer phases: first metrics row at {r['first_row_s'] or 0.0:.1f} s, last at {last:.1f} s, "
                f"then {r['seconds'] - last:.1f} s to exit; {w['steps']} x median step = {r['steps_s']:.1f} s, "
                f"the rest {r['outside_steps_s']:.1f} s"
            )
            extra = ", ".join(f"{k} {v:.1f} s" for k, v in r["in_loop_extra_s"].items())
            print(f"  jaxformer time beyond the steps between metrics rows: {extra}")
        else:
            print(
                f"  {r['impl']} phases: setup {r['setup_s']:.1f} s, loop {r['train_loop_s']:.1f} s (of which eval "
                f"{r['eval_s']:.1f} s, checkpoints {r['checkpoint_s']:.1f} s), sampling {r['sample_s']:.1f} s; "
                f"{w['steps']} x median step = {r['steps_s']:.1f} s, the rest {r['outside_steps_s']:.1f} s"
            )
    print(f"  (export of the recipe for torch, not counted: {w['export']['seconds']:.1f} s)")
    print(f"  make run's preamble (2 x python -c 'import jax ...'): {w['make_run_preamble_s']:.1f} s")
    for key in ("jaxformer / torch eager", "jaxformer / torch.compile"):
        if key in w:
            r = w[key]
            print(
                f"  {key}: wall {r['wall']:.2f}x (with make's preamble {r['wall_with_make_preamble']:.2f}x), "
                f"peak RSS {r['peak_rss']:.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rb.add_recipe_arguments(parser)
    parser.add_argument("--no_compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=1, help="run each command this many times")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    config = rb.recipe_config(args)
    result = rb.record(config)
    out_dir = tempfile.mkdtemp(prefix="bench_run_vs_pytorch_")
    print(f"\nWhole commands, {config.num_steps} steps each, one after the other (work files in {out_dir}):")
    result["whole"] = whole(args, ref.recipe_overrides(**rb.overrides_from(args)), config, out_dir)
    print_whole(result["whole"])
    shutil.rmtree(out_dir, ignore_errors=True)
    rb.write_json(args.json, result)


if __name__ == "__main__":
    main()
