"""Input validation shared by every layer of jaxformer: ops, nn, models, data and training.

Conventions:
  * Each error names the argument, shows the value (or the shape / dtype) received and says what was expected:
    jaxformer never broadcasts silently or truncates.
  * The array checks run at trace time on static shapes and dtypes, so they cost nothing inside `jax.jit`; a check
    on values runs only when the value is known at trace time (see `concrete_or_none`).
  * A check returns the validated value in the form the caller should use (a jax array, a Python int, ...).
  * ValueError for a value out of its range, including a number that is no valid int for an int check (2.5 or
    True where a count is expected, as `check_positive_int` always did) and a name that is none of the choices;
    TypeError for the wrong kind of object: a string or None where a number is expected, anything but a string
    where a name is (`check_choice`), an int where a PRNG key is, an integer array where a floating one is (and
    the reverse), a non-boolean array where a mask is.

This module imports only jax and NumPy (nothing else of jaxformer), so every layer can use it, and
`jaxformer.ops` stays importable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# -- Arrays ---------------------------------------------------------------------------------------------------------


def shape_str(shape: Sequence[int]) -> str:
    """`(2, 3)`-style text for a shape, for error messages."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_array(name: str, x) -> jax.Array:
    """Rejects None and non-numeric inputs with a message naming `name`; returns `x` as an array.

    Arrays (jax, NumPy, tracers) come back as they are; anything else array-like (a Python list, a scalar) is
    converted with `jnp.asarray`. Strings, objects and other things that are no numeric array raise a TypeError.
    """
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None.")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        if isinstance(x, (str, bytes, dict, set)):
            raise TypeError(f"`{name}` must be a numeric array; got a {type(x).__name__}: {_short(x)}.")
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"`{name}` must be a numeric array (or a nested list of numbers); got a {type(x).__name__}: "
                f"{_short(x)} ({err})."
            ) from err
    if isinstance(x.dtype, np.dtype) and x.dtype.kind in "USOVM" and not jnp.issubdtype(x.dtype, jnp.number):
        raise TypeError(f"`{name}` must be a numeric array; got dtype {x.dtype}.")
    return x


