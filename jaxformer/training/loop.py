"""train_and_evaluate(config, workdir): the main job, one loop for every task (`jaxformer.training.tasks`).

Resumes from the newest complete checkpoint in `workdir/checkpoints` (model, optimizer, RNG counters and the grain
input iterator's position), so a run that is killed and restarted continues with exactly the batches and random
numbers of an uninterrupted one. Writes `metrics.jsonl` (one JSON object per log line), TensorBoard event files under
`tensorboard/`, `loss.png`, `samples.txt` (what the trained model produces) and the task's assets (a language
model's `tokenizer.json`) to the workdir.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxformer import data, pretrained
from jaxformer.training import multihost, plots, sharding
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.metrics import MetricsLog, perplexity
from jaxformer.training.optimizers import build_optimizer
from jaxformer.training.runner import StepRunner
from jaxformer.training.state import merge
from jaxformer.training.tasks import make_task


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the parameters became NaN or Inf; the newest checkpoint predates it."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` into `workdir` (resuming if it holds a checkpoint); returns the final metrics row."""
    multihost.initialize(config)  # before anything touches a device
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.mesh_from_config(config.get("mesh", {}))
    sharding.check_batch_size(config.batch_size, mesh)
    leader = multihost.is_leader()
    task = make_task(config)
    if leader:
        task.save_assets(workdir)
    model_cfg = task.model_config()
    schedule, optimizer = build_optimizer(config, d_model=model_cfg.d_model)
    runner = StepRunner(
        config.get("parallel", "jit"),
        lambda: task.model_class(model_cfg, rngs=nnx.Rngs(config.seed)),
        optimizer,
        schedule,
        task.loss,
        mesh=mesh,
    )
    graphs, state = runner.graphs, runner.initial_state
    # Each process reads only its rows of every global batch (the pipeline is deterministic in (seed, step)).
    rows = sharding.process_rows(mesh, config.batch_size)
    train_data = task.train_data(rows)
    if jax.process_count() > 1:
        print(
            f"Process {jax.process_index()} of {jax.process_count()} reads rows {rows.start}:{rows.stop} of every "
            f"batch of {config.batch_size}."
        )
    batches = data.pipeline.iterator(train_data, **(config.grain.to_dict() if "grain" in config else {}))

    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is None and config.get("init_from"):  # a fresh run from pretrained weights (a resume has its own)
        params = pretrained.load_params(config.init_from, model_cfg, mesh=runner.state_mesh)
        state = state.replace(params=jax.device_put(params, runner.state_shardings.params))
        if leader:
            print(f"Initialised the parameters from {config.init_from}.")
    if start is not None:
        state, _ = checkpoints.restore(state, start, data_iterator=batches)
        if leader:
            print(f"Resumed from the checkpoint at step {start} in {checkpoints.directory}.")
    start = int(state.step)
    state = runner.to_devices(state)
    log = MetricsLog(workdir, resume_step=start, writes=leader)

    def stop(what: str, step: int) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"{what} at step {step}. Nothing was saved after step {checkpoints.latest_step()}, the newest "
            f"checkpoint in {checkpoints.directory}; lower learning_rate, raise warmup_steps or set "
            "optimizer.clip_norm, then run again to resume."
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
    row: dict = {}
    progress = _progress(start, config.num_steps, enabled=leader)
    interrupted = _InterruptFlag()
    try:
        for step in range(start + 1, config.num_steps + 1):
            t0 = time.perf_counter()
            state, metrics = runner.train_step(state, next(batches))
            # Fetching waits for the step, so the wall time below is the step's.
            fetched = jax.device_get({k: metrics[k] for k in ("loss", "nll", "grad_norm")})
            loss, grad_norm = float(fetched["loss"]), float(fetched["grad_norm"])
            if step > start + 1:  # the first step of a process compiles
                step_times.append(time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise stop(f"Training loss is {loss}", step)
            if not math.isfinite(grad_norm):
                raise stop(f"Gradient norm is {grad_norm}", step)
            train_losses.append(loss)
            train_nlls.append(float(fetched["nll"]))
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
                step_times, train_losses, train_nlls = [], [], []
            if step % config.checkpoint_every == 0 or last:
                save(step)
            if interrupted.is_set:  # Ctrl-C is acted on between steps, where `state` is complete
                save(step)
                print(f"\nInterrupted: saved step {step} in {checkpoints.directory}; run the same command to resume.")
                raise KeyboardInterrupt
    finally:
        interrupted.restore()
        batches.close()  # grain's reading threads (and worker processes)
        progress.close()
        checkpoints.close()
        log.close()

    samples = task.samples(merge(graphs.eval, runner.to_host(state)))  # every process: it may run sharded code
    if leader:
        plots.loss_curve(log.history, os.path.join(workdir, "loss.png"), title=config.name)
        with open(os.path.join(workdir, "samples.txt"), "w") as f:
            f.write(samples)
    return row


class _InterruptFlag:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks between steps; a second one interrupts at once.

    An interrupt raised inside a jitted step could leave `state` pointing at donated buffers, so the loop only
    stops where it can save a consistent checkpoint.
    """

    def __init__(self):
        self.is_set = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.is_set = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _progress(start: int, total: int, *, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0, disable=not enabled)
