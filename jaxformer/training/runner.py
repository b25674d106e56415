"""Running the pure steps (steps.py) on devices: jit with shardings, pmap or shard_map; train and eval alike.

`StepRunner` is what the training loop uses: it builds the TrainState in its shardings, compiles the train and
eval steps for `config.parallel`, places each host batch, and moves the state between the step's layout and the
one checkpoints, evaluation and sampling use. The functions below it are its parts, usable on their own:

    init_state                          the TrainState built by a jitted constructor straight into its shardings
    make_train_step / make_eval_step    jax.jit, optionally with state / batch shardings (parallel="jit": data,
                                        FSDP and tensor parallelism, partitioned by XLA from sharding.py's rules)
    make_pmap_train_step                the classic jax.pmap: state replicated with a leading device axis,
                                        batch `[devices, B / devices, ...]`
    make_shard_map_train_step           the per-device step under jax.shard_map on a data-only mesh

pmap and shard_map run the same step body on each device's shard and average explicitly (`AxisReduce`): the form
many existing scripts use, kept as a compatibility path. Their state is replicated, so they are data-parallel
only, and every device draws the same dropout stream (with dropout on they differ slightly from the jit step).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxformer import checks, sharding
from jaxformer.nn.constraints import SEQUENCE_LAYOUTS, activation_sharding
from jaxformer.training import steps
from jaxformer.training.schedules import Schedule
from jaxformer.training.state import Graphs, TrainState, split_model, train_state

PARALLEL = ("jit", "pmap", "shard_map")
DATA_AXIS = "data"  # the axis per-device steps average over


def check_parallel(parallel: str) -> str:
    return checks.check_choice("config.parallel", parallel, PARALLEL)


# -- jit ---------------------------------------------------------------------------------------------------------


def init_state(
    make_model: Callable[[], nnx.Module], optimizer: optax.GradientTransformation, mesh: Mesh
) -> tuple[Graphs, TrainState, TrainState]:
    """(graphs, state, state_shardings): a TrainState initialised directly into its shardings on `mesh`.

    The model is first built abstractly (`nnx.eval_shape`, no memory) to read its parameters' logical axes; then
    its constructor runs under `jax.jit` with those `out_shardings`, so each device only ever materialises its
    own shards. The optimizer state is initialised the same way, sharded like the parameters it tracks. A LoRA
    model's frozen base (`state.split_model`) is laid out by the same rules, and its adapters like their weights
    (their logical axes: A the weight's input axes and the rank, B the rank and the weight's output axes).
    """
    graphs, abstract_params, abstract_frozen, abstract_rest = split_model(nnx.eval_shape(make_model))
    parts = (abstract_params, abstract_frozen, abstract_rest)
    part_shardings = tuple(sharding.named(mesh, sharding.param_specs(part, mesh)) for part in parts)

    @functools.partial(jax.jit, out_shardings=part_shardings)
    def init():
        _, params, frozen, rest = split_model(make_model())
        return params, frozen, rest

    params, frozen, model_state = init()
    replicated = NamedSharding(mesh, PartitionSpec())
    leaf_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, leaf_sharding: leaf_sharding,
        jax.eval_shape(optimizer.init, params),
        leaf_shardings,
        transform_non_params=lambda _: replicated,
    )
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    step = jax.device_put(np.zeros((), np.int32), replicated)
    state = train_state(step=step, params=params, opt_state=opt_state, model_state=model_state, frozen=frozen)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return graphs, state, shardings


def with_activation_hints(step: Callable, mesh: Mesh, sequence_layout: str = "contiguous") -> Callable:
    """`step` traced with the model's activation sharding hints (nn/constraints.py) resolved on `mesh`, sequences
    split over the context axis in `sequence_layout` order."""

    @functools.wraps(step)
    def hinted(*args):
        with activation_sharding(sharding.activation_resolver(mesh), sequence_layout=sequence_layout):
            return step(*args)

    return hinted


def make_train_step(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: steps.LossFn,
    *,
    state_shardings=None,
    batch_sharding=None,
    sequence_layout: str = "contiguous",
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted `steps.train_step_fn`. The incoming TrainState is donated: its buffers are reused.

    With `state_shardings` (a TrainState of shardings, from `init_state`) and
    `batch_sharding`, the step is compiled for them and returns the new state with the same shardings, so a
    sharded run never re-lays out its state between steps; metrics come back replicated. The model's activation
    hints are then on, pinning the residual stream to the batch sharding's mesh (else the state's).

    With a `context` mesh axis (context parallelism) one sharding cannot fit every array of a batch ([B, T] token
    arrays are split on T, [B] ones are not: `sharding.batch_sharding`), so the step takes the batch as placed
    (`sharding.shard_batch` / `shard_process_batch`), its sequences in `sequence_layout` order.
    """
    train_step = steps.train_step_fn(graphs, optimizer, schedule, loss_fn)
    if state_shardings is None:
        return jax.jit(train_step, donate_argnums=0)
    mesh = (batch_sharding if batch_sharding is not None else jax.tree.leaves(state_shardings)[0]).mesh
    if sharding.context_ways(mesh) > 1:
        batch_sharding = None  # as placed
    return jax.jit(
        with_activation_hints(train_step, mesh, sequence_layout),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )


