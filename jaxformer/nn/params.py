"""Parameters with logical axis names.

Every jaxformer parameter records the logical name of each of its axes (docs/architecture.md, "Conventions"):
`embed` (model width D), `mlp` (feed-forward width F), `heads` (N), `kv_heads` (K), `head_dim` (H), `vocab` (V),
or None for an axis that is never sharded. The names are stored as the variable's `out_sharding` metadata, where
`nnx.get_partition_spec` finds them; one rules table, `LOGICAL_AXIS_RULES` in the top-level module
jaxformer/sharding.py (with the mesh), maps them to mesh axes.

flax 0.12 shards a variable that carries `out_sharding` as soon as it is created ("eager sharding") and raises
when no mesh is in scope. jaxformer creates its parameters with eager sharding off, so that every layer and model
builds on one device with no mesh, and under `nnx.eval_shape`; sharded initialisation is done explicitly by
jitting the constructor with `out_shardings` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

LOGICAL_AXES = ("embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "expert", None)

Initializer = Callable[..., jax.Array]


def logical_param(
    rngs: nnx.Rngs, initializer: Initializer, shape: Sequence[int], axes: Sequence[str | None], dtype
) -> nnx.Param:
    """A new `nnx.Param` of `shape`, initialised by `initializer(key, shape, dtype)`, with logical `axes`."""
    shape, axes = tuple(shape), tuple(axes)
    if len(axes) != len(shape):
        raise ValueError(f"`axes` {axes} must name each of the {len(shape)} dims of shape {shape}.")
    unknown = [a for a in axes if a not in LOGICAL_AXES]
    if unknown:
        raise ValueError(f"Unknown logical axis names {unknown}; use names from {LOGICAL_AXES}.")
    with nnx.use_eager_sharding(False):
        return nnx.Param(initializer(rngs.params(), shape, dtype), out_sharding=axes)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a variable was created with (None if it has none)."""
    return variable.get_metadata().get("out_sharding")
