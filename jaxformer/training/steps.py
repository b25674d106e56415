"""The pure train and eval steps: (TrainState, batch) -> (TrainState, metrics). No mesh, no axis names, no jit.

A step is a loss (a task's `loss(model, batch) -> (loss, metrics)`), an optax update and, for data parallelism
written per device, a `CrossDevice` reduction that the caller supplies. Where and how a step runs (jit with
shardings, pmap, shard_map) is `training/runner.py`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxformer.training.schedules import Schedule
from jaxformer.training.state import Graphs, TrainState

LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict]]
"""`loss(model, batch) -> (scalar loss, metrics)`; the metrics hold at least `nll` (the unsmoothed loss),
`accuracy` and `tokens` (targets counted), as `tasks.base.classification_loss` returns them. Traced inside jit."""


class CrossDevice(Protocol):
    """How the devices of a per-device step (pmap, shard_map) combine what each computed on its shard."""

    def mean(self, tree: Any) -> Any:
        """The mean over devices of every floating leaf of `tree` (other leaves unchanged)."""

    def sum(self, x: jax.Array) -> jax.Array:
        """The sum over devices of `x`."""


def train_step_fn(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: LossFn,
    *,
    cross_device: CrossDevice | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The training step: (state, batch) -> (new state, metrics), unjitted.

        (loss, metrics), g = value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(g, opt_state, params);  params = params + updates

    `params` is what the state trains (`state.split_model`): every parameter, or a LoRA model's adapters, whose
    base weights (`LoRATrainState.frozen`) enter the loss as constants and come back unchanged.

    metrics: the loss's (`nll`, `accuracy`, `tokens`) plus `loss`, `perplexity` = exp(nll), `grad_norm` (global,
    before clipping) and `learning_rate` (the schedule at this step).

    cross_device: for per-device code where each device sees its shard of the batch. Gradients, losses, metrics
    and floating model state (BatchNorm statistics) are then averaged over the devices before the update and
    token counts summed, so every device applies the same update: with equal shards, the global-batch step
    (except that dropout draws the same stream on every device).
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        frozen = state.frozen_states()  # a LoRA model's base weights: read, not differentiated

        def compute_loss(params, model_state):
            # Fresh Variables at this trace level (tree.map rebuilds them), so that dropout may advance its counter.
            model_state = jax.tree.map(lambda x: x, model_state)
            model = nnx.merge(graphs.train, params, *frozen, model_state)
            loss, metrics = loss_fn(model, batch)
            return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

        grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state)
        tokens = metrics["tokens"]
        if cross_device is not None:
            tokens = cross_device.sum(tokens)
            grads, model_state, loss, metrics = cross_device.mean((grads, model_state, loss, metrics))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "tokens": tokens,
            "loss": loss,
            "perplexity": jnp.exp(metrics["nll"]),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
        return new_state, metrics

    return train_step


def eval_step_fn(graphs: Graphs, loss_fn: LossFn) -> Callable[[TrainState, dict], dict]:
    """The evaluation step (dropout off, running BatchNorm statistics): state, batch -> the loss's metrics plus
    `loss` and `perplexity`, as in training. Unjitted."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        model = nnx.merge(graphs.eval, state.params, *state.frozen_states(), state.model_state)
        loss, metrics = loss_fn(model, batch)
        return {**metrics, "loss": loss, "perplexity": jnp.exp(metrics["nll"])}

    return eval_step
