"""Data parallelism written per device: `parallel = "pmap"` (the classic `jax.pmap`) and `parallel = "shard_map"`.

The default, `parallel = "jit"`, states shardings and lets XLA partition the step (sharding.py); it covers data,
FSDP and tensor parallelism. These two modes run the same step body on each device's shard of the batch and
average gradients explicitly with `lax.pmean` (`train_step_fn(..., axis_name="data")`): the form many existing
scripts use, kept as a compatibility path. The state is replicated (a copy per device), so they are data-parallel
only. Each device draws the same dropout stream, so with dropout on they differ slightly from the jit step.

    pmap:       state has a leading device axis (`replicate` / `unreplicate`); batch `[devices, B / devices, ...]`
    shard_map:  state is an ordinary replicated array on a data-only mesh; batch split over `data`, as with jit
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxformer.training.schedules import Schedule
from jaxformer.training.state import Graphs, TrainState
from jaxformer.training.steps import LossFn, lm_loss, make_train_step, train_step_fn

PARALLEL = ("jit", "pmap", "shard_map")


def replicate(tree, devices: Sequence):
    """A copy of every leaf per device, stacked on a new leading axis, copy i on device i (pmap's layout)."""
    stacked = NamedSharding(Mesh(np.asarray(devices), ("data",)), PartitionSpec("data"))
    return jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x[None], (len(devices), *jnp.shape(x))), stacked), tree
    )


def unreplicate(tree):
    """Device 0's copy of a `replicate`d tree (they are equal: every device applied the same update)."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(batch: dict, num_devices: int) -> dict:
    """`[B, ...]` -> `[num_devices, B / num_devices, ...]` for every array of a host batch."""

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % num_devices:
            raise ValueError(f"The batch ({x.shape[0]}) does not split over {num_devices} devices.")
        return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_pmap_train_step(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: LossFn = lm_loss,
    *,
    devices: Sequence | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`jax.pmap` of the per-device step over `devices` (default all): takes a `replicate`d state and a
    `split_batch`; returns the replicated new state and per-device copies of the (averaged) metrics."""
    step = train_step_fn(graphs, optimizer, schedule, loss_fn, axis_name="data")
    return jax.pmap(step, axis_name="data", devices=devices, donate_argnums=0)


def make_shard_map_train_step(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: LossFn = lm_loss,
    *,
    mesh: Mesh,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The per-device step under `jax.shard_map` on a data-only `mesh`, jitted: state replicated (`P()`), batch
    split over `data` (as `sharding.shard_batch` lays it out), metrics returned replicated."""
    others = {a: s for a, s in mesh.shape.items() if a != "data" and s > 1}
    if others:
        raise ValueError(
            f"parallel='shard_map' is data parallelism only; the mesh also splits {others}. Use parallel='jit' "
            "for FSDP / tensor parallelism, or set config.mesh.fsdp = config.mesh.tensor = 1."
        )
    step = train_step_fn(graphs, optimizer, schedule, loss_fn, axis_name="data")
    # check_vma=False: with it on, jax differentiates a replicated parameter against a per-device loss by summing
    # the gradients over devices itself, and the explicit pmean in the step would then return 8x the mean.
    mapped = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec("data")),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=0)


def first(metrics: dict) -> dict:
    """pmap returns one copy of the metrics per device; they are equal after the pmean."""
    return jax.tree.map(lambda x: jnp.asarray(x)[0], metrics)


@dataclasses.dataclass(frozen=True)
class ParallelStep:
    """How the training loop runs a step under `config.parallel`.

    step(state, host_batch) -> (state, metrics): places the batch and runs the compiled step.
    to_devices(state): the step's layout of a state from `create_sharded_train_state` / a checkpoint.
    to_host(state): back to that layout (pmap: device 0's copy), for checkpoints, evaluation and sampling.
    """

    step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    to_devices: Callable[[TrainState], TrainState]
    to_host: Callable[[TrainState], TrainState]


def make_parallel_step(
    parallel: str,
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: LossFn,
    *,
    mesh: Mesh,
    state_shardings,
) -> ParallelStep:
    """The loop's step for `parallel` ("jit", "pmap" or "shard_map") on `mesh`. For "pmap" the state comes
    from a one-device mesh and `to_devices` replicates it over `mesh`'s devices."""
    from jaxformer.training import sharding

    same = lambda state: state
    if parallel == "jit":
        jitted = make_train_step(
            graphs,
            optimizer,
            schedule,
            loss_fn,
            state_shardings=state_shardings,
            batch_sharding=sharding.batch_sharding(mesh),
        )
        return ParallelStep(_on_mesh(jitted, mesh), same, same)
    if parallel == "shard_map":
        mapped = make_shard_map_train_step(graphs, optimizer, schedule, loss_fn, mesh=mesh)
        return ParallelStep(_on_mesh(mapped, mesh), same, same)
    if parallel == "pmap":
        devices = list(mesh.devices.flat)
        pmapped = make_pmap_train_step(graphs, optimizer, schedule, loss_fn, devices=devices)

        def step(state, batch):
            state, metrics = pmapped(state, split_batch(batch, len(devices)))
            return state, first(metrics)

        # Device 0's copy, laid out as the one-device state it was made from (`x[0]` alone may still span devices).
        to_host = lambda s: jax.device_put(unreplicate(s), state_shardings)
        return ParallelStep(step, lambda s: replicate(s, devices), to_host)
    raise ValueError(f"config.parallel={parallel!r}; choose one of {PARALLEL}.")


def _on_mesh(step: Callable, mesh: Mesh) -> Callable:
    """`step` on a host batch laid out over `mesh`, run with `mesh` as jax's ambient mesh (`jax.set_mesh`).

    Only the step runs there: flax's `nnx.eval_shape` reads parameter metadata as mesh axes under an ambient mesh,
    and jaxformer's metadata names logical axes, so building the state stays outside. pmap refuses any other
    ambient mesh, so its step never runs under one."""
    from jaxformer.training import sharding

    def run(state, batch):
        with sharding.use_mesh(mesh):
            return step(state, sharding.shard_batch(batch, mesh))

    return run
