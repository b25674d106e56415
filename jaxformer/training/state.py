"""TrainState: everything a training step reads and writes, as one pytree (the module graph is split off once).

What trains is decided here, once (`split_model`): every `nnx.Param` of a model, or, when the model holds LoRA
adapters (`nnx.LoRAParam`, added by `jaxformer.lora.add_adapters`), only those. The base weights of such a model
are then frozen: they live in `LoRATrainState.frozen`, which the steps read but never differentiate or update, and
which has no optimizer state.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken (int32 scalar). params: the trained variables (`nnx.Param`; LoRA: only the
    adapters, `nnx.LoRAParam`). opt_state: the optax state of `params`. model_state: every other variable of the
    model that is not a parameter - dropout RNG keys and counters, BatchNorm statistics - so that a restored
    state continues with exactly the random numbers an uninterrupted run would draw."""

    step: jax.Array
    params: nnx.State
    opt_state: Any
    model_state: nnx.State

    def frozen_states(self) -> tuple[nnx.State, ...]:
        """The parameter states a step reads but does not train: none (every parameter trains)."""
        return ()


@flax.struct.dataclass
class LoRATrainState(TrainState):
    """The TrainState of a model with LoRA adapters: `params` holds the adapters (`nnx.LoRAParam`) and `frozen`
    every other `nnx.Param`, the base weights, which no step changes (no gradient, no optimizer state).
    Checkpoints leave `frozen` out (training/checkpoints.py): a run reads its base again (config.init_from)."""

    frozen: nnx.State

    def frozen_states(self) -> tuple[nnx.State, ...]:
        """(frozen,): the base weights."""
        return (self.frozen,)


@flax.struct.dataclass
class Graphs:
    """The static halves of the split model: `train` (dropout on) and `eval` (dropout off, BatchNorm running
    averages). Hashable, so jitted steps close over them."""

    train: nnx.GraphDef = flax.struct.field(pytree_node=False)
    eval: nnx.GraphDef = flax.struct.field(pytree_node=False)


def has_adapters(model: nnx.Module) -> bool:
    """Whether `model` holds LoRA adapters (`nnx.LoRAParam` variables), so that only they train."""
    return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State | None, nnx.State]:
    """(graphs, params, frozen, rest): `model` split once into its train / eval graph definitions, the state it
    trains, its frozen parameters and every other variable. The model is left in train mode.

    params: every `nnx.Param`, frozen None; or, for a model with LoRA adapters (`has_adapters`), the adapters
    (`nnx.LoRAParam`), frozen every other `nnx.Param` (the base weights).
    """
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    if has_adapters(model):
        train_graph, params, frozen, rest = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
    else:
        (train_graph, params, rest), frozen = nnx.split(model, nnx.Param, ...), None
    return Graphs(train=train_graph, eval=eval_graph), params, frozen, rest


def train_state(
    *, step: jax.Array, params: nnx.State, opt_state: Any, model_state: nnx.State, frozen: nnx.State | None = None
) -> TrainState:
    """A TrainState, or with `frozen` base weights (a LoRA model, see `split_model`) a LoRATrainState."""
    fields = {"step": step, "params": params, "opt_state": opt_state, "model_state": model_state}
    return TrainState(**fields) if frozen is None else LoRATrainState(**fields, frozen=frozen)


def create_train_state(model: nnx.Module, optimizer: optax.GradientTransformation) -> tuple[Graphs, TrainState]:
    """Splits `model` once into its graph definitions and a TrainState at step 0 (the model is left in train mode).
    On a device mesh use `runner.init_state`, which builds the state straight into its shards."""
    graphs, params, frozen, model_state = split_model(model)
    state = train_state(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        model_state=model_state,
        frozen=frozen,
    )
    return graphs, _commit_to_params_mesh(state)


def _commit_to_params_mesh(state: TrainState) -> TrainState:
    """`state` with its unplaced arrays (the step counter, optax's counts) replicated on the mesh its parameters
    are placed on, if they are (a model from `pretrained.from_pretrained`): a jitted step returns every output
    placed, and an input it first saw unplaced would make it compile a second time."""
    arrays = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    if any(isinstance(x, jax.core.Tracer) for x in arrays):  # traced (jit, eval_shape): nothing is placed yet
        return state
    placed = [x.sharding for x in arrays if x.committed]
    meshes = {s.mesh for s in placed if isinstance(s, NamedSharding)}
    if len(meshes) != 1:
        return state
    replicated = NamedSharding(meshes.pop(), PartitionSpec())
    place = lambda x: jax.device_put(x, replicated) if isinstance(x, jax.Array) and not x.committed else x
    return jax.tree.map(place, state)


def with_base(state: TrainState, params: nnx.State) -> TrainState:
    """`state` with the base model's `nnx.Param` values `params` (e.g. a pretrained checkpoint's,
    `run.initial_params`): the trained params of full fine-tuning, the frozen base of a LoRA state. The structure
    must be the one they replace (ValueError otherwise)."""
    field = "frozen" if isinstance(state, LoRATrainState) else "params"
    want, got = jax.tree.structure(getattr(state, field)), jax.tree.structure(params)
    if want != got:
        raise ValueError(
            f"The base parameters do not match the model's {field}: {got.num_leaves} leaves given for "
            f"{want.num_leaves} (is it the same architecture?)."
        )
    return state.replace(**{field: params})


def merge(graph: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The model a TrainState describes (e.g. for sampling or evaluation outside the jitted steps)."""
    return nnx.merge(graph, state.params, *state.frozen_states(), state.model_state)