def _short(x, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_min_rank(name: str, x, rank: int, layout: str) -> None:
    """Raises ValueError unless `x.ndim >= rank`; `layout` names the dims, e.g. "[..., D]"."""
    if x.ndim < rank:
        raise ValueError(
            f"`{name}` must have rank >= {rank} with layout {layout}; got shape {shape_str(x.shape)} (rank {x.ndim})."
        )


def check_rank(name: str, x, rank: int | Sequence[int], layout: str) -> None:
    """Raises ValueError unless `x.ndim` is `rank` (or one of `rank`); `layout` names the dims, e.g. "[B, T, N, H]"."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.ndim not in ranks:
        raise ValueError(
            f"`{name}` must have rank {' or '.join(map(str, ranks))} with layout {layout}; "
            f"got shape {shape_str(x.shape)} (rank {x.ndim})."
        )


def check_floating(name: str, x) -> None:
    """Raises TypeError unless `x` has a floating dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype; got {x.dtype}.")


def check_integer(name: str, x) -> None:
    """Raises TypeError unless `x` has an integer dtype."""
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype; got {x.dtype}.")


def check_bool(name: str, x, hint: str = "", meaning: str = "True = may attend") -> None:
    """Raises TypeError unless `x` is a boolean (mask) array; `meaning` says what True means, `hint` is appended."""
    if x.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean array ({meaning}); got dtype {x.dtype}.{hint}")


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


def concrete_or_none(x):
    """Returns `x` as a NumPy array when its value is known at trace time, else None (for value checks)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_index_range(name: str, x, low: int, high: int, what: str = "") -> None:
    """When `x` (an integer array) is concrete, raises ValueError unless every entry lies in [low, high);
    the message shows the first offending entry and its position. Traced values are not checked."""
    values = concrete_or_none(x)
    if values is None or values.size == 0:
        return
    bad = (values < low) | (values >= high)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        position = f" at position {where}" if where else ""
        raise ValueError(
            f"`{name}` must lie in [{low}, {high}){what}; got {values[bad].flat[0]}{position} "
            f"(values in [{values.min()}, {values.max()}])."
        )


def check_prng_key(name: str, key) -> jax.Array:
    """A `jax.random` key: a typed key array (`jax.random.key(seed)`) or a raw uint32 one (`jax.random.PRNGKey`).

    Raises TypeError (naming `name`) for None, a Python int, a float array, ...; works on traced keys too (only the
    dtype and shape are looked at). Returns the key.
    """
    if key is None or isinstance(key, (bool, int, float, np.integer, np.floating, str)):
        raise TypeError(
            f"`{name}` must be a jax.random key (e.g. jax.random.key(0)); got {_short(key)} "
            f"({type(key).__name__}). Make one from a seed with jax.random.key(seed)."
        )
    dtype = getattr(key, "dtype", None)
    if dtype is None or not hasattr(key, "shape"):
        raise TypeError(f"`{name}` must be a jax.random key (e.g. jax.random.key(0)); got a {type(key).__name__}.")
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype == np.uint32 and key.ndim >= 1:
        return key  # a raw (legacy) key, e.g. jax.random.PRNGKey(0): uint32 [2]
    raise TypeError(
        f"`{name}` must be a jax.random key (jax.random.key(seed), or a uint32 jax.random.PRNGKey); got an array "
        f"of dtype {dtype} and shape {shape_str(key.shape)}."
    )


def check_flag(name: str, value) -> bool:
    """A Python or NumPy bool (not an int, a string or an array), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False; got {_short(value)} ({type(value).__name__}).")
    return bool(value)


def check_float_dtype(name: str, dtype) -> np.dtype:
    """A floating dtype (or its name, e.g. "bfloat16"), as a `jnp.dtype`: what computation or parameters use."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"`{name}` must be a floating dtype such as jnp.float32 or 'bfloat16'; got {dtype!r}.") from err
    if not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(f"`{name}` must be a floating dtype such as jnp.float32 or 'bfloat16'; got {resolved}.")
    return resolved


# -- Python scalars -------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    """A Python or NumPy scalar number (bools included: `True` is a number that is no valid count)."""
    return isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating))


def _bounds(low, high, *, low_open: bool = False, high_open: bool = False, number=lambda v: f"{v:g}") -> str:
    """The range `[low, high]` as message text: " in [0, 1)", " >= 1", " <= 8" or "" (no bound)."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{number(low)}, {number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {number(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {number(high)}"
    return ""


def check_int(name: str, value, *, low: int | None = None, high: int | None = None, expected: str = "") -> int:
    """A Python or NumPy int (not a bool) in [low, high] (None: unbounded on that side), as a Python int.

    ValueError for a number that is no such int (a float, a bool, one out of range); TypeError for what is no
    number at all (a string, None, an array). `expected` words the requirement in the message (default: "an int",
    with the bounds); both errors read "`name` must be <expected>; got <value>.".
    """
    expected = expected or "an int" + _bounds(low, high, number=str)
    message = f"`{name}` must be {expected}; got {value!r}."
    if not _is_number(value):
        raise TypeError(message)
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        raise ValueError(message)
    return int(value)


def check_positive_int(name: str, value, what: str = "") -> int:
    """A Python or NumPy int > 0 (not a bool), as a Python int; `what` is appended to the requirement (e.g.
    " or None"). ValueError for any other number (0, -1, 2.5, True), TypeError for what is no number."""
    return check_int(name, value, low=1, expected=f"a positive int{what}")


def check_positive_int_or_minus_one(name: str, value, meaning: str) -> int:
    """A Python or NumPy int > 0, or -1 where -1 has a `meaning` (e.g. "the rest" for a mesh axis size), as a
    Python int; ValueError for any other number, TypeError for what is no number."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value == -1:
        return -1
    return check_int(name, value, low=1, expected=f"a positive int or -1 ({meaning})")


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """One of the names `choices` (an option such as "rope" or "layernorm"), as given.

    TypeError for what is no string, ValueError for a string that is none of them; both messages read
    "name=<value>; choose one of <choices>." (`name` is written as given, e.g. "BlockConfig.norm").
    """
    message = f"{name}={value!r}; choose one of {choices}."
    if not isinstance(value, str):
        raise TypeError(message)
    if value not in choices:
        raise ValueError(message)
    return value


def _real(name: str, value) -> float | None:
    """`value` as a Python float; None when it is a traced (jit) scalar. TypeError for what is no real number."""
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a real number; got {_short(value)} ({type(value).__name__}).")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if value.shape != () or not (
            jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
        ):
            raise TypeError(
                f"`{name}` must be a real number; got an array of dtype {value.dtype} and shape "
                f"{shape_str(value.shape)}."
            )
        concrete = concrete_or_none(value)
        return None if concrete is None else float(concrete)
    raise TypeError(f"`{name}` must be a real number; got {_short(value)} ({type(value).__name__}).")


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """A finite real number (Python / NumPy scalar, or a 0-d array), as a Python float, within the bounds given.

    TypeError for what is no number (a string, None, a bool, a non-scalar array); ValueError for NaN, +-inf or a
    value outside [low, high] (`low_open` / `high_open`: the bound itself is excluded). A traced scalar (under jit)
    cannot be checked and is returned as it is.
    """
    real = _real(name, value)
    if real is None:
        return value
    bounds = _bounds(low, high, low_open=low_open, high_open=high_open)
    if (
        not np.isfinite(real)
        or (low is not None and (real < low or (low_open and real == low)))
        or (high is not None and (real > high or (high_open and real == high)))
    ):
        raise ValueError(f"`{name}` must be a finite number{bounds}{what}; got {value!r}.")
    return real


def check_positive_real(name: str, value, what: str = "") -> float:
    """A finite real number > 0 (an epsilon, a scale, a base), as a Python float; see `check_real`."""
    return check_real(name, value, low=0.0, low_open=True, what=what)


def check_rate(name: str, value) -> float:
    """A probability of dropping (dropout, label smoothing): a number in [0, 1), as a Python float."""
    return check_real(name, value, low=0.0, high=1.0, high_open=True)


def check_nonnegative_int(name: str, value) -> int:
    """A Python or NumPy int >= 0 (not a bool), as a Python int; ValueError for any other number, TypeError for
    what is no number.

    Also accepts a 0-d integer NumPy array (what a restored checkpoint may hold).
    """
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        value = value.item()
    return check_int(name, value, low=0, expected="a non-negative int")


# -- Attention inputs -----------------------------------------------------------------------------------------------


def check_query_key(query, key) -> tuple[int, int, int, int, int, int]:
    """Validates an attention query `[B, T, N, H]` and key `[B, S, K, H]` (N a multiple of K, one floating dtype).

    Returns (B, T, S, N, K, H).
    """
    query = check_array("query", query)
    key = check_array("key", key)
    check_rank("query", query, 4, "[B, T, N, H]")
    check_rank("key", key, 4, "[B, S, K, H]")
    check_floating("query", query)
    if key.dtype != query.dtype:
        raise TypeError(f"`key` dtype {key.dtype} differs from `query` dtype {query.dtype}; cast them to one dtype.")
    B, T, N, H = query.shape
    if key.shape[0] != B or key.shape[3] != H:
        raise ValueError(
            f"`key` of shape {shape_str(key.shape)} must be [B={B}, S, K, H={H}] to match `query` "
            f"of shape {shape_str(query.shape)} ([B, T, N, H])."
        )
    S, K = key.shape[1], key.shape[2]
    for what, size, x, layout in (
        ("N", N, query, "query [B, T, N, H]"),
        ("K", K, key, "key [B, S, K, H]"),
        ("H", H, query, "query [B, T, N, H]"),
    ):
        if size < 1:
            raise ValueError(
                f"Attention needs at least one head and one feature per head: {what}=0 in {layout} of shape "
                f"{shape_str(x.shape)}."
            )
    if N % K:
        raise ValueError(
            f"The number of query heads N={N} (query shape {shape_str(query.shape)}) must be a multiple "
            f"of the number of key/value heads K={K} (key shape {shape_str(key.shape)})."
        )
    return B, T, S, N, K, H


def check_value(value, query, key) -> None:
    """Validates an attention value `[B, S, K, Hv]` against a query and key already passed to `check_query_key`."""
    value = check_array("value", value)
    check_rank("value", value, 4, "[B, S, K, Hv]")
    if value.dtype != query.dtype:
        raise TypeError(f"`value` dtype {value.dtype} differs from `query` dtype {query.dtype}.")
    if value.shape[:3] != key.shape[:3]:
        raise ValueError(
            f"`value` of shape {shape_str(value.shape)} must share [B, S, K] = "
            f"{shape_str(key.shape[:3])} with `key` (shape {shape_str(key.shape)})."
        )


def check_segment_ids(
    segment_ids, B: int | None = None, T: int | None = None, S: int | None = None, *, allow_pair: bool = True
) -> tuple[jax.Array, jax.Array] | tuple[None, None]:
    """The one check of packed-sequence segment ids (tokens attend only within equal ids): `ops.segment_mask`, the
    blockwise and splash kernels and `nn.MultiHeadAttention` all call it. Returns (q_ids [B, T], kv_ids [B, S]),
    the integer arrays as given (the same array twice for self-attention), or (None, None) for None.

    `segment_ids` is None, one integer array [B, T] for self-attention (the keys are the queries, T == S), or,
    when `allow_pair`, a pair (q_segment_ids [B, T], kv_segment_ids [B, S]) (a tuple or list) for
    cross-attention; a kernel that supports only self-attention passes `allow_pair=False`. B, T and S are the
    sizes the ids must have; left None, any sizes do (rank 2, and a pair's two batch sizes must agree).
    """
    if segment_ids is None:
        return None, None
    sized = B is not None
    if isinstance(segment_ids, (tuple, list)):
        if not allow_pair:
            raise ValueError(
                "`segment_ids` must be one array [B, T] (this kernel supports self-attention only); got a "
                f"sequence of length {len(segment_ids)}."
            )
        if len(segment_ids) != 2:
            raise ValueError(
                f"`segment_ids` must be an array [B, T] or a pair (q [B, T], kv [B, S]); got "
                f"a sequence of length {len(segment_ids)}."
            )
        given = (("q_segment_ids", segment_ids[0], "T", T), ("kv_segment_ids", segment_ids[1], "S", S))
    else:
        if sized and T != S:
            hint = " Pass a pair (q_segment_ids, kv_segment_ids)." if allow_pair else ""
            raise ValueError(f"A single `segment_ids` array is for self-attention (T == S); got T={T}, S={S}.{hint}")
        given = (("segment_ids", segment_ids, "T", T),)
    ids = []
    for name, x, length_name, length in given:
        x = check_array(name, x)
        check_integer(name, x)
        if not sized:
            check_rank(name, x, 2, f"[B, {length_name}]")
        elif x.shape != (B, length):
            raise ValueError(f"`{name}` must be [B={B}, {length_name}={length}]; got shape {shape_str(x.shape)}.")
        ids.append(x)
    q_ids, kv_ids = ids[0], ids[-1]
    if q_ids.shape[0] != kv_ids.shape[0]:
        raise ValueError(
            f"`q_segment_ids` and `kv_segment_ids` must have the same batch size; got shapes "
            f"{shape_str(q_ids.shape)} and {shape_str(kv_ids.shape)}."
        )
    return q_ids, kv_ids


# -- Host-side data (NumPy) -----------------------------------------------------------------------------------------


def check_int_vector(name: str, values, what: str = "token ids") -> np.ndarray:
    """A 1-D NumPy array of integers (`what` says what they are: "token ids", "document starts", ...), as given.

    ValueError for another rank; TypeError for a non-integer dtype (a float array where ids are expected) and for
    what is no array at all (None, a string). An empty array may have any dtype (`np.asarray([])` is float64).
    """
    if values is None or isinstance(values, (str, bytes, dict, set)):
        raise TypeError(f"`{name}` must be a 1-D array of {what}; got {_short(values)} ({type(values).__name__}).")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of {what}; got shape {shape_str(arr.shape)}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integer {what}; got dtype {arr.dtype}.")
    return arr


def check_token_array(name: str, tokens) -> np.ndarray:
    """A 1-D array of integer token ids in [0, 2**31), as int32 NumPy (see `check_int_vector` for the errors)."""
    arr = check_int_vector(name, tokens)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"`{name}` must hold token ids in [0, 2**31); got values in [{arr.min()}, {arr.max()}].")
    return arr.astype(np.int32, copy=False)


def check_token_id(name: str, value, vocab_size: int, what: str = "a token id") -> int:
    """One token id (an eos / bos / pad / [MASK] id): a Python or NumPy int in [0, vocab_size), as a Python int;
    ValueError for any other number, TypeError for what is no number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        message = f"`{name}` must be {what}, an int in [0, vocab_size={vocab_size}); got {_short(value)}."
        raise (ValueError if _is_number(value) else TypeError)(message)
    if not 0 <= value < vocab_size:
        raise ValueError(f"`{name}` must be {what}, in [0, vocab_size={vocab_size}); got {value}.")
    return int(value)


def check_token_ids(ids, vocab_size: int) -> np.ndarray:
    """`ids`, a 1-D array of ints in [0, vocab_size), as int64 NumPy (see `check_int_vector` for the errors)."""
    arr = check_int_vector("ids", ids)
    if arr.size == 0:
        return arr.astype(np.int64)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"`ids` must lie in [0, vocab_size={vocab_size}); got {arr[i]} at position {i}.")
    return arr.astype(np.int64)
