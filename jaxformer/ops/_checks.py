"""Input validation shared by the public ops.

Every check runs at trace time on static shapes and dtypes, so it costs nothing inside `jax.jit`. Each error
names the argument, shows the shape or dtype received and says what was expected: jaxformer never broadcasts
silently or truncates.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_array(name: str, x) -> jax.Array:
    """Rejects None and non-array inputs with a message naming `name`; returns `x` as a jax array."""
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None.")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    return x


def check_rank(name: str, x, rank: int | Sequence[int], layout: str) -> None:
    """Raises ValueError unless `x.ndim` is `rank` (or one of `rank`); `layout` names the dims, e.g. "[B, T, N, H]"."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.ndim not in ranks:
        raise ValueError(
            f"`{name}` must have rank {' or '.join(map(str, ranks))} with layout {layout}; "
            f"got shape {shape_str(x.shape)} (rank {x.ndim})."
        )


def check_floating(name: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype; got {x.dtype}.")


def check_integer(name: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype; got {x.dtype}.")


def check_bool(name: str, x, hint: str = "") -> None:
    if x.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean array (True = may attend); got dtype {x.dtype}.{hint}")


def check_broadcastable(name: str, x, target: Sequence[int], layout: str) -> None:
    """Checks that `x` broadcasts to `target` *without* adding or stretching anything but size-1 dims.

    `x` may have fewer dims than `target` (leading dims are then implied as 1), but every dim it has must be 1 or
    equal to the target's: a [T, S] mask is fine for [B, N, T, S], an [S, T] one is not.
    """
    target = tuple(int(d) for d in target)
    if x.ndim > len(target):
        raise ValueError(
            f"`{name}` has rank {x.ndim} (shape {shape_str(x.shape)}) but must broadcast to {layout} = "
            f"{shape_str(target)}."
        )
    for got, want in zip(x.shape[::-1], target[::-1], strict=False):
        if got not in (1, want):
            raise ValueError(
                f"`{name}` of shape {shape_str(x.shape)} does not broadcast to {layout} = {shape_str(target)}: "
                f"each dim must be 1 or equal to the target's."
            )


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


def check_nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int; got {value!r}.")
    return int(value)


def concrete_or_none(x):
    """Returns `x` as a NumPy array when its value is known at trace time, else None (for value checks)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
