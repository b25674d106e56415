"""jaxformer against PyTorch on nanoGPT's CPU recipe (`shakespeare_char_cpu`: 4 layers, 4 heads, d 128, context 64,
batch 12), in one process, interleaved in alternating rounds (this machine's speed drifts by +-15% over minutes).

    python experiments/bench_vs_pytorch.py                        # the steps, ~3 minutes on 2 cores
    python experiments/bench_vs_pytorch.py --profile /tmp/trace   # + where a jaxformer loop step's time goes
    python experiments/bench_vs_pytorch.py --bf16                 # + the recipe in bfloat16 compute, and why
    python experiments/bench_vs_pytorch.py --whole --skip_steps   # the whole commands alone, ~7 minutes
    python experiments/bench_vs_pytorch.py --smoke                # tiny sizes, about a minute

Timed, each from the same initial parameters (jaxformer's, copied into torch: `experiments/torch_reference.py`)
through the same sequence of batches (`data.pipeline.random_windows`), each implementation advancing its own state:
  jaxformer loop step       the training loop's body (jaxformer/training/loop.py): next(grain iterator) ->
                            StepRunner.train_step -> jax.device_get of loss / nll / grad_norm -> float()
  jaxformer prepared batch  StepRunner.train_step on a host batch already taken from the iterator, until the
                            loss is ready (no batching, no metric fetch)
  torch eager               nanoGPT's step: the batch (NumPy, synchronous), zero_grad, forward + loss, backward,
                            clip_grad_norm_, AdamW.step, LambdaLR.step, loss.item()
  torch.compile             the same with torch.compile(model) (nanoGPT's --compile: the model, not the optimizer)
Each round runs `steps / rounds` steps of every implementation, in an order rotated every round; reported: the
median per step over all rounds, and ratios both from those medians and as the median of the per-round ratios.
The losses of the implementations are compared step by step (same init, same data: they should agree closely).

--whole: the whole commands one after the other as subprocesses, with wall time and peak RSS of each process tree
(psutil, every 0.1 s; experiments/bench_data.py's run_measured): `jaxformer train --config shakespeare_char_cpu`
(what `make run` runs on a CPU, into a temporary workdir) and `torch_reference.py` eager and --compile, whose
recipe (initial parameters, tokens) is exported once beforehand by a jax process (timed separately: a PyTorch
user's run has no such step). `make run` also starts python twice to print the backend; that is timed too.
Every torch.compile run starts with an empty inductor cache, as every jaxformer run compiles from scratch.
--profile DIR: a jax.profiler trace (Python tracer off) of `--profile_steps` loop steps, split per step into the
device program (matmuls / other XLA ops, CPU-ms over its threads) and the host work around it (batching,
transfer + dispatch, metric fetch), using the compiled step's HLO to tell matmul ops from the rest
(experiments/trace_summary.py prints the heaviest ops).
--bf16: the recipe with config.model.dtype = "bfloat16" (float32 master weights) against float32, interleaved;
jitted 2048^3 matmuls in float32, bf16 -> bf16 and bf16 -> f32 (preferred_element_type), and at the recipe's
feed-forward shapes; a dense layer's gradient written three ways in bf16; the dots of the compiled float32 and
bf16 steps by operand types; and, where `perf` works, the hottest machine-code symbols (the matmul kernels' names
give their element types and ISA) of the bf16 matmuls and the bf16 step. torch's matmuls for comparison.

Each implementation's turn in a round starts with 2 untimed steps: the other library's worker threads may still
spin, this one's may have gone to sleep. On a loaded machine torch's two OpenMP threads stall each other (every
parallel region waits for both to be scheduled): a torch p90 far above its median says the machine is not quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # experiments/ is not a package
import bench_data  # noqa: E402  (run_measured)
import torch_reference as ref  # noqa: E402
import trace_summary  # noqa: E402

ref.default_tfds_dir()  # before jaxformer reads tfds

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxformer import data  # noqa: E402
from jaxformer.training import sharding  # noqa: E402
from jaxformer.training.optimizers import build_optimizer  # noqa: E402
from jaxformer.training.runner import StepRunner, make_train_step  # noqa: E402
from jaxformer.training.state import merge  # noqa: E402
from jaxformer.training.tasks import make_task  # noqa: E402

LOOP, PREPARED, EAGER, COMPILED = "jaxformer loop step", "jaxformer prepared batch", "torch eager", "torch.compile"


# -- the implementations -------------------------------------------------------------------------------------------


class Jaxformer:
    """The training loop's parts for `config`, built as `training/loop.py` builds them (task, StepRunner, the grain
    iterator with the config's options); the state advances one step per call of `loop_step` / `prepared_step`."""

    def __init__(self, config):
        self.config = config
        self.task = make_task(config)
        self.model_cfg = self.task.model_config()
        self.schedule, self.optimizer = build_optimizer(config, d_model=self.model_cfg.d_model)
        self.mesh = sharding.mesh_from_config(config.get("mesh", {}))
        model_cfg, seed = self.model_cfg, config.seed
        self.runner = StepRunner(
            config.get("parallel", "jit"),
            lambda: self.task.model_class(model_cfg, rngs=nnx.Rngs(seed)),
            self.optimizer,
            self.schedule,
            self.task.loss,
            mesh=self.mesh,
        )
        # Read before the first step, which donates the state's buffers.
        self.initial_arrays = ref.reference_arrays(self.runner.initial_state.params, model_cfg)
        self.decayed = ref.decayed_names(self.runner.initial_state.params, model_cfg, config.optimizer.decay_embeddings)
        self.eval_model = merge(self.runner.graphs.eval, self.runner.initial_state)
        self.state = self.runner.to_devices(self.runner.initial_state)
        rows = sharding.process_rows(self.mesh, config.batch_size)
        grain_options = config.grain.to_dict() if "grain" in config else {}
        self.batches = data.pipeline.iterator(self.task.train_data(rows), **grain_options)
        self.losses: list[float] = []
        self.parts: dict[str, list[float]] = {"batch": [], "step_call": [], "fetch": []}

    def initial_logits(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.eval_model(jnp.asarray(inputs)))

    def loop_step(self, annotate: bool = False) -> float:
        """The loop's body, timed as the loop times it (from before next(batches) to the fetched metrics)."""
        mark = jax.profiler.TraceAnnotation if annotate else lambda name: contextlib.nullcontext()
        t0 = time.perf_counter()
        with mark("bench_batch"):
            batch = next(self.batches)
        t1 = time.perf_counter()
        with mark("bench_step_call"):
            self.state, metrics = self.runner.train_step(self.state, batch)
        t2 = time.perf_counter()
        with mark("bench_fetch"):
            fetched = jax.device_get({k: metrics[k] for k in ("loss", "nll", "grad_norm")})
            loss, _, _ = float(fetched["loss"]), float(fetched["grad_norm"]), float(fetched["nll"])
        t3 = time.perf_counter()
        for key, dt in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.parts[key].append(dt)
        self.losses.append(loss)
        return t3 - t0

    def prepared_step(self) -> float:
        """The step alone: StepRunner.train_step on a batch already taken from the iterator, until the loss is
        ready (the same batch sequence as the loop, so both paths advance one training run)."""
        batch = next(self.batches)
        t0 = time.perf_counter()
        self.state, metrics = self.runner.train_step(self.state, batch)
        jax.block_until_ready(metrics["loss"])
        dt = time.perf_counter() - t0
        self.losses.append(float(metrics["loss"]))
        return dt

    def compiled_step(self):
        """The loop's jitted step compiled again (same function, shardings and arguments: the same HLO), for its
        optimized HLO text and memory analysis."""
        runner = self.runner
        step = make_train_step(
            runner.graphs,
            self.optimizer,
            self.schedule,
            self.task.loss,
            state_shardings=runner.state_shardings,
            batch_sharding=sharding.batch_sharding(self.mesh),
        )
        batch = sharding.shard_process_batch(self.task.train_data()[0], self.mesh)
        with sharding.use_mesh(self.mesh):
            return step.lower(self.state, batch).compile()

    def close(self) -> None:
        self.batches.close()


