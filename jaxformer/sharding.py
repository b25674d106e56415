"""Where every array lives: the device mesh, the logical-axis rules, and sharded batches.

Below the models and above nn (whose parameters carry the logical names), so that everything that places arrays
(the training runner, the checkpoint loader in `pretrained`, the memory estimate) shares one table without
importing training.

The mesh has five axes (`MESH_AXES`):

    data     data parallelism: the batch is split, parameters are replicated
    fsdp     fully sharded data parallelism: the batch is split AND parameters / optimizer state are split along
             their `embed` axis (all-gathered for each layer's matmuls, gradients reduce-scattered)
    tensor   tensor (Megatron) parallelism: heads and the feed-forward width are split; activations are
             all-reduced after the attention output and the second feed-forward matmul
    expert   expert parallelism: a mixture of experts' stacked experts are split (each device stores and updates
             E / n of them), and the batch is split too, as over data; each device routes its own tokens, and a
             layer's expert weights are gathered for its grouped matmul (nn/moe.py)
    context  context (sequence) parallelism: activations are split along the sequence ("length"), batches on
             their token axis; self-attention runs as ring attention over this axis (nn/attention.py,
             ops/ring.py). The batch is not split over it, and parameters are replicated over it

Parameters carry logical axis names (jaxformer/nn/params.py); `LOGICAL_AXIS_RULES` is the one table that maps
them to mesh axes. A dimension whose size the mesh axes do not divide is replicated instead, except the ones
tensor parallelism exists for (`heads`, `mlp`), where that is a config error.

    mesh = mesh_from_config(config.mesh)           # {"data": -1, "fsdp": 1, "tensor": 1, ...} by default
    specs = param_specs(abstract_params, mesh)     # PartitionSpec per parameter, from the rules

The train state is built into these shardings by the step runner (`training/runner.py::init_state`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxformer import checks, ops
from jaxformer.nn.constraints import SEQUENCE_LAYOUTS, Resolver
from jaxformer.nn.params import logical_axes

MESH_AXES = ("data", "fsdp", "tensor", "expert", "context")
# The batch is split over these: FSDP is data parallelism with sharded state, and the expert axis carries a share
# of the batch outside the experts (MaxText's layout).
BATCH_AXES = ("data", "fsdp", "expert")
CONTEXT_AXIS = "context"  # splits the sequence (not the batch): context parallelism, ring attention

# logical axis -> mesh axes it is split over (None: replicated). Order within a tensor matters only in that a
# mesh axis is used at most once per array (the first logical axis to claim it wins).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", "context"),  # the sequence of activations [B, T, ...] and of token batches (context parallelism)
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("expert", "expert"),  # a mixture's stacked experts (nn/moe.py)
)
# Splitting these is the point of tensor parallelism, so a size the tensor axis does not divide is an error.
STRICT_AXES = ("heads", "mlp")


def mesh_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
    """The size of each of `MESH_AXES` (data, fsdp, tensor, expert, context) from `sizes` (missing axes are 1;
    one -1 takes the devices left), checked."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {unknown}; the mesh axes are {MESH_AXES}.")
    shape = [
        checks.check_positive_int_or_minus_one(f"config.mesh.{axis}", sizes.get(axis, 1), "the rest")
        for axis in MESH_AXES
    ]
    if shape.count(-1) > 1:
        raise ValueError(f"At most one config.mesh axis may be -1; got {dict(zip(MESH_AXES, shape, strict=True))}.")
    fixed = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh {dict(zip(MESH_AXES, shape, strict=True))}: the fixed axes ({fixed} devices) do not "
                f"divide the {num_devices} devices, so -1 cannot take the rest."
            )
        shape[shape.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, shape, strict=True))} uses {fixed} devices but {num_devices} are "
            f"available; make the product of data x fsdp x tensor x expert x context {num_devices}, or set one axis "
            "to -1."
        )
    return tuple(shape)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    *,
    expert: int = 1,
    context: int = 1,
    devices: Sequence | None = None,
) -> Mesh:
    """A `Mesh` with axes `MESH_AXES` ("data", "fsdp", "tensor", "expert", "context") over `devices` (default:
    all), -1 filling the rest."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor, "expert": expert, "context": context}
    shape = mesh_shape(sizes, len(devices))
    # Auto axes: jit propagates shardings through the model (GSPMD); newer jax defaults make_mesh to Explicit,
    # where every reshape of a sharded activation would need an out_sharding.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def mesh_from_config(mesh_config) -> Mesh:
    """The mesh that `config.mesh` (a ConfigDict or dict with `data`, `fsdp`, `tensor`, `expert`, `context`)
    describes."""
    sizes = dict(mesh_config.to_dict() if hasattr(mesh_config, "to_dict") else mesh_config)
    return make_mesh(**sizes)


def use_mesh(mesh: Mesh):
    """A context in which `mesh` is jax's ambient mesh (`jax.set_mesh`), so that bare PartitionSpecs and
    `jax.sharding.get_abstract_mesh()` refer to it; a no-op context on a jax that has neither `jax.set_mesh` nor
    `jax.sharding.use_mesh`. Not for `parallel="pmap"`: pmap builds its own mesh and refuses a different ambient one.
    """
    set_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
    return set_mesh(mesh) if set_mesh is not None else contextlib.nullcontext()


def activation_resolver(mesh: Mesh) -> Resolver:
    """For `nn.constraints.activation_sharding`: an activation with logical axes is laid out by the same rules
    table as the parameters. The residual stream ("batch", "length", "embed") is split over data x fsdp x expert on
    its batch axis; `embed` stays whole, because fsdp is already taken by the batch (one mesh axis per array)."""

    def resolve(axes, shape):
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))

    return resolve


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The PartitionSpec of an array with logical `axes` and `shape` on `mesh`, by `LOGICAL_AXIS_RULES`.

    A leading axis without a name (the layer axis of scanned parameters) is replicated. A mesh axis of size 1
    is left out; a dimension that the mesh axes do not divide is replicated (for `STRICT_AXES`, an error).
    """
    rules = dict(LOGICAL_AXIS_RULES)
    axes = (None,) * (len(shape) - len(axes)) + tuple(axes)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        target = rules.get(name) if name is not None else None
        target = (target,) if isinstance(target, str) else tuple(target or ())
        # (.get: a mesh built without some of MESH_AXES, e.g. an older four-axis one, has them as size 1)
        target = tuple(a for a in target if a not in used and mesh.shape.get(a, 1) > 1)
        ways = math.prod(mesh.shape[a] for a in target)
        if target and size % ways:
            if name in STRICT_AXES:
                raise ValueError(
                    f"The {name!r} dimension ({size}) is not divisible by the mesh axes {target} ({ways} devices): "
                    f"choose config.mesh.tensor dividing {size}, or change the model."
                )
            target = ()
        used.update(target)
        spec.append(None if not target else target[0] if len(target) == 1 else target)
    return PartitionSpec(*spec)


