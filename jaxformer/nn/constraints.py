"""Activation sharding hints: where a model says how an activation should be laid out on a device mesh.

Models call `constrain(x, ("batch", "length", "embed"))` at block boundaries, naming each axis of the activation
with the same logical names as parameters (nn/params.py; docs/architecture.md, "Conventions"). Outside a sharded
training step nothing is active and the call returns `x` itself, so layers and models stay mesh-free. The step
runner (training/runner.py) turns the hints on while it traces a step, with a resolver from the top-level module
jaxformer/sharding.py (`activation_resolver`: the mesh and the same `LOGICAL_AXIS_RULES` as the parameters):

    with activation_sharding(resolve):      # resolve(axes, shape) -> a jax Sharding, or None to leave x alone
        ...trace the model...               # constrain(x, axes) == jax.lax.with_sharding_constraint(x, sharding)

Why: under `jax.jit` the compiler (GSPMD / Shardy) propagates shardings from the parameters and the inputs, and with
FSDP or tensor parallelism it may choose to keep an activation split along `embed` or replicated, paying extra
collectives. Pinning the residual stream to "batch split over data x fsdp" at every block boundary is the layout
MaxText and the scaling playbook use.

Context parallelism: when the rules split "length" over a mesh axis, each device holds a slice of every sequence,
in the order `sequence_layout` gives ("contiguous" or ring attention's load-balanced "zigzag", ops/ring.py). The
attention layers read it to run ring attention with that layout, and models' default positions follow it
(`sequence_positions`), so that a batch laid out in zigzag order (`ops.zigzag`) trains as the plain one would.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp

from jaxformer import ops

Resolver = Callable[[tuple[str | None, ...], tuple[int, ...]], "jax.sharding.Sharding | None"]

# The resolver is read while a function is traced, so a context variable (not a global) keeps concurrent traces in
# other threads unaffected.
_RESOLVER: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("activation_sharding", default=None)
_LAYOUT: contextvars.ContextVar[str] = contextvars.ContextVar("sequence_layout", default="contiguous")
SEQUENCE_LAYOUTS = ("contiguous", "zigzag")  # = ops.ring.LAYOUTS

RESIDUAL_AXES = ("batch", "length", "embed")  # the residual stream [B, T, D] between blocks


@contextlib.contextmanager
def activation_sharding(resolve: Resolver | None, *, sequence_layout: str = "contiguous") -> Iterator[None]:
    """Within this context, `constrain` pins activations to `resolve(axes, shape)` (None: no hints), and a sequence
    split over devices ("length" resolved onto a mesh axis) is in `sequence_layout` order ("contiguous" or
    "zigzag", see the module docstring)."""
    if sequence_layout not in SEQUENCE_LAYOUTS:
        raise ValueError(f"sequence_layout={sequence_layout!r}; choose one of {SEQUENCE_LAYOUTS}.")
    tokens = _RESOLVER.set(resolve), _LAYOUT.set(sequence_layout)
    try:
        yield
    finally:
        _RESOLVER.reset(tokens[0])
        _LAYOUT.reset(tokens[1])


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` with a sharding constraint for its logical `axes` when hints are active; otherwise `x` unchanged."""
    resolve = _RESOLVER.get()
    if resolve is None:
        return x
    axes = tuple(axes)
    if len(axes) != x.ndim:
        raise ValueError(f"constrain: axes {axes} must name each of the {x.ndim} dims of an array of shape {x.shape}.")
    sharding = resolve(axes, tuple(x.shape))
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def resolved(axes: Sequence[str | None], shape: Sequence[int]) -> jax.sharding.NamedSharding | None:
    """The sharding the active hints give an array with logical `axes` and `shape` (None when no hints are active)."""
    resolve = _RESOLVER.get()
    return None if resolve is None else resolve(tuple(axes), tuple(shape))


def sequence_split(batch: int, length: int) -> tuple[str, int, str] | None:
    """(mesh axis, its size, layout) when the active hints split a `[batch, length, ...]` activation's sequence over
    a mesh axis (context parallelism); None otherwise."""
    spec = resolved(("batch", "length"), (batch, length))
    if spec is None or len(spec.spec) < 2 or spec.spec[1] is None:
        return None
    axis = spec.spec[1]
    size = spec.mesh.shape[axis] if isinstance(axis, str) else math.prod(spec.mesh.shape[a] for a in axis)
    return axis, size, _LAYOUT.get()


def sequence_positions(batch: int, length: int) -> jax.Array | None:
    """Default positions int32 `[batch, length]` of a sequence in the active hints' layout: the global order
    `arange(length)` laid out in zigzag order when the sequence is split over n devices in that layout
    (`ops.zigzag(arange, n)`); None when positions are plain `arange(length)` (no split, or contiguous)."""
    split = sequence_split(batch, length)
    if split is None or split[2] == "contiguous":
        return None
    positions = ops.zigzag(jnp.arange(length, dtype=jnp.int32)[None], split[1], axis=1)
    return jnp.broadcast_to(positions, (batch, length))