def make_eval_step(
    graphs: Graphs, loss_fn: steps.LossFn, *, mesh: Mesh | None = None, sequence_layout: str = "contiguous"
) -> Callable:
    """The jitted `steps.eval_step_fn`; with a `mesh`, the model's activation hints are on (as in training)."""
    eval_step = steps.eval_step_fn(graphs, loss_fn)
    return jax.jit(eval_step if mesh is None else with_activation_hints(eval_step, mesh, sequence_layout))


# -- per device: pmap and shard_map --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AxisReduce:
    """`steps.CrossDevice` over a named device axis: `lax.pmean` of floating leaves, `lax.psum` of counts."""

    axis_name: str = DATA_AXIS

    def mean(self, tree):
        floating = lambda x: jnp.issubdtype(x.dtype, jnp.floating)
        return jax.tree.map(lambda x: jax.lax.pmean(x, self.axis_name) if floating(x) else x, tree)

    def sum(self, x):
        return jax.lax.psum(x, self.axis_name)


def replicate(tree, devices: Sequence):
    """A copy of every leaf per device, stacked on a new leading axis, copy i on device i (pmap's layout)."""
    stacked = NamedSharding(Mesh(np.asarray(devices), (DATA_AXIS,)), PartitionSpec(DATA_AXIS))
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
    loss_fn: steps.LossFn,
    *,
    devices: Sequence | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`jax.pmap` of the per-device step over `devices` (default all): takes a `replicate`d state and a
    `split_batch`; returns the replicated new state and per-device copies of the (averaged) metrics."""
    step = steps.train_step_fn(graphs, optimizer, schedule, loss_fn, cross_device=AxisReduce())
    return jax.pmap(step, axis_name=DATA_AXIS, devices=devices, donate_argnums=0)


def make_shard_map_train_step(
    graphs: Graphs,
    optimizer: optax.GradientTransformation,
    schedule: Schedule,
    loss_fn: steps.LossFn,
    *,
    mesh: Mesh,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The per-device step under `jax.shard_map` on a data-only `mesh`, jitted: state replicated (`P()`), batch
    split over `data` (as `sharding.shard_batch` lays it out), metrics returned replicated."""
    others = {a: s for a, s in mesh.shape.items() if a != DATA_AXIS and s > 1}
    if others:
        raise ValueError(
            f"parallel='shard_map' is data parallelism only; the mesh also splits {others}. Use parallel='jit' "
            "for FSDP / tensor / expert parallelism, or set config.mesh.fsdp, config.mesh.tensor and "
            "config.mesh.expert to 1."
        )
    step = steps.train_step_fn(graphs, optimizer, schedule, loss_fn, cross_device=AxisReduce())
    # check_vma=False: with it on, jax differentiates a replicated parameter against a per-device loss by summing
    # the gradients over devices itself, and the explicit pmean in the step would then return 8x the mean.
    mapped = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=0)


# -- the loop's runner ---------------------------------------------------------------------------------------------


