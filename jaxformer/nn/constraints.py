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
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import jax

Resolver = Callable[[tuple[str | None, ...], tuple[int, ...]], "jax.sharding.Sharding | None"]

# The resolver is read while a function is traced, so a context variable (not a global) keeps concurrent traces in
# other threads unaffected.
_RESOLVER: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("activation_sharding", default=None)

RESIDUAL_AXES = ("batch", "length", "embed")  # the residual stream [B, T, D] between blocks


@contextlib.contextmanager
def activation_sharding(resolve: Resolver | None) -> Iterator[None]:
    """Within this context, `constrain` pins activations to `resolve(axes, shape)` (None: no hints)."""
    token = _RESOLVER.set(resolve)
    try:
        yield
    finally:
        _RESOLVER.reset(token)


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
