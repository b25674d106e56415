"""train_and_evaluate(config, workdir): the main job for language models (GPT on a text corpus).

Resumes from the newest complete checkpoint in `workdir/checkpoints` (model, optimizer, RNG counters and the data
position), so a run that is killed and restarted continues with exactly the batches and random numbers of an
uninterrupted one. Writes `metrics.jsonl` (one JSON object per log line), `tokenizer.json`, `loss.png` and
`samples.txt` to the workdir.
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
from jaxformer.decoding import generate
from jaxformer.models import GPT, ModelConfig
from jaxformer.training import plots
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.optimizers import make_optimizer
from jaxformer.training.schedules import make_schedule
from jaxformer.training.state import create_train_state, merge
from jaxformer.training.steps import make_eval_step, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the parameters became NaN or Inf; the newest checkpoint predates it."""


def load_text(cfg: ml_collections.ConfigDict, split: str) -> str:
    """The raw text of `split` from the config's source: a tfds dataset or a local text file (split by share)."""
    if cfg.source == "tfds":
        return data.tfds_text(cfg.name, split, data_dir=cfg.data_dir or None)
    if cfg.source == "text_file":
        text = data.text_file(cfg.path)
        cut = int(len(text) * (1.0 - cfg.eval_fraction))
        return text[:cut] if split == cfg.train_split else text[cut:]
    raise ValueError(f"config.data.source={cfg.source!r}; choose 'tfds' or 'text_file'.")


def make_tokenizer(name: str, train_text: str) -> data.Tokenizer:
    if name == "char":
        return data.CharTokenizer.from_text(train_text)
    if name == "byte":
        return data.ByteTokenizer()
    raise ValueError(f"config.data.tokenizer={name!r}; choose 'char' or 'byte'.")


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """`config.model` is a variant name plus field overrides; vocabulary and context come from the data."""
    overrides = dict(config.model.to_dict())
    variant = overrides.pop("variant")
    return ModelConfig.variant(variant, **{"vocab_size": vocab_size, "max_len": config.data.seq_len, **overrides})


def evaluate(eval_step, state, tokens: np.ndarray, config) -> float:
    """Mean next-token loss over every target of the evaluation split (padded batches, padding not counted)."""
    total, count = 0.0, 0.0
    for batch in data.eval_batches(tokens, batch_size=config.batch_size, seq_len=config.data.seq_len):
        batch = {"inputs": batch["inputs"], "targets": batch["targets"], "weights": batch["valid"]}
        metrics = jax.device_get(eval_step(state, batch))
        total += float(metrics["nll"]) * float(metrics["tokens"])
        count += float(metrics["tokens"])
    return total / max(count, 1.0)


