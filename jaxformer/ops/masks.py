"""Boolean attention masks. True means "query t may attend to key s".

Every mask is 4-D and broadcastable to `[B, N, T, S]` (batch, query heads, query length, key length): masks
that do not depend on the batch or the head carry a 1 there. Combine them with `combine_masks` (logical AND) or
pass several to `dot_product_attention` through `combine_masks(...)`.

Positions: query t sits at absolute position `t + offset` (offset = number of cached positions before the
queries, as in KV-cache decoding), key s at position s. With `offset=0` and T == S this is ordinary
self-attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import checks

# The one "minus infinity" of jaxformer: the logit a masked (or filtered-out) entry gets, in attention and in
# decoding. Finite, so that a row whose every entry is masked never produces NaN (with -inf, subtracting the row
# max gives -inf - -inf = NaN); its exp underflows to exactly 0 next to any real logit. 0.7 of the float32 max (as
# in jax.nn) leaves headroom: adding a bias or a log-probability to it, or subtracting a row max from it, stays
# finite instead of overflowing to -inf. It is also representable in bfloat16 (not in float16: compute in float32).
MASKED_LOGIT = -0.7 * float(np.finfo(np.float32).max)


def query_key_positions(q_len: int, kv_len: int | None, offset) -> tuple[jax.Array, jax.Array]:
    """Absolute query and key positions, shaped to broadcast to `[B or 1, 1, T, S]`.

    Shared by the position-based masks here and by `positions.alibi_bias`. Validates `q_len`, `kv_len` (defaults
    to `q_len`; either may be 0: an empty sequence gives an empty mask, as attention allows) and `offset` (cached
    positions before the queries, as in `causal_mask`: an int, a scalar or `[B]` integer array, >= 0 when known at
    trace time).

    Returns:
      int32 `(q_pos [B or 1, 1, T, 1], k_pos [1, 1, 1, S])`.
    """
    q_len = checks.check_nonnegative_int("q_len", q_len)
    kv_len = q_len if kv_len is None else checks.check_nonnegative_int("kv_len", kv_len)
    offset = checks.check_array("offset", offset)
    checks.check_integer("offset", offset)
    if offset.ndim > 1:
        raise ValueError(f"`offset` must be a scalar or have shape [B]; got shape {checks.shape_str(offset.shape)}.")
    concrete = checks.concrete_or_none(offset)
    if concrete is not None and (concrete < 0).any():
        raise ValueError(f"`offset` (number of cached positions) must be >= 0; got {concrete.tolist()}.")
    q_pos = jnp.arange(q_len, dtype=jnp.int32)[:, None] + offset.astype(jnp.int32).reshape(-1, 1, 1, 1)
    k_pos = jnp.arange(kv_len, dtype=jnp.int32)[None, None, None, :]
    return q_pos, k_pos


def causal_mask(q_len: int, kv_len: int | None = None, *, offset=0) -> jax.Array:
    """Causal (autoregressive) mask: query t may attend key s iff `s <= t + offset`.

    Args:
      q_len: T, number of queries.
      kv_len: S, number of keys; defaults to T.
      offset: number of cached positions before the queries: an int, a scalar array (may be traced, e.g. a
        cache index) or a `[B]` array for per-example offsets. With `offset = S - T` the queries are the last
        T positions of the keys (decoding T new tokens after a cache of S - T).

    Returns:
      bool `[1, 1, T, S]`, or `[B, 1, T, S]` when `offset` has shape `[B]`.
    """
    q_pos, k_pos = query_key_positions(q_len, kv_len, offset)
    return k_pos <= q_pos


def sliding_window_mask(
    q_len: int, kv_len: int | None = None, *, window: int, causal: bool = True, offset=0
) -> jax.Array:
    """Local attention over the `window` nearest positions (Longformer / Mistral sliding window).

    With `causal=True` query t (at position p = t + offset) sees keys s with `p - window < s <= p`: itself and
    the `window - 1` positions before it. With `causal=False` it sees `|p - s| < window`.

    Returns:
      bool `[1, 1, T, S]` (or `[B, 1, T, S]` for a `[B]` offset).
    """
    window = checks.check_positive_int("window", window)
    q_pos, k_pos = query_key_positions(q_len, kv_len, offset)
    distance = q_pos - k_pos
    if causal:
        return (distance >= 0) & (distance < window)
    return jnp.abs(distance) < window


def no_self_mask(q_len: int, kv_len: int | None = None) -> jax.Array:
    """Forbids each position from attending to itself: True iff `s != t`.

    Used to study shared-Q/K attention, whose scores q_t . k_t are largest on the diagonal.

    Returns:
      bool `[1, 1, T, S]`.
    """
    q_pos, k_pos = query_key_positions(q_len, kv_len, 0)
    return q_pos != k_pos


def lengths_to_valid(lengths, max_len: int) -> jax.Array:
    """Turns sequence lengths into a validity mask: `valid[b, t] = t < lengths[b]`.

    Args:
      lengths: int `[B]`, each in `[0, max_len]`.
      max_len: the padded length T (>= 0).

    Returns:
      bool `[B, max_len]`.
    """
    lengths = checks.check_array("lengths", lengths)
    checks.check_integer("lengths", lengths)
    checks.check_rank("lengths", lengths, 1, "[B]")
    max_len = checks.check_nonnegative_int("max_len", max_len)
    concrete = checks.concrete_or_none(lengths)
    if concrete is not None and ((concrete < 0) | (concrete > max_len)).any():
        raise ValueError(f"`lengths` must lie in [0, max_len={max_len}]; got {concrete.tolist()}.")
    return jnp.arange(max_len)[None, :] < lengths[:, None]


def padding_mask(q_valid, kv_valid=None) -> jax.Array:
    """Mask from per-token validity: True iff both the query and the key are real (not padding) tokens.

    Padded query rows are all False, so they attend to nothing and `dot_product_attention` returns zeros there.

    Args:
      q_valid: bool `[B, T]`, True for real query tokens.
      kv_valid: bool `[B, S]`; defaults to `q_valid` (self-attention).

    Returns:
      bool `[B, 1, T, S]`.
    """
    q_valid = checks.check_array("q_valid", q_valid)
    kv_valid = q_valid if kv_valid is None else checks.check_array("kv_valid", kv_valid)
    for name, x in (("q_valid", q_valid), ("kv_valid", kv_valid)):
        checks.check_bool(name, x, " Use `lengths_to_valid(lengths, max_len)` to build it from lengths.")
        checks.check_rank(name, x, 2, "[B, T]" if name == "q_valid" else "[B, S]")
    if q_valid.shape[0] != kv_valid.shape[0]:
        raise ValueError(
            f"`q_valid` and `kv_valid` must have the same batch size; got shapes "
            f"{checks.shape_str(q_valid.shape)} and {checks.shape_str(kv_valid.shape)}."
        )
    return q_valid[:, None, :, None] & kv_valid[:, None, None, :]


def segment_mask(q_segment_ids, kv_segment_ids=None) -> jax.Array:
    """Mask for packed sequences: a token attends only within its own segment (equal segment ids).

    Segment ids are equal only within one packed example. Padding is usually given its own id (0 by
    convention); padding tokens then attend only to each other and nothing real attends to them. Combine with
    `causal_mask` for packed decoder training.

    Args:
      q_segment_ids: int `[B, T]`.
      kv_segment_ids: int `[B, S]`; defaults to `q_segment_ids`.

    Returns:
      bool `[B, 1, T, S]`.
    """
    kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
    q_ids, kv_ids = checks.check_segment_ids((q_segment_ids, kv_segment_ids))
    return q_ids[:, None, :, None] == kv_ids[:, None, None, :]


def block_sparse_mask(
    q_len: int, kv_len: int, *, block_size: int, window_blocks: int, global_blocks: int, random_blocks: int, rng=None
) -> jax.Array:
    """BigBird-style block-sparse mask, expanded to tokens.

    Positions are grouped into blocks of `block_size` (the last block may be shorter). Query block i attends
    key block j when any of these holds:
      - sliding window: `|i - j| <= window_blocks`;
      - global: `i < global_blocks` or `j < global_blocks` (the first blocks attend to and are attended by all);
      - random: j is one of `random_blocks` key blocks drawn for row i, uniformly without replacement, from the
        blocks that the window and global rules leave out (as in BigBird; fewer if fewer are left).

    Args:
      q_len, kv_len: T and S.
      block_size: tokens per block.
      window_blocks: blocks on each side of the diagonal (0 = the diagonal block only).
      global_blocks: number of leading global blocks.
      random_blocks: random key blocks per query block (needs `rng`).
      rng: a `jax.random` key; required when `random_blocks > 0`.

    Returns:
      bool `[1, 1, T, S]`. Combine with `causal_mask` for a causal block-sparse pattern.
    """
    q_len = checks.check_positive_int("q_len", q_len)
    kv_len = checks.check_positive_int("kv_len", kv_len)
    block_size = checks.check_positive_int("block_size", block_size)
    window_blocks = checks.check_nonnegative_int("window_blocks", window_blocks)
    global_blocks = checks.check_nonnegative_int("global_blocks", global_blocks)
    random_blocks = checks.check_nonnegative_int("random_blocks", random_blocks)
    num_q_blocks = -(-q_len // block_size)
    num_kv_blocks = -(-kv_len // block_size)
    if random_blocks > num_kv_blocks:
        raise ValueError(f"`random_blocks`={random_blocks} exceeds the number of key blocks ({num_kv_blocks}).")
    if random_blocks > 0:
        if rng is None:
            raise ValueError("`rng` (a jax.random key) is required when `random_blocks` > 0.")
        checks.check_prng_key("rng", rng)

    qb = jnp.arange(num_q_blocks)[:, None]
    kb = jnp.arange(num_kv_blocks)[None, :]
    blocks = (jnp.abs(qb - kb) <= window_blocks) | (qb < global_blocks) | (kb < global_blocks)
    if random_blocks > 0:
        # The `random_blocks` smallest of i.i.d. uniforms are a uniform draw without replacement; blocks that are
        # already attended get noise 2 so that they rank last and every draw adds a new block while one is left.
        noise = jnp.where(blocks, 2.0, jax.random.uniform(rng, (num_q_blocks, num_kv_blocks)))
        ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
        blocks = blocks | (ranks < random_blocks)
    q_block_of = jnp.arange(q_len) // block_size
    kv_block_of = jnp.arange(kv_len) // block_size
    return blocks[q_block_of][:, kv_block_of][None, None]


def combine_masks(*masks) -> jax.Array | None:
    """Logical AND of boolean masks with broadcasting; `None` entries are ignored.

    Returns:
      the combined mask (shape = the broadcast of the inputs' shapes), or None if every input is None.
    """
    present = [(i, m) for i, m in enumerate(masks) if m is not None]
    if not present:
        return None
    arrays = []
    for i, m in present:
        m = checks.check_array(f"masks[{i}]", m)
        checks.check_bool(f"masks[{i}]", m)
        arrays.append(m)
    try:
        jnp.broadcast_shapes(*(m.shape for m in arrays))
    except ValueError as e:
        shapes = ", ".join(checks.shape_str(m.shape) for m in arrays)
        raise ValueError(f"combine_masks: mask shapes {shapes} do not broadcast together.") from e
    out = arrays[0]
    for m in arrays[1:]:
        out = out & m
    return out