class Torch:
    """The torch reference's step (torch_reference.train_step) with its own model, optimizer and batch counter."""

    def __init__(self, meta: dict, arrays: dict, train_tokens: np.ndarray, *, compile: bool):
        import torch

        self.meta, self.tokens = meta, train_tokens
        self.model = ref.build_model(meta, arrays)
        self.optimizer, self.scheduler = ref.build_optimizer(self.model, meta)
        self.step_model = torch.compile(self.model) if compile else self.model
        self.losses: list[float] = []

    def step(self) -> float:
        m = self.meta
        t0 = time.perf_counter()
        batch = ref.random_windows(self.tokens, m["batch_size"], m["seq_len"], m["seed"], len(self.losses))
        loss = ref.train_step(self.step_model, self.optimizer, self.scheduler, batch, m["clip_norm"])
        dt = time.perf_counter() - t0
        self.losses.append(loss)
        return dt


# -- timing --------------------------------------------------------------------------------------------------------


def interleaved(impls: dict, *, steps: int, rounds: int, warmup: int, settle: int = 2) -> dict:
    """{name: {"times": [...], "round_medians": [...]}}: `warmup` untimed steps each, then `rounds` rounds of
    steps // rounds timed steps of each implementation, the order rotated every round. Each implementation's
    turn starts with `settle` untimed steps: the other library's worker threads may still be spinning, and
    this one's may have gone to sleep (a single-library process never pays that switch)."""
    for fn in impls.values():
        for _ in range(warmup):
            fn()
    names = list(impls)
    per_round = max(1, steps // rounds)
    out = {name: {"times": [], "round_medians": []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for _ in range(settle):
                impls[name]()
            times = [impls[name]() for _ in range(per_round)]
            out[name]["times"] += times
            out[name]["round_medians"].append(statistics.median(times))
    return out


def summarize_times(timed: dict, ratios: list[tuple[str, str]]) -> dict:
    result = {"per_step_ms": {}, "ratios": {}}
    for name, t in timed.items():
        ms = 1e3 * np.asarray(t["times"])
        result["per_step_ms"][name] = {
            "median": float(np.median(ms)),
            "p10": float(np.percentile(ms, 10)),
            "p90": float(np.percentile(ms, 90)),
            "round_medians": [1e3 * x for x in t["round_medians"]],
            "steps": len(ms),
        }
    for a, b in ratios:
        if a in timed and b in timed:
            per_round = [x / y for x, y in zip(timed[a]["round_medians"], timed[b]["round_medians"], strict=True)]
            result["ratios"][f"{a} / {b}"] = {
                "pooled": result["per_step_ms"][a]["median"] / result["per_step_ms"][b]["median"],
                "median_of_rounds": statistics.median(per_round),
                "rounds_min": min(per_round),
                "rounds_max": max(per_round),
            }
    return result


def loss_agreement(reference: list[float], other: list[float], first: int = 50) -> dict:
    n = min(len(reference), len(other))
    diff = np.abs(np.asarray(reference[:n]) - np.asarray(other[:n]))
    k = min(first, n)
    return {
        "steps_compared": n,
        f"max_abs_diff_first_{first}": float(diff[:k].max()) if k else None,
        "max_abs_diff_all": float(diff.max()) if n else None,
        "at_steps": {s: [reference[s - 1], other[s - 1]] for s in (1, 10, 25, 50, 100, n) if 0 < s <= n},
    }


# -- profile -------------------------------------------------------------------------------------------------------


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
    """Every instruction of an optimized HLO module by name: {"opcode", "type", "operands", "calls",
    "computation"}; and "__computations__": {computation: [instruction names]}."""
    out: dict[str, dict] = {}
    computations: dict[str, list[str]] = {}
    current = None
    header = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
    line_re = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s+=\s+(.*)$")
    for line in hlo_text.splitlines():
        m = header.match(line)
        if m:
            current = m.group(1)
            computations[current] = []
            continue
        m = line_re.match(line)
        if not m or current is None:
            continue
        name, rest = m.groups()
        if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
            depth, end = 0, len(rest)
            for index, ch in enumerate(rest):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    end = index + 1
                    break
            type_str, tail = rest[:end], rest[end:].lstrip()
        else:
            type_str, _, tail = rest.partition(" ")
        opcode = tail.split("(", 1)[0].strip()
        args = tail[len(opcode) + 1 :].split(")", 1)[0]
        out[name] = {
            "opcode": opcode,
            "type": type_str,
            "operands": re.findall(r"%([\w.\-]+)", args),
            "calls": re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)", tail),
            "computation": current,
        }
        computations[current].append(name)
    out["__computations__"] = computations
    return out


def _dtype(type_str: str) -> str:
    return type_str.split("[", 1)[0]


def dots_of(instructions: dict) -> list[dict]:
    """Every dot / convolution (including those inside fusions): operand and result dtypes, and the top-level
    instruction that runs it (a `__ynn_fusion`, a plain `dot`, ...)."""
    caller = {}  # fused computation -> the fusion (or custom call) instruction that runs it
    for name, inst in instructions.items():
        if name != "__computations__" and inst["opcode"] in ("fusion", "custom-call"):
            for comp in inst["calls"]:
                caller[comp] = name
    dots = []
    for name, inst in instructions.items():
        if name == "__computations__" or inst["opcode"] not in ("dot", "convolution"):
            continue
        operand_types = [_dtype(instructions[o]["type"]) for o in inst["operands"] if o in instructions]
        runner = caller.get(inst["computation"], name)
        dots.append(
            {
                "name": name,
                "signature": f"{inst['opcode']}({', '.join(operand_types)}) -> {_dtype(inst['type'])}",
                "run_by": runner,
            }
        )
    return dots


def op_kinds(instructions: dict) -> dict[str, str]:
    """Instruction name -> "matmul" (a dot or convolution, or a fusion / call containing one), "control" (while,
    call, conditional: their own time is loop bookkeeping) or "other"."""
    computations = instructions["__computations__"]

    def has_dot(comp: str, seen=()) -> bool:
        for n in computations.get(comp, []):
            inst = instructions[n]
            if inst["opcode"] in ("dot", "convolution"):
                return True
            if inst["opcode"] in ("fusion", "custom-call") and any(
                has_dot(c, (*seen, comp)) for c in inst["calls"] if c not in seen
            ):
                return True
        return False

    kinds = {}
    for name, inst in instructions.items():
        if name == "__computations__":
            continue
        if inst["opcode"] in ("dot", "convolution") or (
            inst["opcode"] in ("fusion", "custom-call") and any(has_dot(c) for c in inst["calls"])
        ):
            kinds[name] = "matmul"
        elif inst["opcode"] in ("while", "call", "conditional"):
            kinds[name] = "control"
        else:
            kinds[name] = "other"
    return kinds


def profile_loop(jx: Jaxformer, trace_dir: str, steps: int) -> dict:
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
    kinds = op_kinds(hlo_instructions(jx.compiled_step().as_text()))
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


# -- whole commands ------------------------------------------------------------------------------------------------


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


# -- bfloat16 ------------------------------------------------------------------------------------------------------


def matmul_gflops(n: int, case: str, rounds: int = 5) -> float:
    """GFLOP/s of a jitted [n, n] @ [n, n]: "f32", "bf16" (bf16 -> bf16) or "bf16_f32out" (bf16 operands,
    preferred_element_type=float32)."""
    dtype = jnp.float32 if case == "f32" else jnp.bfloat16
    preferred = jnp.float32 if case == "bf16_f32out" else None
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=preferred))
    dot(a, b).block_until_ready()
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
    inst = hlo_instructions(text)
    return {
        "dots": sorted({d["signature"] for d in dots_of(inst)}),
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
    config = ref.recipe_config(args.config, **overrides_from(args))
    config.model.dtype = "bfloat16" if target == "step_bf16" else "float32"
    jx = Jaxformer(config)
    for _ in range(100 if not args.smoke else 10):
        jx.prepared_step()
    jx.close()


def bf16_report(args, config) -> dict:
    """The recipe in bfloat16 compute against float32 (interleaved), and what XLA:CPU does with bf16 dots."""
    config16 = copy.deepcopy(config)
    config16.model.dtype = "bfloat16"
    jx32, jx16 = Jaxformer(config), Jaxformer(config16)
    timed = interleaved(
        {"float32 loop step": jx32.loop_step, "bfloat16 loop step": jx16.loop_step},
        steps=args.bf16_steps,
        rounds=args.rounds,
        warmup=args.warmup,
    )
    timing = summarize_times(timed, [("bfloat16 loop step", "float32 loop step")])
    hlo = {}
    for name, jx in (("float32", jx32), ("bfloat16", jx16)):
        inst = hlo_instructions(jx.compiled_step().as_text())
        sigs: dict[str, int] = {}
        runners: dict[str, int] = {}
        for d in dots_of(inst):
            sigs[d["signature"]] = sigs.get(d["signature"], 0) + 1
            kind = "ynn_fusion" if d["run_by"].startswith("ynn_fusion") else inst[d["run_by"]]["opcode"]
            runners[kind] = runners.get(kind, 0) + 1
        converts = sum(1 for k, v in inst.items() if k != "__computations__" and v["opcode"] == "convert")
        hlo[name] = {"dots_by_signature": sigs, "dots_run_by": runners, "convert_instructions": converts}
    losses = loss_agreement(jx32.losses, jx16.losses)
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
        "cpu_flags": cpu_flags(),
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
        dots = sorted(d["signature"] for d in dots_of(hlo_instructions(compiled.as_text())))
        out[name] = {"us": 1e6 * statistics.median(times), "dots": dots}
    return out


def small_matmul_us(m: int, k: int, n: int, case: str, calls: int = 200) -> float:
    dtype = jnp.float32 if case == "f32" else jnp.bfloat16
    preferred = jnp.float32 if case == "bf16_f32out" else None
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=preferred))
    dot(a, b).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = dot(a, b)
        out.block_until_ready()
        times.append((time.perf_counter() - t0) / calls)
    return 1e6 * statistics.median(times)


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(f for f in line.split(":", 1)[1].split() if "bf16" in f or "amx" in f)
    except OSError:
        pass
    return []