def sample_text(model: GPT, tokenizer, prompt: str, num_tokens: int, *, seed: int, **sampling) -> str:
    """`num_tokens` sampled after `prompt`, in chunks whose prompt is the recent context (as nanoGPT crops to the
    block size), since learned positions stop at max_len."""
    max_len = model.config.max_len
    context = list(tokenizer.encode(prompt)) or [0]
    out: list[int] = []
    key = jax.random.key(seed)
    while len(out) < num_tokens:
        window = context[-(max_len // 2) :]
        chunk = min(max_len - len(window), num_tokens - len(out))
        key, sub = jax.random.split(key)
        new = generate(model, jnp.asarray([window], jnp.int32), chunk, rng=sub, **sampling)
        new = [int(t) for t in np.asarray(new[0])]
        out += new
        context += new
    return prompt + tokenizer.decode(np.asarray(out, np.int32))


def build(config: ml_collections.ConfigDict, vocab_size: int):
    """(ModelConfig, GPT, schedule, optimizer) that `config` describes, for a vocabulary of `vocab_size`."""
    model_cfg = model_config(config, vocab_size)
    model = GPT(model_cfg, rngs=nnx.Rngs(config.seed))
    schedule = make_schedule(
        config.schedule,
        learning_rate=config.learning_rate,
        num_steps=config.num_steps,
        warmup_steps=config.warmup_steps,
        end_learning_rate=config.end_learning_rate,
        d_model=model_cfg.d_model,
    )
    opt = config.optimizer
    optimizer = make_optimizer(
        schedule,
        name=opt.name,
        b1=opt.b1,
        b2=opt.b2,
        weight_decay=opt.weight_decay,
        decay_embeddings=opt.decay_embeddings,
        clip_norm=opt.clip_norm or None,
        grad_accum_steps=opt.grad_accum_steps,
    )
    return model_cfg, model, schedule, optimizer


def load_trained(workdir: str):
    """(model in eval mode, tokenizer, config) from the newest checkpoint of a run's workdir."""
    with open(os.path.join(workdir, "tokenizer.json")) as f:
        tokenizer = data.tokenizer_from_dict(json.load(f))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpoints:
        step = checkpoints.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {checkpoints.directory}: train first.")
        config = ml_collections.ConfigDict(checkpoints.restore_config(step))
        _, model, _, optimizer = build(config, tokenizer.vocab_size)
        graphs, template = create_train_state(model, optimizer)
        state, _, _ = checkpoints.restore(template, step)
    return merge(graphs.eval, state), tokenizer, config


class MetricsLog:
    """Appends one JSON object per line to `workdir/metrics.jsonl` and keeps the history for the loss plot."""

    def __init__(self, path: str):
        self.path = path
        self.history: list[dict] = []
        if os.path.exists(path):
            with open(path) as f:
                self.history = [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Forgets lines logged after `step` (a resumed run logs them again, exactly as before)."""
        self.history = [row for row in self.history if row["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.history)

    def write(self, row: dict) -> None:
        self.history.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` into `workdir` (resuming if it holds a checkpoint); returns the final metrics row."""
    os.makedirs(workdir, exist_ok=True)
    train_text = load_text(config.data, config.data.train_split)
    eval_text = load_text(config.data, config.data.eval_split)
    tokenizer = make_tokenizer(config.data.tokenizer, train_text)
    with open(os.path.join(workdir, "tokenizer.json"), "w") as f:
        json.dump(tokenizer.to_dict(), f)
    train_tokens, eval_tokens = tokenizer.encode(train_text), tokenizer.encode(eval_text)

    model_cfg, model, schedule, optimizer = build(config, tokenizer.vocab_size)
    graphs, state = create_train_state(model, optimizer)
    train_step, eval_step = make_train_step(graphs, optimizer, schedule), make_eval_step(graphs)
    batches = data.LMBatcher(train_tokens, batch_size=config.batch_size, seq_len=config.data.seq_len, seed=config.seed)

    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"))
    start = checkpoints.latest_step()
    if start is not None:
        state, data_state, _ = checkpoints.restore(state, start)
        batches.restore(data_state)
        print(f"Resumed from the checkpoint at step {start} in {checkpoints.directory}.")
    start = int(state.step)
    log.truncate_after(start)

    def stop(what: str, step: int) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"{what} at step {step}. Nothing was saved after step {checkpoints.latest_step()}, the newest "
            f"checkpoint in {checkpoints.directory}; lower learning_rate, raise warmup_steps or set "
            "optimizer.clip_norm, then run again to resume."
        )

    def save(step: int) -> None:
        # A finite loss can still be followed by an update that overflows: never checkpoint such parameters.
        if not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params)):
            raise stop("Parameters are not finite", step)
        if step not in checkpoints.all_steps():
            checkpoints.save(step, state, data_state=batches.state(), config=config.to_dict())

    tokens_per_step = config.batch_size * config.data.seq_len
    step_times: list[float] = []
    train_losses: list[float] = []
    row: dict = {}
    progress = _progress(start, config.num_steps)
    interrupted = _InterruptFlag()
    try:
        for step in range(start + 1, config.num_steps + 1):
            t0 = time.perf_counter()
            state, metrics = train_step(state, next(batches))
            # Fetching waits for the step, so the wall time below is the step's.
            loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
            if step > start + 1:  # the first step of a process compiles
                step_times.append(time.perf_counter() - t0)
            if not math.isfinite(loss):
                raise stop(f"Training loss is {loss}", step)
            if not math.isfinite(grad_norm):
                raise stop(f"Gradient norm is {grad_norm}", step)
            train_losses.append(loss)
            progress.update(1)
            last = step == config.num_steps
            if step % config.log_every == 0 or step % config.eval_every == 0 or last:
                step_ms = 1e3 * statistics.median(step_times) if step_times else float("nan")
                row = {
                    "step": step,
                    "train_loss": float(np.mean(train_losses)),
                    "learning_rate": float(metrics["learning_rate"]),
                    "grad_norm": float(metrics["grad_norm"]),
                    "accuracy": float(metrics["accuracy"]),
                    "step_ms": step_ms,
                    "tokens_per_s": tokens_per_step / (step_ms / 1e3) if step_times else float("nan"),
                }
                if step % config.eval_every == 0 or last:
                    row["val_loss"] = evaluate(eval_step, state, eval_tokens, config)
                log.write(row)
                progress.set_postfix(
                    loss=f"{row['train_loss']:.3f}",
                    lr=f"{row['learning_rate']:.2e}",
                    tok_s=f"{row['tokens_per_s']:.0f}",
                )
                step_times, train_losses = [], []
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

    plots.loss_curve(log.history, os.path.join(workdir, "loss.png"), title=config.name)
    final_model = merge(graphs.eval, state)
    sample = config.sample
    text = sample_text(
        final_model,
        tokenizer,
        sample.prompt,
        sample.num_tokens,
        seed=config.seed,
        temperature=sample.temperature,
        top_k=min(sample.top_k, tokenizer.vocab_size) if sample.top_k else None,  # nanoGPT clamps it too
    )
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
        f.write(text)
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


def _progress(start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)
