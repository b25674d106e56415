"""Pure, jitted train and eval steps: (TrainState, batch) -> (TrainState, metrics)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxformer import ops
from jaxformer.nn.constraints import activation_sharding
from jaxformer.training.schedules import Schedule
from jaxformer.training.sharding import activation_resolver
from jaxformer.training.state import Graphs, TrainState

LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict]]


def classification_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Softmax cross-entropy of `logits [..., V]` against `targets [...]`, with the metrics every task reports.

    weights: `[...]` (0 = ignore, e.g. padding); None counts every target. Returns (loss, metrics): `nll` (the
    unsmoothed mean negative log-likelihood), `accuracy` (argmax == target) and `tokens` (the targets counted).
    """
    loss, tokens = ops.cross_entropy(logits, targets, mask=weights, label_smoothing=label_smoothing)
    nll = loss if not label_smoothing else ops.cross_entropy(logits, targets, mask=weights)[0]
    w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    accuracy = jnp.sum(correct * w) / jnp.maximum(tokens, 1.0)
    return loss, {"nll": nll, "accuracy": accuracy, "tokens": tokens}


def lm_loss(model: nnx.Module, batch: dict, *, label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Next-token cross-entropy of a decoder-only LM.

    batch: `inputs`, `targets` int `[B, T]`; optional `weights` `[B, T]` (0 = ignore, e.g. padding),
    `segment_ids` and `positions` `[B, T]` for packed rows. Returns (loss, metrics) as `classification_loss`.
    """
    logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"), positions=batch.get("positions"))
    return classification_loss(logits, batch["targets"], batch.get("weights"), label_smoothing=label_smoothing)


def train_step_fn(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: LossFn = lm_loss,
    *,
    axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The pure (unjitted) training step: (state, batch) -> (new state, metrics).

    metrics: `loss`, `nll`, `perplexity` = exp(nll), `accuracy`, `tokens`, `grad_norm` (global, before
    clipping), `learning_rate` (the schedule at this step).

    axis_name: for per-device code (`jax.pmap`, `jax.shard_map`) where each device sees its shard of the batch:
    gradients, losses and floating model state (BatchNorm statistics) are averaged over that axis before the
    update (`lax.pmean`), token counts summed, so every device applies the same update. With equal-sized shards
    this is the global-batch step, except that dropout draws the same stream on every device.
    """

    def mean(tree):
        if axis_name is None:
            return tree
        return jax.tree.map(lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def compute_loss(params, model_state):
            # Fresh Variables at this trace level (tree.map rebuilds them), so that dropout may advance its counter.
            model_state = jax.tree.map(lambda x: x, model_state)
            model = nnx.merge(graphs.train, params, model_state)
            loss, metrics = loss_fn(model, batch)
            return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

        grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state)
        tokens = metrics["tokens"] if axis_name is None else jax.lax.psum(metrics["tokens"], axis_name)
        grads, model_state, (loss, metrics) = mean(grads), mean(model_state), mean((loss, metrics))
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
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), metrics

    return train_step


def make_train_step(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: LossFn = lm_loss,
    *,
    state_shardings=None,
    batch_sharding=None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted training step (`train_step_fn`). The incoming TrainState is donated: its buffers are reused.

    With `state_shardings` (a TrainState of shardings, from `sharding.create_sharded_train_state`) and
    `batch_sharding`, the step is compiled for them and returns the new state with the same shardings, so a
    sharded run never re-lays out its state between steps; metrics come back replicated. The model's activation
    hints (nn/constraints.py) are then on, pinning the residual stream to the batch sharding's mesh.
    """
    train_step = train_step_fn(graphs, optimizer, schedule, loss_fn)
    if state_shardings is None:
        return jax.jit(train_step, donate_argnums=0)
    # The mesh of the hints: the batch's, or else the state's (every leaf of a sharded state shares one mesh).
    mesh = (batch_sharding if batch_sharding is not None else jax.tree.leaves(state_shardings)[0]).mesh
    return jax.jit(
        with_activation_hints(train_step, mesh),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )


def make_eval_step(graphs: Graphs, loss_fn: LossFn = lm_loss, *, mesh=None) -> Callable[[TrainState, dict], dict]:
    """The jitted evaluation step (dropout off, running BatchNorm statistics): metrics as in training. With a
    `mesh`, the model's activation hints are on (as in `make_train_step` with shardings)."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        model = nnx.merge(graphs.eval, state.params, state.model_state)
        loss, metrics = loss_fn(model, batch)
        return {**metrics, "loss": loss, "perplexity": jnp.exp(metrics["nll"])}

    return jax.jit(eval_step if mesh is None else with_activation_hints(eval_step, mesh))


def with_activation_hints(step: Callable, mesh) -> Callable:
    """`step` traced with the model's activation sharding hints resolved on `mesh` by the rules table."""

    @functools.wraps(step)
    def hinted(*args):
        with activation_sharding(activation_resolver(mesh)):
            return step(*args)

    return hinted
