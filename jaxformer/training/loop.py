"""train_and_evaluate(config, workdir): the main job, one loop for every task (`jaxformer.training.tasks`).

Resumes from the newest complete checkpoint in `workdir/checkpoints` (model, optimizer, RNG counters and the data
position), so a run that is killed and restarted continues with exactly the batches and random numbers of an
uninterrupted one. Writes `metrics.jsonl` (one JSON object per log line), TensorBoard event files under
`tensorboard/`, `loss.png`, `samples.txt` (what the trained model produces) and the task's assets (a language
model's `tokenizer.json`) to the workdir.
"""

from __future__ import annotations

import json
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

from jaxformer import data
from jaxformer.models import GPT, ModelConfig
from jaxformer.training import data_parallel, multihost, plots, sharding
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.metrics import MetricsLog, perplexity
from jaxformer.training.optimizers import make_optimizer
from jaxformer.training.schedules import make_schedule
from jaxformer.training.state import create_train_state, merge
from jaxformer.training.steps import make_eval_step
from jaxformer.training.tasks import build_model_config, make_task
from jaxformer.training.tasks.lm import lm_model_fields


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the parameters became NaN or Inf; the newest checkpoint predates it."""


def build(config: ml_collections.ConfigDict, model_cfg: ModelConfig, model_class: type[nnx.Module] = GPT):
    """(model, schedule, optimizer) that `config` describes, the model a `model_class` of `model_cfg` built on
    the default device (the training loop builds it sharded instead, see `sharding.create_sharded_train_state`)."""
    return model_class(model_cfg, rngs=nnx.Rngs(config.seed)), *build_optimizer(config, model_cfg)


def build_optimizer(config: ml_collections.ConfigDict, model_cfg: ModelConfig):
    """(schedule, optimizer) that `config` describes.

    `schedule` maps the train step (one batch) to the learning rate it trains with. With gradient accumulation
    (k = optimizer.grad_accum_steps) the optimizer updates every k batches and its schedule counts updates, so
    num_steps and warmup_steps (in batches) are divided by k for it, and batch s trains with update s // k's rate.
    """
    k = config.optimizer.grad_accum_steps
    for name in ("num_steps", "warmup_steps"):
        if config[name] % k:
            raise ValueError(
                f"config.{name}={config[name]} must be a multiple of optimizer.grad_accum_steps={k} (the "
                f"optimizer updates once every {k} batches)."
            )
    update_schedule = make_schedule(
        config.schedule,
        learning_rate=config.learning_rate,
        num_steps=config.num_steps // k,
        warmup_steps=config.warmup_steps // k,
        end_learning_rate=config.end_learning_rate,
        d_model=model_cfg.d_model,
        **config.get("schedule_options", ml_collections.ConfigDict()).to_dict(),
    )
    opt = config.optimizer
    optimizer = make_optimizer(
        update_schedule,
        name=opt.name,
        b1=opt.b1,
        b2=opt.b2,
        weight_decay=opt.weight_decay,
        decay_embeddings=opt.decay_embeddings,
        clip_norm=opt.clip_norm or None,
        grad_accum_steps=k,
    )
    schedule = update_schedule if k == 1 else (lambda step: update_schedule(step // k))
    return schedule, optimizer


def load_trained(workdir: str):
    """(GPT in eval mode, tokenizer, config) from the newest checkpoint of a language-model run's workdir."""
    path = os.path.join(workdir, "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir} holds no trained language model (task 'lm').")
    with open(path) as f:
        tokenizer = data.tokenizer_from_dict(json.load(f))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpoints:
        step = checkpoints.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {checkpoints.directory}: train first.")
        config = ml_collections.ConfigDict(checkpoints.restore_config(step))
        if config.get("task", "lm") != "lm":
            raise ValueError(f"{workdir} holds a {config.task!r} model; sampling text needs task 'lm'.")
        model_cfg = build_model_config(config, lm_model_fields(config, tokenizer))
        model, _, optimizer = build(config, model_cfg)
        graphs, template = create_train_state(model, optimizer)
        state, _, _ = checkpoints.restore(template, step)
    return merge(graphs.eval, state), tokenizer, config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` into `workdir` (resuming if it holds a checkpoint); returns the final metrics row."""
    multihost.initialize(config)  # before anything touches a device
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.mesh_from_config(config.get("mesh", {}))
    sharding.check_batch_size(config.batch_size, mesh)
    parallel = config.get("parallel", "jit")
    if parallel not in data_parallel.PARALLEL:
        raise ValueError(f"config.parallel={parallel!r}; choose one of {data_parallel.PARALLEL}.")
    leader = multihost.is_leader()
    task = make_task(config)
    if leader:
        task.save_assets(workdir)
    # pmap copies an ordinary one-device state to every device itself; the other modes lay it out on the mesh.
    state_mesh = sharding.make_mesh(1, 1, 1, devices=list(mesh.devices.flat)[:1]) if parallel == "pmap" else mesh
    model_cfg = task.model_config()
    schedule, optimizer = build_optimizer(config, model_cfg)
    graphs, state, state_shardings = sharding.create_sharded_train_state(
        lambda: task.model_class(model_cfg, rngs=nnx.Rngs(config.seed)), optimizer, state_mesh
    )
    runner = data_parallel.make_parallel_step(
        parallel, graphs, optimizer, schedule, task.loss, mesh=mesh, state_shardings=state_shardings
    )
    sharded_eval_step = make_eval_step(graphs, task.loss, mesh=None if parallel == "pmap" else state_mesh)
    eval_step = lambda state, batch: sharded_eval_step(state, sharding.shard_batch(batch, state_mesh))
    batches = task.batches

    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is not None:
        state, data_state, _ = checkpoints.restore(state, start)
        batches.restore(data_state)
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
            checkpoints.save(step, host_state, data_state=batches.state(), config=config.to_dict())

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
            state, metrics = runner.step(state, next(batches))
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
                    row.update(task.evaluate(eval_step, host_state, merge(graphs.eval, host_state)))
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
