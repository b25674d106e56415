"""TrainState: everything a training step reads and writes, as one pytree (the module graph is split off once)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken (int32 scalar). params: the model's `nnx.Param` state. opt_state: the optax
    state. model_state: every other variable of the model - dropout RNG keys and counters, BatchNorm statistics -
    so that a restored state continues with exactly the random numbers an uninterrupted run would draw."""

    step: jax.Array
    params: nnx.State
    opt_state: Any
    model_state: nnx.State


@flax.struct.dataclass
class Graphs:
    """The static halves of the split model: `train` (dropout on) and `eval` (dropout off, BatchNorm running
    averages). Hashable, so jitted steps close over them."""

    train: nnx.GraphDef = flax.struct.field(pytree_node=False)
    eval: nnx.GraphDef = flax.struct.field(pytree_node=False)


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
    """(graphs, params, rest): `model` split once into its train / eval graph definitions, its `nnx.Param` state
    and every other variable. The model is left in train mode."""
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    train_graph, params, rest = nnx.split(model, nnx.Param, ...)
    return Graphs(train=train_graph, eval=eval_graph), params, rest


def create_train_state(model: nnx.Module, optimizer: optax.GradientTransformation) -> tuple[Graphs, TrainState]:
    """Splits `model` once into its graph definitions and a TrainState at step 0 (the model is left in train mode).
    On a device mesh use `runner.init_state`, which builds the state straight into its shards."""
    graphs, params, model_state = split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), model_state=model_state
    )
    return graphs, state


def merge(graph: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The model a TrainState describes (e.g. for sampling or evaluation outside the jitted steps)."""
    return nnx.merge(graph, state.params, state.model_state)
