"""Input validation shared by jaxformer.data (NumPy only; the data pipeline runs on the host).

Each error names the argument, shows the value received and says what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


def nonnegative_int(name: str, value) -> int:
    """Accepts Python and NumPy ints and 0-d integer arrays (what a restored checkpoint may hold)."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int; got {value!r}.")
    return int(value)


def token_array(name: str, tokens) -> np.ndarray:
    """A 1-D integer array of token ids, as int32."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of token ids; got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer token ids; got dtype {arr.dtype}.")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"`{name}` must hold token ids in [0, 2**31); got values in [{arr.min()}, {arr.max()}].")
    return arr.astype(np.int32, copy=False)


def state_dict(owner: str, state, keys: tuple[str, ...]) -> dict[str, int]:
    """Reads the non-negative ints `keys` from an iterator state saved by `owner.state()`."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{owner}.restore expects the dict returned by {owner}.state(); got {type(state).__name__}.")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{owner}.restore: the state lacks keys {missing}; expected the dict returned by {owner}.state() "
            f"with keys {list(keys)}, got keys {sorted(state)}."
        )
    return {k: nonnegative_int(f"state[{k!r}]", state[k]) for k in keys}