def param_specs(state: nnx.State, mesh: Mesh):
    """A PartitionSpec for every leaf of `state` (Variables or arrays with a `shape`): from the variable's
    logical axes where it has them, replicated otherwise (RNG state, counters, BatchNorm statistics)."""

    def spec(variable):
        axes = logical_axes(variable) if isinstance(variable, nnx.Variable) else None
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        shape = value.shape if hasattr(value, "shape") else np.shape(value)
        return PartitionSpec() if axes is None else logical_to_spec(axes, shape, mesh)

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def named(mesh: Mesh, specs):
    """NamedShardings on `mesh` for a tree of PartitionSpecs."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def context_ways(mesh) -> int:
    """How many ways the mesh's `context` axis splits the sequence (1: no context parallelism; also for a mesh
    without that axis)."""
    return int(mesh.shape.get(CONTEXT_AXIS, 1))


def batch_sharding(mesh: Mesh, shape: Sequence[int] | None = None) -> NamedSharding:
    """Batches are split along their first (batch) axis over `BATCH_AXES`, replicated over `tensor`.

    With context parallelism (`context_ways(mesh) > 1`), an array of `shape` [B, T] (token ids, targets, weights,
    segment ids, positions) is also split along T over `context`, as the activations are ("length"), when the
    context axis divides T; anything else (labels [B], images [B, H, W, C], a T it does not divide) is replicated
    over it. Without `shape`: the rows' sharding, `[BATCH_AXES]` alone (what a 1-D array gets).
    """
    if shape is not None and len(shape) == 2 and context_ways(mesh) > 1 and shape[1] % context_ways(mesh) == 0:
        return NamedSharding(mesh, PartitionSpec(BATCH_AXES, CONTEXT_AXIS))
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shardings(batch, mesh: Mesh):
    """`batch_sharding` of every array of a (global) batch tree, by its shape."""
    return jax.tree.map(lambda x: batch_sharding(mesh, np.shape(x)), batch)


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "config.batch_size") -> None:
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % ways:
        raise ValueError(
            f"{name}={batch_size} is not divisible by the data x fsdp x expert mesh axes ({ways} devices), which "
            f"split the batch; use a multiple of {ways}."
        )


@functools.lru_cache(maxsize=64)
def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch of `batch_size` that this process's devices hold under `batch_sharding(mesh)`.

    With one process that is every row. With several (multi-host), each process feeds only its rows: the devices
    a process owns form a contiguous block of the batch axis in `jax.make_mesh`'s device order.
    """
    sharding = batch_sharding(mesh)
    indices = sharding.addressable_devices_indices_map((batch_size,)).values()
    starts = [index[0].indices(batch_size)[0] for index in indices]
    stops = [index[0].indices(batch_size)[1] for index in indices]
    rows = slice(min(starts), max(stops))
    held = sum(stop - start for start, stop in {(a, b) for a, b in zip(starts, stops, strict=True)})
    if held != rows.stop - rows.start:
        raise ValueError(
            f"This process's devices hold batch rows {sorted(set(zip(starts, stops, strict=True)))}, which are not "
            f"one contiguous block of the {batch_size} rows; build the mesh with jax.make_mesh (process-major order)."
        )
    return rows


