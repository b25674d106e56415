"""train_and_evaluate(config, workdir): the main job, one loop for every task (`jaxformer.training.tasks`).

Resumes from the newest intact checkpoint in `workdir/checkpoints` (model, optimizer, RNG counters and the grain
input iterator's position; checksums verified, damaged ones moved aside), so a run that is killed and restarted
continues with exactly the batches and random numbers of an uninterrupted one. Ctrl-C and SIGTERM save the step
they stop at; docs/training.md, "Faults and recovery", lists every fault and exit code. Writes `metrics.jsonl` (one
JSON object per log line), TensorBoard event files under `tensorboard/`, `loss.png`, `samples.txt` (what the
trained model produces) and the task's assets (a language model's `tokenizer.json`) to the workdir; a LoRA run
(config.lora.rank > 0) also its adapters (`adapter/`, peft's layout) and optionally the merged model (`merged/`).
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxformer import checks, data, lora, pretrained, sharding
from jaxformer.models import GPT, ROUTER_METRICS
from jaxformer.training import defaults, multihost, plots
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.metrics import MetricsLog, perplexity
from jaxformer.training.run import EXECUTION_FIELDS, build_run, check_lora_config
from jaxformer.training.runner import StepRunner
from jaxformer.training.state import merge, with_base


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the parameters became NaN or Inf; the newest checkpoint predates it."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` into `workdir` (resuming from its newest intact checkpoint); returns the final metrics row.

    Raises NonFiniteLossError when the run diverges, KeyboardInterrupt after Ctrl-C and Terminated after SIGTERM
    (both once the step they stopped at is saved), and ValueError for a config that is invalid or that changes the
    architecture of the run being resumed.
    """
    config = defaults.complete(config)
    multihost.initialize(config)  # before anything touches a device
    check_loop_config(config)
    check_lora_config(config)
    mesh = sharding.mesh_from_config(config.mesh)  # a bad mesh fails here, before anything is written
    sharding.check_batch_size(config.batch_size, mesh)
    os.makedirs(workdir, exist_ok=True)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints) as checkpoints:
        start = checkpoints.latest_intact_step(log=_say if multihost.is_leader() else lambda _: None)
        if start is None and checkpoints.has_damaged():  # an unfinished first save alone is a fresh start
            raise FileNotFoundError(
                f"No intact checkpoint in {checkpoints.directory}: the damaged ones are in "
                f"{checkpoints.damaged_directory}. Nothing was overwritten. To start this run over, move "
                f"{workdir} away (or delete {checkpoints.damaged_directory}) and run again."
            )
        if start is not None:
            check_resume_config(checkpoints.restore_config(start), config, step=start)
        return _train(config, workdir, mesh, checkpoints, start)