# -- main ----------------------------------------------------------------------------------------------------------


def overrides_from(args) -> dict:
    return {"smoke": args.smoke, "steps": args.recipe_steps, "text": args.text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shakespeare_char_cpu", help="a jaxformer recipe's name or .py file")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per implementation, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each implementation first")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (torch_reference.SMOKE), few steps")
    parser.add_argument("--text", help="a text file instead of tfds (its last 10%% validates)")
    parser.add_argument("--recipe_steps", type=int, help="the recipe's num_steps (schedule length; --whole's run)")
    parser.add_argument("--no_compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--whole", action="store_true", help="also time the whole commands as subprocesses")
    parser.add_argument("--skip_steps", action="store_true", help="leave out the interleaved step benchmark")
    parser.add_argument("--repeats", type=int, default=1, help="--whole: run each command this many times")
    parser.add_argument("--profile", metavar="DIR", help="also trace jaxformer loop steps into DIR and split them")
    parser.add_argument("--profile_steps", type=int, default=20)
    parser.add_argument("--bf16", action="store_true", help="also the recipe in bfloat16 compute, and why")
    parser.add_argument("--bf16_steps", type=int, default=200, help="--bf16: timed steps per dtype")
    parser.add_argument("--no_perf", action="store_true", help="--bf16: skip the perf record evidence")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--perf_target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.perf_target:
        run_perf_target(args.perf_target, args)
        return
    if args.smoke:
        args.steps, args.rounds, args.warmup, args.bf16_steps, args.profile_steps = 8, 2, 2, 8, 4
    import torch

    torch.set_num_threads(args.threads)
    config = ref.recipe_config(args.config, **overrides_from(args))
    result: dict = {
        "config": config.name,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "batch": [config.batch_size, config.data.seq_len],
    }

    if not args.skip_steps:
        steps(args, config, result)
    if args.profile:
        jx = Jaxformer(config)
        result["profile"] = profile_loop(jx, args.profile, args.profile_steps)
        jx.close()
        print("\n" + trace_summary.format_summary(result["profile"]["trace_summary"], processes=1))
        print("\n" + format_breakdown(result["profile"]))

    if args.bf16:
        result["bf16"] = bf16_report(args, config)
        print_bf16(result["bf16"])

    if args.whole:
        out_dir = tempfile.mkdtemp(prefix="bench_vs_pytorch_")
        print(f"\nWhole commands, {config.num_steps} steps each, one after the other (work files in {out_dir}):")
        result["whole"] = whole(args, ref.recipe_overrides(**overrides_from(args)), config, out_dir)
        print_whole(result["whole"])
        shutil.rmtree(out_dir, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)


def steps(args, config, result: dict) -> None:
    """The interleaved step benchmark (the module doc), into `result`."""
    jx = Jaxformer(config)
    meta = ref.recipe_meta(config, jx.model_cfg, jx.task.tokenizer)
    meta["decayed"] = jx.decayed
    train_tokens = np.asarray(jx.task.train_tokens.tokens)
    eager = Torch(meta, jx.initial_arrays, train_tokens, compile=False)
    check = ref.random_windows(train_tokens, config.batch_size, config.data.seq_len, config.seed, 0)
    forward = float(np.max(np.abs(ref_logits(eager.model, check["inputs"]) - jx.initial_logits(check["inputs"]))))
    assert forward < 1e-4, f"torch and jaxformer logits differ by {forward:.2e}"
    result["forward_max_abs_diff"] = forward
    print(f"{config.name}: initial logits of torch and jaxformer agree to {forward:.1e} (max abs difference)")
    impls = {LOOP: jx.loop_step, PREPARED: jx.prepared_step, EAGER: eager.step}
    compiled = None
    if not args.no_compile:
        compiled = Torch(meta, jx.initial_arrays, train_tokens, compile=True)
        impls[COMPILED] = compiled.step
    t0 = time.perf_counter()
    timed = interleaved(impls, steps=args.steps, rounds=args.rounds, warmup=args.warmup)
    result["timing_seconds"] = time.perf_counter() - t0
    pairs = [(LOOP, EAGER), (LOOP, COMPILED), (PREPARED, EAGER), (PREPARED, COMPILED), (COMPILED, EAGER)]
    result.update(summarize_times(timed, pairs))
    result["loop_parts_ms"] = {k: 1e3 * statistics.median(v) for k, v in jx.parts.items()}
    result["losses"] = {f"jaxformer vs {EAGER}": loss_agreement(jx.losses, eager.losses)}
    if compiled is not None:
        result["losses"][f"jaxformer vs {COMPILED}"] = loss_agreement(jx.losses, compiled.losses)
        result["losses"][f"{EAGER} vs {COMPILED}"] = loss_agreement(eager.losses, compiled.losses)
    print_steps(result, config)
    jx.close()


def ref_logits(model, inputs: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(inputs).long())
    model.train()
    return logits.numpy()


def print_steps(result: dict, config) -> None:
    per = result["per_step_ms"]
    print(
        f"\nTrain step, {config.batch_size} x {config.data.seq_len} tokens, median of "
        f"{per[LOOP]['steps']} steps per implementation in {len(per[LOOP]['round_medians'])} interleaved rounds:"
    )
    print("| implementation | ms / step | p10 | p90 | per-round medians |")
    print("|---|---:|---:|---:|---|")
    for name, p in per.items():
        rounds = ", ".join(f"{x:.1f}" for x in p["round_medians"])
        print(f"| {name} | {p['median']:.2f} | {p['p10']:.2f} | {p['p90']:.2f} | {rounds} |")
    print("\n| ratio | pooled medians | median of per-round ratios (min-max) |")
    print("|---|---:|---:|")
    for name, r in result["ratios"].items():
        spread = f"{r['rounds_min']:.3f}-{r['rounds_max']:.3f}"
        print(f"| {name} | {r['pooled']:.3f} | {r['median_of_rounds']:.3f} ({spread}) |")
    parts = result["loop_parts_ms"]
    print(
        f"\njaxformer loop step parts (medians, no profiler): next(batches) {parts['batch']:.2f} ms, "
        f"train_step call {parts['step_call']:.2f} ms, device_get + float {parts['fetch']:.2f} ms (waits for the step)"
    )
    for name, agreement in result["losses"].items():
        first = next(v for k, v in agreement.items() if k.startswith("max_abs_diff_first"))
        print(
            f"losses, {name}: max |difference| {first:.2e} over the first 50 steps, "
            f"{agreement['max_abs_diff_all']:.2e} over {agreement['steps_compared']} steps; at steps "
            f"{agreement['at_steps']}"
        )


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
    print(f"  CPU flags: {b['cpu_flags']}; XLA_FLAGS={b['xla_flags_env']!r}")
    for target, p in b.get("perf", {}).items():
        if "error" in p:
            print(f"  perf, {target}: {p['error']}")
            continue
        dots = ", ".join(f"{r['symbol']} {r['percent']:.1f}%" for r in p["dot_kernels"][:3]) or "none"
        print(f"  perf, {target}: matmul kernels {dots}; top symbol {p['top'][0]['symbol']} {p['top'][0]['percent']}%")


if __name__ == "__main__":
    main()
