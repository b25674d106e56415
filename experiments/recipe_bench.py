"""What the studies of jaxformer against PyTorch on nanoGPT's CPU recipe share (not a script).

The studies, one script each (`shakespeare_char_cpu`: 4 layers, 4 heads, d 128, context 64, batch 12):
  bench_step_vs_pytorch.py   the train step, jaxformer's and torch's, interleaved in one process
  bench_run_vs_pytorch.py    the whole commands (`jaxformer train`, torch_reference.py): wall time and peak RSS
  profile_loop_step.py       where a jaxformer loop step's time goes (a jax.profiler trace, split per step)
  bench_bf16_cpu.py          the recipe in bfloat16 compute against float32, and why (the matmul kernels)

Here: the recipe's command-line options and config, the record's header (which CPU, with its vector extensions:
experiments/host.py), jaxformer's loop step and torch's step each advancing its own training run, interleaved
timing in alternating rounds (this machine's speed drifts by +-15% over minutes), and the loss comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # experiments/ is not a package
import host  # noqa: E402
import torch_reference as ref  # noqa: E402

ref.default_tfds_dir()  # before jaxformer reads tfds

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxformer import data, sharding  # noqa: E402
from jaxformer.training import StepRunner, build_run, make_train_step, merge  # noqa: E402

LOOP, PREPARED, EAGER, COMPILED = "jaxformer loop step", "jaxformer prepared batch", "torch eager", "torch.compile"


# -- the recipe and the record -------------------------------------------------------------------------------------


def add_recipe_arguments(parser) -> None:
    """The options every study takes: which recipe, at which size, on which text."""
    parser.add_argument("--config", default="shakespeare_char_cpu", help="a jaxformer recipe's name or .py file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (torch_reference.SMOKE), few steps")
    parser.add_argument("--text", help="a text file instead of tfds (its last 10%% validates)")
    parser.add_argument("--recipe_steps", type=int, help="the recipe's num_steps (schedule length; a whole run's)")
    parser.add_argument("--json", help="write the results here")


def overrides_from(args) -> dict:
    return {"smoke": args.smoke, "steps": args.recipe_steps, "text": args.text}


def recipe_config(args):
    return ref.recipe_config(args.config, **overrides_from(args))


def record(config, *, with_torch: bool = True) -> dict:
    """The header of every study's record: the recipe, and the machine (CPU model and vector extensions first)."""
    info = host.cpu_info()
    machine = {
        "host": host.describe(),
        "cpu": info["model"],
        "vector_extensions": host.vector_extensions(info["flags"]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }
    if with_torch:
        import torch

        machine.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    print(f"{machine['host']}" + (f", torch {machine['torch']}" if with_torch else ""))
    return {"config": config.name, "machine": machine, "batch": [config.batch_size, config.data.seq_len]}


def write_json(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)


# -- the implementations -------------------------------------------------------------------------------------------


class Jaxformer:
    """The training loop's parts for `config`, built as `training/loop.py` builds them (`build_run`, StepRunner, the
    grain iterator with the config's options); the state advances one step per call of `loop_step` /
    `prepared_step`."""

    def __init__(self, config):
        run = build_run(config)
        self.config = config = run.config  # completed with its defaults
        self.task, self.model_cfg = run.task, run.model_config
        self.schedule, self.optimizer = run.schedule, run.optimizer
        self.mesh = sharding.mesh_from_config(config.mesh)
        self.runner = StepRunner(
            config.parallel, run.make_model, self.optimizer, self.schedule, self.task.loss, mesh=self.mesh
        )
        # Read before the first step, which donates the state's buffers.
        self.initial_arrays = ref.reference_arrays(self.runner.initial_state.params, self.model_cfg)
        self.decayed = ref.decayed_names(
            self.runner.initial_state.params, self.model_cfg, config.optimizer.decay_embeddings
        )
        self.eval_model = merge(self.runner.graphs.eval, self.runner.initial_state)
        self.state = self.runner.to_devices(self.runner.initial_state)
        rows = sharding.process_rows(self.mesh, config.batch_size)
        self.batches = data.pipeline.iterator(self.task.train_data(rows), **config.grain.to_dict())
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