def shard_batch(batch: dict, mesh: Mesh, *, sequence_layout: str = "contiguous") -> dict:
    """Puts a global host batch (a dict of arrays with a leading batch axis) on the mesh, split over `BATCH_AXES`
    (and [B, T] arrays over `context` on T, in `sequence_layout` order: `batch_sharding`, `shard_process_batch`).

    Every process passes the same global batch and contributes only the rows its devices hold (`process_rows`);
    with one process this is a plain `device_put` of the whole batch. Training input, which reads only this
    process's rows in the first place, goes through `shard_process_batch`.
    """

    def rows(x):
        x = np.asarray(x)
        return x[process_rows(mesh, x.shape[0])]

    return shard_process_batch(jax.tree.map(rows, batch), mesh, sequence_layout=sequence_layout)


def shard_process_batch(batch: dict, mesh: Mesh, *, sequence_layout: str = "contiguous") -> dict:
    """Assembles the global batch from each process's rows (`process_rows`) with
    `jax.make_array_from_process_local_data`; the global batch has process_count times this process's rows.
    Each array is laid out by `batch_sharding` of its shape (with context parallelism [B, T] arrays are split
    on T too: each process passes whole sequences of its rows).

    `sequence_layout="zigzag"`: the arrays split on T are first put in ring attention's load-balanced order
    (`ops.zigzag` over the context ways: device i holds chunks i and 2c - 1 - i of the 2c chunks of T), the order
    the model then reads them in (`nn.constraints.activation_sharding(sequence_layout=)`); "contiguous" keeps it.
    """
    layout = checks.check_choice("sequence_layout", sequence_layout, SEQUENCE_LAYOUTS)

    def place(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, x.shape)
        if layout == "zigzag" and CONTEXT_AXIS in sharding.spec:
            x = ops.zigzag(x, context_ways(mesh), axis=1)  # NumPy in, NumPy out
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place, batch)