class StepRunner:
    """Runs a model's train and eval steps on `mesh` the way `parallel` ("jit", "pmap" or "shard_map") says.

        runner = StepRunner(parallel, make_model, optimizer, schedule, loss_fn, mesh=mesh)
        state = runner.to_devices(runner.initial_state)      # or a state restored onto runner.initial_state
        state, metrics = runner.train_step(state, host_batch)
        metrics = runner.eval_step(runner.to_host(state), host_batch)

    Host layout (`initial_state`, `to_host`): what checkpoints, evaluation and sampling use; a TrainState laid out
    on `mesh` by the rules table (pmap: on one device). Step layout (`to_devices`): what `train_step` takes and
    returns (pmap: a copy per device). Train batches hold this process's rows of the global batch (what the input
    pipeline reads, `sharding.process_rows`); eval batches are global. The runner places both: with a context
    mesh axis their [B, T] arrays are split on T in `sequence_layout` order ("zigzag": ring attention's
    load-balanced order, `sharding.shard_process_batch`), and the model follows that order.
    """

    def __init__(
        self,
        parallel: str,
        make_model: Callable[[], nnx.Module],
        optimizer: optax.GradientTransformation,
        schedule: Schedule,
        loss_fn: steps.LossFn,
        *,
        mesh: Mesh,
        sequence_layout: str = "contiguous",
    ):
        self.parallel, self.mesh = check_parallel(parallel), mesh
        self.sequence_layout = checks.check_choice("sequence_layout", sequence_layout, SEQUENCE_LAYOUTS)
        if parallel != "jit" and sharding.context_ways(mesh) > 1:
            raise ValueError(
                f"config.mesh.context={sharding.context_ways(mesh)} (context parallelism: ring attention over the "
                f"sequence) needs parallel='jit'; got parallel={parallel!r}. Set config.mesh.context to 1 for it."
            )
        # pmap copies an ordinary one-device state to every device itself; the other modes lay it out on the mesh.
        devices = list(mesh.devices.flat)
        self.state_mesh = sharding.make_mesh(1, 1, 1, devices=devices[:1]) if parallel == "pmap" else mesh
        self.graphs, self.initial_state, self.state_shardings = init_state(make_model, optimizer, self.state_mesh)
        if parallel == "jit":
            step = make_train_step(
                self.graphs,
                optimizer,
                schedule,
                loss_fn,
                state_shardings=self.state_shardings,
                batch_sharding=sharding.batch_sharding(mesh),
                sequence_layout=self.sequence_layout,
            )
            self._train = self._on_mesh(step)
        elif parallel == "shard_map":
            self._train = self._on_mesh(make_shard_map_train_step(self.graphs, optimizer, schedule, loss_fn, mesh=mesh))
        else:
            pmapped = make_pmap_train_step(self.graphs, optimizer, schedule, loss_fn, devices=devices)

            def step(state, batch):
                state, metrics = pmapped(state, split_batch(batch, len(devices)))
                return state, jax.tree.map(lambda x: x[0], metrics)  # equal on every device after the pmean

            self._train = step
        # pmap's state lives on one device between steps' layouts, so its eval step runs there without hints.
        self._eval = make_eval_step(
            self.graphs,
            loss_fn,
            mesh=None if parallel == "pmap" else self.state_mesh,
            sequence_layout=self.sequence_layout,
        )

    def _on_mesh(self, step: Callable) -> Callable:
        """`step` on a host batch laid out over the mesh, run with the mesh as jax's ambient mesh.

        Only the step runs there: flax's `nnx.eval_shape` reads parameter metadata as mesh axes under an ambient
        mesh, and jaxformer's metadata names logical axes, so building the state stays outside. pmap refuses any
        other ambient mesh, so its step never runs under one."""

        def run(state, batch):
            with sharding.use_mesh(self.mesh):
                return step(state, sharding.shard_process_batch(batch, self.mesh, sequence_layout=self.sequence_layout))

        return run

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer step on this process's rows of a global batch (with one process: the whole batch);
        `state` in the step layout (`to_devices`), donated."""
        return self._train(state, batch)

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        """The eval metrics of a global host batch; `state` in the host layout (`to_host`)."""
        return self._eval(state, sharding.shard_batch(batch, self.state_mesh, sequence_layout=self.sequence_layout))

    def to_devices(self, state: TrainState) -> TrainState:
        """The step's layout of a host-layout state (pmap: a copy on every device; otherwise unchanged)."""
        return replicate(state, list(self.mesh.devices.flat)) if self.parallel == "pmap" else state

    def to_host(self, state: TrainState) -> TrainState:
        """The host layout of a step-layout state (pmap: device 0's copy, laid out as `initial_state`)."""
        if self.parallel != "pmap":
            return state
        # `x[0]` alone may still span devices: put it where the one-device state was made.
        return jax.device_put(unreplicate(state), self.state_shardings)