def _train(config, workdir: str, mesh, checkpoints: Checkpointer, start: int | None) -> dict:
    leader = multihost.is_leader()
    run = build_run(config)
    check_context_config(config, mesh, run.model_config)
    task = run.task
    if leader:
        task.save_assets(workdir)
    runner = StepRunner(
        config.parallel,
        run.make_model,
        run.optimizer,
        run.schedule,
        task.loss,
        mesh=mesh,
        sequence_layout=config.sequence_layout,
    )
    graphs, state = runner.graphs, runner.initial_state
    # A fresh run from pretrained weights (a resume restores its own); a LoRA run's frozen base, always.
    params = run.initial_params(runner.state_mesh) if start is None or run.is_lora else None
    if params is not None:
        state = jax.device_put(with_base(state, params), runner.state_shardings)
        if leader:
            print(f"Initialised the {'frozen base' if run.is_lora else 'parameters'} from {config.init_from}.")
    if run.is_lora and leader:
        trained, frozen = (sum(x.size for x in jax.tree.leaves(p)) for p in (state.params, state.frozen))
        print(f"LoRA: training {trained:,} adapter parameters; the {frozen:,} base parameters are frozen.")
    # What a task computes once from the starting model (DPO's reference log-probs); a resume reads it back.
    starting = state
    task.prepare(workdir, (lambda: merge(graphs.eval, runner.to_host(starting))) if start is None else None)
    # Each process reads only its rows of every global batch (the pipeline is deterministic in (seed, step)).
    rows = sharding.process_rows(mesh, config.batch_size)
    train_data = task.train_data(rows)
    if jax.process_count() > 1:
        print(
            f"Process {jax.process_index()} of {jax.process_count()} reads rows {rows.start}:{rows.stop} of every "
            f"batch of {config.batch_size}."
        )
    batches = data.pipeline.iterator(train_data, **config.grain.to_dict())
    try:
        if start is not None:
            state, _ = checkpoints.restore(state, start, data_iterator=batches)
            if leader:
                print(f"Resumed from the checkpoint at step {start} in {checkpoints.directory}.")
    except BaseException:
        batches.close()
        raise
    start = int(state.step)
    state = runner.to_devices(state)
    log = MetricsLog(workdir, resume_step=start, writes=leader)

    def stop(what: str, step: int) -> NonFiniteLossError:
        newest = checkpoints.latest_step()
        saved = (
            f"Nothing was saved after step {newest}, the newest checkpoint in {checkpoints.directory}"
            if newest is not None
            else f"No checkpoint was saved yet (the first is due at step {config.checkpoint_every})"
        )
        return NonFiniteLossError(
            f"{what} at step {step}. {saved}; lower learning_rate, raise warmup_steps or set optimizer.clip_norm, "
            "then run again (it resumes from the newest checkpoint)."
        )

    def save(step: int) -> None:
        host_state = runner.to_host(state)
        # A finite loss can still be followed by an update that overflows: never checkpoint such parameters.
        if not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(host_state.params)):
            raise stop("Parameters are not finite", step)
        if step not in checkpoints.all_steps():
            checkpoints.save(step, host_state, data_iterator=batches, config=config.to_dict())

    tokens_per_step = task.tokens_per_batch
    step_times: list[float] = []
    train_losses: list[float] = []
    train_nlls: list[float] = []  # the unsmoothed loss, for perplexity
    task_metrics: list[dict] = []  # the task's own (Task.train_metrics), averaged like the loss
    row: dict = {}
    progress = _progress(start, config.num_steps, enabled=leader)
    interrupted = _InterruptFlag()
    try:
        for step in range(start + 1, config.num_steps + 1):
            t0 = time.perf_counter()
            state, metrics = runner.train_step(state, next(batches))
            # Fetching waits for the step, so the wall time below is the step's.
            # The task's own metrics, and a mixture of experts' routing (GPT.router_losses) when the model has one.
            reported = (*task.train_metrics, *(k for k in ROUTER_METRICS if k in metrics))
            fetched = jax.device_get({k: metrics[k] for k in ("loss", "nll", "grad_norm", *reported)})
            loss, grad_norm = float(fetched["loss"]), float(fetched["grad_norm"])
            if step > start + 1:  # the first step of a process compiles
                step_times.append(time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise stop(f"Training loss is {loss}", step)
            if not math.isfinite(grad_norm):
                raise stop(f"Gradient norm is {grad_norm}", step)
            train_losses.append(loss)
            train_nlls.append(float(fetched["nll"]))
            task_metrics.append({k: float(fetched[k]) for k in reported})
            progress.update(1)
            last = step == config.num_steps
            if step % config.log_every == 0 or step % config.eval_every == 0 or last:
                # None (JSON null) when every step since the last line compiled: no timing to report.
                step_ms = 1e3 * statistics.median(step_times) if step_times else None
                row = {
                    "step": step,
                    "train_loss": float(np.mean(train_losses)),
                    "train_perplexity": perplexity(float(np.mean(train_nlls))),
                    "learning_rate": float(metrics["learning_rate"]),
                    "grad_norm": float(metrics["grad_norm"]),
                    "accuracy": float(metrics["accuracy"]),
                    "step_ms": step_ms,
                    "tokens_per_s": tokens_per_step / (step_ms / 1e3) if step_times else None,
                    **{f"train_{k}": float(np.mean([m[k] for m in task_metrics])) for k in reported},
                }
                if step % config.eval_every == 0 or last:
                    host_state = runner.to_host(state)
                    row.update(task.evaluate(runner.eval_step, host_state, merge(graphs.eval, host_state)))
                log.write(row)
                progress.set_postfix(
                    loss=f"{row['train_loss']:.3f}",
                    lr=f"{row['learning_rate']:.2e}",
                    tok_s=f"{row['tokens_per_s'] or 0:.0f}",
                )
                step_times, train_losses, train_nlls, task_metrics = [], [], [], []
            if step % config.checkpoint_every == 0 or last:
                save(step)
            if interrupted.signal is not None:  # acted on between steps, where `state` is complete
                save(step)
                progress.close()  # before the message, which must be the last thing printed
                what = "Interrupted" if interrupted.signal == signal.SIGINT else "Terminated (SIGTERM)"
                print(
                    f"\n{what}: saved step {step} in {checkpoints.directory}; run the same command to resume.",
                    flush=True,
                )
                raise KeyboardInterrupt if interrupted.signal == signal.SIGINT else Terminated(step)
    finally:
        interrupted.restore()
        batches.close()  # grain's reading threads (and worker processes)
        progress.close()
        log.close()

    host_state = runner.to_host(state)
    samples = task.samples(merge(graphs.eval, host_state))  # every process: it may run sharded code
    if leader:
        plots.loss_curve(log.history, os.path.join(workdir, "loss.png"), title=config.name)
        with open(os.path.join(workdir, "samples.txt"), "w") as f:
            f.write(samples)
    if run.is_lora:
        _export_lora(run, merge(graphs.eval, host_state), workdir)
    return row


ADAPTER_DIR, MERGED_DIR = "adapter", "merged"


def _export_lora(run, model, workdir: str) -> None:
    """A LoRA run's results for other tools: `workdir/adapter/` in peft's layout (lora.save_adapter, naming
    config.init_from as the base; peft's layout is for decoders, GPT) and, with config.lora.export_merged,
    `workdir/merged/`: the base with the adapters folded in (lora.merge) as a Hugging Face checkpoint, with the
    task's tokenizer when it is one. Written by the leader, once it holds the whole model (gathered on multi-host)."""
    config, leader = run.config, multihost.is_leader()
    if not config.init_from:  # random base weights: an adapter is of no use without them
        return
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        graph, params, rest = nnx.split(model, nnx.Param, ...)  # the parameters are all that is written
        model = nnx.merge(graph, multihost_utils.process_allgather(params, tiled=True), rest)
    if not leader:
        return
    if isinstance(model, GPT):
        path = lora.save_adapter(model, os.path.join(workdir, ADAPTER_DIR), base_model_name_or_path=config.init_from)
        print(f"LoRA: wrote the adapters to {path} (`jaxformer sample --pretrained BASE --adapter DIR` reads them).")
    if config.lora.export_merged:
        tokenizer = getattr(run.task, "tokenizer", None)
        path = pretrained.save_pretrained(
            lora.merge(model),
            os.path.join(workdir, MERGED_DIR),
            tokenizer=tokenizer if isinstance(tokenizer, data.HFTokenizer) else None,
        )
        print(f"LoRA: wrote the merged model to {path}.")


class Terminated(Exception):
    """SIGTERM (what schedulers and preemptible VMs send) stopped the run; the step it stopped at is saved."""

    exit_code = 143  # 128 + SIGTERM, what the shell reports for a process SIGTERM killed

    def __init__(self, step: int):
        super().__init__(f"terminated by SIGTERM after saving step {step}")
        self.step = step


class _InterruptFlag:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a flag the loop checks between steps; a second Ctrl-C
    interrupts at once.

    An interrupt raised inside a jitted step could leave `state` pointing at donated buffers, so the loop only
    stops where it can save a consistent checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self.previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.signal = self.signal or signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# What a resumed run may change in config.model: how the step computes, not the state it restores (scan_layers
# stacks the layers' parameters, so it may not). The schedule, the step count and the logging may change too.
_RESUMABLE_MODEL_FIELDS = tuple(f for f in EXECUTION_FIELDS if f != "scan_layers")
_ARCHITECTURE_KEYS = (
    "task",
    "init_from",
    "optimizer.name",
    "data.tokenizer",
    "data.vocab_size",
    "data.seq_len",
    # LoRA: which parameters train, their shapes and what they compute; the base weights are read again.
    "lora.rank",
    "lora.alpha",
    "lora.targets",
    "lora.use_rslora",
    "lora.base_dtype",
)


def check_resume_config(saved: dict, config: ml_collections.ConfigDict, *, step: int) -> None:
    """Refuses (ValueError naming each field, saved and requested) a config that changes the architecture of the
    run saved at `step`; prints the other fields that changed (e.g. num_steps), which a resume may change."""
    # Both completed with today's defaults: a key added since the save is not a change.
    before, now = _flatten(defaults.complete(saved).to_dict()), _flatten(defaults.complete(config).to_dict())
    changed = {k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}

    def structural(key: str) -> bool:
        if key.startswith("model."):
            return key.removeprefix("model.") not in _RESUMABLE_MODEL_FIELDS
        return key in _ARCHITECTURE_KEYS

    refused = {k: v for k, v in changed.items() if structural(k)}
    if refused:
        lines = "; ".join(f"{k}: saved {a!r}, requested {b!r}" for k, (a, b) in refused.items())
        raise ValueError(
            f"The checkpoint at step {step} was trained with another architecture, so it cannot be resumed with "
            f"this config: {lines}. Pass the saved values, or train into a new workdir."
        )
    if changed and multihost.is_leader():
        _say("Resuming with changed settings: " + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def check_loop_config(config: ml_collections.ConfigDict) -> None:
    """The loop's own settings: positive int step counts and intervals (`checks.check_positive_int`: the error names
    the field)."""
    for name in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        checks.check_positive_int(f"config.{name}", config[name])


def check_context_config(config: ml_collections.ConfigDict, mesh, model_config) -> None:
    """Context parallelism (`config.mesh.context` > 1: sequences split over devices, self-attention as ring
    attention) is for language-model training (task "lm") under parallel="jit" on one process, with a
    `config.data.seq_len` it divides and attention that ring attention computes; anything else is a ValueError
    naming the setting, before anything compiles."""
    ways = sharding.context_ways(mesh)
    if ways == 1:
        return
    fix = "or set config.mesh.context=1"
    if config.task != "lm":
        raise ValueError(f"config.mesh.context={ways} is for task='lm' (GPT language models); got {config.task!r}.")
    if config.parallel != "jit":
        raise ValueError(f"config.mesh.context={ways} needs parallel='jit'; got {config.parallel!r} ({fix}).")
    if jax.process_count() > 1:
        raise ValueError(f"config.mesh.context={ways} is single-process for now (multi-host is not tested); {fix}.")
    layout = checks.check_choice("config.sequence_layout", config.sequence_layout, sharding.SEQUENCE_LAYOUTS)
    pieces = 2 * ways if layout == "zigzag" else ways  # zigzag: two chunks per device
    if config.data.seq_len % pieces:
        raise ValueError(
            f"config.data.seq_len={config.data.seq_len} is not divisible by {pieces}: config.mesh.context={ways} "
            f"cuts every sequence into {pieces} chunks (config.sequence_layout={layout!r}); use a multiple of "
            f"{pieces}, {fix}."
        )
    unsupported = [
        (model_config.attention_dropout_rate > 0, "model.attention_dropout_rate > 0"),
    ]
    refused = [name for flag, name in unsupported if flag]
    if refused:
        raise ValueError(
            f"config.mesh.context={ways} runs self-attention as ring attention, which does not support "
            f"{', '.join(refused)} yet; change the model, {fix}."
        )


def _progress(start: int, total: int, *, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0, disable=not enabled)
