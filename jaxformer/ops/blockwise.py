"""Blockwise (flash-style) attention: exact softmax attention in O(T + S) memory.

The dense path materialises the `[T, S]` logits per head. Here the keys are visited in blocks and the softmax is
accumulated online (Milakov & Gimelshein 2018; Rabe & Staats 2021; Dao et al. 2022, FlashAttention-2). For each
query block, with running row max m, normaliser l and unnormalised output o, each key block j does

    s = cap(scale * q k_j^T)                 (masked entries -> -inf)
    m' = max(m, rowmax(s));   p = exp(s - m')
    l' = exp(m - m') l + rowsum(p);   o' = exp(m - m') o + p v_j

and the output is o / l. With a `logit_softcap` c, cap(x) = c tanh(x / c) (Gemma 2), applied before the mask;
without one cap(x) = x. The backward pass is a custom VJP that saves only the output and the row log-sum-exp
L = m + log l, and recomputes each block's probabilities p = exp(s - L):

    dv_j = sum_i p^T do_i,   dp = do_i v_j^T,   ds = p * (dp - rowsum(do_i * o_i)) * cap'(x),
    dq_i = scale * sum_j ds k_j,   dk_j = scale * sum_i ds^T q_i,

where x = scale * q k^T is the uncapped logit and cap'(x) = 1 - tanh^2(x / c) = 1 - (s / c)^2 is recomputed from
the capped tile logits s (cap'(x) = 1 without a cap).

Attention sinks (GPT-OSS; `sinks`, one logit sigma per query head, as in `dot_product_attention`) start each row's
online softmax from the sink instead of from nothing: m = sigma, l = 1 (exp(sigma - m)), o = 0. L then includes the
sink, and its gradient is dsigma = -sum_rows exp(sigma - L) rowsum(do * o) (the sink has no value: its weight only
lowers the others').

Masks are described structurally (causal, key lengths, a sliding window, segment ids) rather than as a `[T, S]`
array. Causality, the window and the key lengths decide which key blocks a query block can see, and the others
are skipped: causal attention does about half the work of the dense path. Packed segment ids (non-decreasing
along the sequence, as packing writes them) narrow that range further at run time: a query block only visits the
key blocks that hold its own segments. Unsorted ids are applied inside each block, with nothing skipped.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import checks
from jaxformer.ops.attention import check_logit_softcap, check_scale, check_sinks, soft_cap
from jaxformer.ops.masks import MASKED_LOGIT  # also the start of the running max: exp(m - m') never sees inf - inf


class _Plan(NamedTuple):
    """Static description of the computation (hashable: it is a custom_vjp non-differentiable argument)."""

    scale: float
    q_block: int
    kv_block: int
    q_len: int  # T, before padding
    kv_len: int  # S, before padding
    # Key s is visible from query t iff  t - left <= s <= t + right  (None = unbounded on that side).
    left: int | None
    right: int | None
    softcap: float | None = None  # logit soft-capping constant c: logits -> c * tanh(logits / c); None = off


def _key_block_range(plan: _Plan, q_block_index, kv_limit):
    """[lo, hi) of the key blocks that query block `q_block_index` can see (may be empty)."""
    first_q = q_block_index * plan.q_block
    last_q = first_q + plan.q_block - 1
    lo = 0 if plan.left is None else jnp.maximum(0, (first_q - plan.left) // plan.kv_block)
    last_key = kv_limit - 1 if plan.right is None else jnp.minimum(last_q + plan.right, kv_limit - 1)
    hi = (last_key + plan.kv_block) // plan.kv_block  # ceil((last_key + 1) / kv_block), 0 if last_key < 0
    return lo, jnp.maximum(hi, lo)


def _query_block_range(plan: _Plan, kv_block_index, num_q_blocks: int):
    """[lo, hi) of the query blocks that can see key block `kv_block_index`."""
    first_k = kv_block_index * plan.kv_block
    last_k = first_k + plan.kv_block - 1
    lo = 0 if plan.right is None else jnp.maximum(0, (first_k - plan.right) // plan.q_block)
    hi = num_q_blocks if plan.left is None else jnp.minimum(num_q_blocks, (last_k + plan.left) // plan.q_block + 1)
    return lo, jnp.maximum(hi, lo)


def _segment_block_ranges(plan: _Plan, q_ids, kv_ids):
    """For segment ids `[B, T]` / `[B, S]` (before padding): ([nq, 2] the [lo, hi) key blocks each query block can
    reach, [nk, 2] the query blocks each key block can reach), over the whole batch.

    With ids non-decreasing along every sequence, the keys that share a segment with query block i lie between
    the first key whose id is >= the block's first id and the last key whose id is <= its last id (binary
    searches). If any example's ids go down somewhere, every range is the full one: nothing is skipped."""
    T, S = q_ids.shape[1], kv_ids.shape[1]

    def reach(ids_a, ids_b, block_a, block_b, len_a):
        """For each block of sequence a, the [lo, hi) blocks of sequence b holding ids within its id span."""
        starts = np.arange(0, len_a, block_a)
        ends = np.minimum(starts + block_a, len_a) - 1
        search = jax.vmap(jnp.searchsorted, in_axes=(0, 0, None))
        first = search(ids_b, ids_a[:, starts], "left")  # [B, n]: first position of b with id >= the span's first
        last = search(ids_b, ids_a[:, ends], "right")  # one past the last position of b with id <= its last
        lo = jnp.min(first, axis=0) // block_b
        hi = (jnp.max(last, axis=0) + block_b - 1) // block_b
        return jnp.stack([lo, jnp.maximum(hi, lo)], axis=1).astype(jnp.int32)

    ordered = jnp.all(jnp.diff(q_ids, axis=1) >= 0) & jnp.all(jnp.diff(kv_ids, axis=1) >= 0)
    nq, nk = -(-T // plan.q_block), -(-S // plan.kv_block)
    kv_of_q = jnp.where(ordered, reach(q_ids, kv_ids, plan.q_block, plan.kv_block, T), jnp.array([0, nk], jnp.int32))
    q_of_kv = jnp.where(ordered, reach(kv_ids, q_ids, plan.kv_block, plan.q_block, S), jnp.array([0, nq], jnp.int32))
    return kv_of_q, q_of_kv


def _narrow(lo, hi, ranges, index):
    """[lo, hi) intersected with ranges[index] (no-op when there are no ranges)."""
    if ranges is None:
        return lo, hi
    lo = jnp.maximum(lo, ranges[index, 0])
    return lo, jnp.maximum(jnp.minimum(hi, ranges[index, 1]), lo)


def _block_mask(plan: _Plan, q_start, kv_start, kv_lengths, q_segments, kv_segments):
    """Boolean mask of one (query block, key block) tile, broadcastable to [B, K, G, bq, bk]; None if all True."""
    t = q_start + jnp.arange(plan.q_block)[:, None]
    s = kv_start + jnp.arange(plan.kv_block)[None, :]
    mask = None

    def both(a, b):
        return b if a is None else a & b

    if plan.left is not None:
        mask = both(mask, s >= t - plan.left)
    if plan.right is not None:
        mask = both(mask, s <= t + plan.right)
    if kv_lengths is not None:
        mask = both(mask, s[None] < kv_lengths[:, None, None])  # [B, 1, bk]
    elif plan.kv_len % plan.kv_block:
        mask = both(mask, s < plan.kv_len)  # padded keys
    if q_segments is not None:
        q_ids = jax.lax.dynamic_slice_in_dim(q_segments, q_start, plan.q_block, axis=1)
        kv_ids = jax.lax.dynamic_slice_in_dim(kv_segments, kv_start, plan.kv_block, axis=1)
        mask = both(mask, q_ids[:, :, None] == kv_ids[:, None, :])
    if mask is None:
        return None
    mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)  # [B|1, bq, bk]
    return mask[:, None, None]


def _kv_limit(plan: _Plan, kv_lengths):
    """Keys at or beyond this position are masked for every example (so their blocks can be skipped)."""
    if kv_lengths is None:
        return plan.kv_len
    return jnp.minimum(jnp.max(kv_lengths), plan.kv_len)


def _capped_tile_logits(plan: _Plan, q_tile, k_tile):
    """float32 `cap(scale * q k^T)` of one tile, before masking (cap: the identity without a soft cap)."""
    logits = jnp.einsum("BKGqH,BKkH->BKGqk", q_tile, k_tile, preferred_element_type=jnp.float32)
    return soft_cap(logits * plan.scale, plan.softcap)


def _mask_logits(logits, mask):
    return logits if mask is None else jnp.where(mask, logits, MASKED_LOGIT)


def _tile_logits(plan: _Plan, q_tile, k_tile, mask):
    """The tile's logits: scaled, soft-capped, then masked (as the dense path)."""
    return _mask_logits(_capped_tile_logits(plan, q_tile, k_tile), mask)


def sink_start(sinks, shape):
    """The running max and sum each row starts from, float32 `shape` = [B, K, G, bq]: (MASKED_LOGIT, 0) without
    sinks; with sinks [K, G] (m, l) = (sink, 1), the max kept >= MASKED_LOGIT so that a sink of -inf (no sink)
    gives l = 0 and never inf - inf."""
    if sinks is None:
        return jnp.full(shape, MASKED_LOGIT, jnp.float32), jnp.zeros(shape, jnp.float32)
    sink = jnp.broadcast_to(sinks[None, :, :, None], shape)
    row_max = jnp.maximum(sink, MASKED_LOGIT)
    return row_max, jnp.exp(sink - row_max)


def _forward(plan: _Plan, q, k, v, kv_lengths, q_segments, kv_segments, kv_of_q=None, sinks=None):
    """q [B, K, G, Tp, H], k [B, K, Sp, H], v [B, K, Sp, Hv], sinks None or float32 [K, G]
    -> (out f32 [B, K, G, Tp, Hv], lse [B, K, G, Tp])."""
    B, K, G, Tp, _ = q.shape
    Hv = v.shape[-1]
    kv_limit = _kv_limit(plan, kv_lengths)

    def one_query_block(i):
        q_start = i * plan.q_block
        q_tile = jax.lax.dynamic_slice_in_dim(q, q_start, plan.q_block, axis=3)

        def visit_key_block(j, carry):
            row_max, row_sum, acc = carry
            kv_start = j * plan.kv_block
            k_tile = jax.lax.dynamic_slice_in_dim(k, kv_start, plan.kv_block, axis=2)
            v_tile = jax.lax.dynamic_slice_in_dim(v, kv_start, plan.kv_block, axis=2)
            mask = _block_mask(plan, q_start, kv_start, kv_lengths, q_segments, kv_segments)
            logits = _tile_logits(plan, q_tile, k_tile, mask)
            new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
            probs = jnp.exp(logits - new_max[..., None])
            if mask is not None:
                probs = jnp.where(mask, probs, 0.0)
            correction = jnp.exp(row_max - new_max)
            row_sum = correction * row_sum + jnp.sum(probs, axis=-1)
            pv = jnp.einsum("BKGqk,BKkH->BKGqH", probs.astype(v.dtype), v_tile, preferred_element_type=jnp.float32)
            return new_max, row_sum, correction[..., None] * acc + pv

        init = (
            *sink_start(sinks, (B, K, G, plan.q_block)),
            jnp.zeros((B, K, G, plan.q_block, Hv), jnp.float32),
        )
        lo, hi = _narrow(*_key_block_range(plan, i, kv_limit), kv_of_q, i)
        row_max, row_sum, acc = jax.lax.fori_loop(lo, hi, visit_key_block, init)
        attended = row_sum > 0.0  # False only for rows that see no key (nor sink) at all: output 0, lse +inf.
        out = acc / jnp.where(attended, row_sum, 1.0)[..., None]
        lse = jnp.where(attended, row_max + jnp.log(jnp.where(attended, row_sum, 1.0)), jnp.inf)
        return out, lse

    out, lse = jax.lax.map(one_query_block, jnp.arange(Tp // plan.q_block))
    # [nq, B, K, G, bq, ...] -> [B, K, G, nq * bq, ...]
    out = jnp.moveaxis(out, 0, 3).reshape(B, K, G, Tp, Hv)
    lse = jnp.moveaxis(lse, 0, 3).reshape(B, K, G, Tp)
    return out, lse


def _backward(plan: _Plan, q, k, v, kv_lengths, q_segments, kv_segments, q_of_kv, out, lse, dout, sinks=None):
    """(dq, dk, dv, dsinks): dsinks float32 [K, G] (None without sinks)."""
    B, K, _, Tp, H = q.shape
    Sp = k.shape[2]
    num_q_blocks = Tp // plan.q_block
    kv_limit = _kv_limit(plan, kv_lengths)
    delta = jnp.sum(dout.astype(jnp.float32) * out, axis=-1)  # rowsum(do * o) [B, K, G, Tp]
    dsinks = None
    if sinks is not None:  # d/dsigma: -p_sink delta per row; rows with lse = +inf (none here: l >= 1) give 0
        sink_probs = jnp.exp(sinks[None, :, :, None] - lse)
        dsinks = -jnp.sum(sink_probs * delta, axis=(0, 3))

    def one_key_block(dq, j):
        kv_start = j * plan.kv_block
        k_tile = jax.lax.dynamic_slice_in_dim(k, kv_start, plan.kv_block, axis=2)
        v_tile = jax.lax.dynamic_slice_in_dim(v, kv_start, plan.kv_block, axis=2)

        def visit_query_block(i, carry):
            dk, dv, dq = carry
            q_start = i * plan.q_block
            q_tile = jax.lax.dynamic_slice_in_dim(q, q_start, plan.q_block, axis=3)
            do_tile = jax.lax.dynamic_slice_in_dim(dout, q_start, plan.q_block, axis=3)
            lse_tile = jax.lax.dynamic_slice_in_dim(lse, q_start, plan.q_block, axis=3)
            delta_tile = jax.lax.dynamic_slice_in_dim(delta, q_start, plan.q_block, axis=3)
            mask = _block_mask(plan, q_start, kv_start, kv_lengths, q_segments, kv_segments)
            capped = _capped_tile_logits(plan, q_tile, k_tile)
            probs = jnp.exp(_mask_logits(capped, mask) - lse_tile[..., None])
            if mask is not None:
                probs = jnp.where(mask, probs, 0.0)
            dv = dv + jnp.einsum(
                "BKGqk,BKGqH->BKkH", probs.astype(dout.dtype), do_tile, preferred_element_type=jnp.float32
            )
            dprobs = jnp.einsum("BKGqH,BKkH->BKGqk", do_tile, v_tile, preferred_element_type=jnp.float32)
            dlogits = probs * (dprobs - delta_tile[..., None]) * plan.scale
            if plan.softcap is not None:  # d cap(x) / dx = 1 - tanh^2(x / c) = 1 - (cap(x) / c)^2, in [0, 1]
                dlogits = dlogits * (1.0 - jnp.square(capped / plan.softcap))
            dlogits = dlogits.astype(q.dtype)
            dk = dk + jnp.einsum("BKGqk,BKGqH->BKkH", dlogits, q_tile, preferred_element_type=jnp.float32)
            dq_tile = jax.lax.dynamic_slice_in_dim(dq, q_start, plan.q_block, axis=3)
            dq_tile = dq_tile + jnp.einsum("BKGqk,BKkH->BKGqH", dlogits, k_tile, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_tile, q_start, axis=3)
            return dk, dv, dq

        init = (
            jnp.zeros((B, K, plan.kv_block, H), jnp.float32),
            jnp.zeros((B, K, plan.kv_block, v.shape[-1]), jnp.float32),
            dq,
        )
        lo, hi = _narrow(*_query_block_range(plan, j, num_q_blocks), q_of_kv, j)
        hi = jnp.where(kv_start < kv_limit, hi, lo)  # key block beyond every example's length: nothing to do
        dk, dv, dq = jax.lax.fori_loop(lo, hi, visit_query_block, init)
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(one_key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(Sp // plan.kv_block))
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dsinks


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan, q, k, v, kv_lengths, q_segments, kv_segments, kv_of_q, q_of_kv, sinks):
    return _forward(plan, q, k, v, kv_lengths, q_segments, kv_segments, kv_of_q, sinks)[0].astype(q.dtype)


def _attention_fwd(plan, q, k, v, kv_lengths, q_segments, kv_segments, kv_of_q, q_of_kv, sinks):
    out, lse = _forward(plan, q, k, v, kv_lengths, q_segments, kv_segments, kv_of_q, sinks)
    return out.astype(q.dtype), (q, k, v, kv_lengths, q_segments, kv_segments, q_of_kv, out, lse, sinks)


def _attention_bwd(plan, residuals, dout):
    q, k, v, kv_lengths, q_segments, kv_segments, q_of_kv, out, lse, sinks = residuals
    dq, dk, dv, dsinks = _backward(plan, q, k, v, kv_lengths, q_segments, kv_segments, q_of_kv, out, lse, dout, sinks)
    return dq, dk, dv, None, None, None, None, None, dsinks


_attention.defvjp(_attention_fwd, _attention_bwd)


def _pad_axis(x, axis: int, multiple: int, value=0):
    pad = -x.shape[axis] % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(
    query,
    key,
    value,
    *,
    is_causal: bool = False,
    kv_lengths=None,
    window: int | None = None,
    segment_ids=None,
    scale: float | None = None,
    block_size: int = 512,
    logit_softcap: float | None = None,
    sinks=None,
) -> jax.Array:
    """Exact attention computed block by block, never materialising the `[T, S]` matrix (forward or backward).

    Equals `dot_product_attention(query, key, value, mask=..., scale=scale, logit_softcap=logit_softcap,
    sinks=sinks)` with the mask described by the arguments below (to float32 rounding), in O((T + S) * H) memory.
    Blocks that causality, the window, the key lengths or (non-decreasing) segment ids mask fully are skipped.

    Args:
      query: `[B, T, N, H]`.
      key: `[B, S, K, H]`, N a multiple of K.
      value: `[B, S, K, Hv]`.
      is_causal: query t sees keys s <= t (as `causal_mask(T, S)`).
      kv_lengths: int `[B]`: key s is valid iff `s < kv_lengths[b]` (as `padding_mask` on the keys).
      window: sliding window (as `sliding_window_mask(T, S, window=window, causal=is_causal)`): query t sees
        keys with `t - window < s <= t` when causal, `|t - s| < window` otherwise.
      segment_ids: int `[B, T]` for self-attention (T == S), or a pair `(q_ids [B, T], kv_ids [B, S])`; tokens
        attend only within equal ids (as `segment_mask`).
      scale: logit scale, a number > 0; defaults to `1 / sqrt(H)`.
      block_size: queries and keys per block (lengths need not be multiples of it; the tail is padded).
      logit_softcap: soft-capping constant c > 0 (Gemma 2): the scaled logits x = scale * q . k become
        `c * tanh(x / c)` (float32) before the mask; the backward pass multiplies their gradient by
        `1 - tanh^2(x / c)`. None (the default): no cap. A static number (not a traced value).
      sinks: float `[N]`, one attention-sink logit per query head (GPT-OSS): each row's online softmax starts from
        it (it joins the normaliser, with no value; see `dot_product_attention`). May be traced; differentiable.
        None (the default): no sink.

    Returns:
      `[B, T, N, Hv]` in the query's dtype; rows that see no key are zeros (all of them when S = 0; T = 0 gives an
      empty output).
    """
    query, key = checks.check_array("query", query), checks.check_array("key", key)
    value = checks.check_array("value", value)
    B, T, S, N, K, H = checks.check_query_key(query, key)
    checks.check_value(value, query, key)
    is_causal = checks.check_flag("is_causal", is_causal)
    block_size = checks.check_positive_int("block_size", block_size)
    scale = float(check_scale(scale, H))
    logit_softcap = check_logit_softcap(logit_softcap)
    logit_softcap = None if logit_softcap is None else float(logit_softcap)
    if window is not None:
        window = checks.check_positive_int("window", window)
    if kv_lengths is not None:
        kv_lengths = checks.check_array("kv_lengths", kv_lengths)
        checks.check_integer("kv_lengths", kv_lengths)
        if kv_lengths.shape != (B,):
            raise ValueError(f"`kv_lengths` must have shape [B] = ({B},); got {checks.shape_str(kv_lengths.shape)}.")
        concrete = checks.concrete_or_none(kv_lengths)
        if concrete is not None and ((concrete < 0) | (concrete > S)).any():
            raise ValueError(f"`kv_lengths` must lie in [0, S={S}]; got {concrete.tolist()}.")
        # Traced lengths cannot be checked; clipping keeps the padded tail of the last block out of reach.
        kv_lengths = jnp.clip(kv_lengths.astype(jnp.int32), 0, S)
    q_segments, kv_segments = checks.check_segment_ids(segment_ids, B, T, S)
    if q_segments is not None:
        q_segments, kv_segments = q_segments.astype(jnp.int32), kv_segments.astype(jnp.int32)
    G, Hv = N // K, value.shape[-1]
    sinks = check_sinks(sinks, N)
    if sinks is not None:
        sinks = sinks.reshape(K, G)  # query head n = k G + g
    if T == 0 or S == 0:  # no query, or no key to attend to: what the dense path gives (no block to visit)
        return jnp.zeros((B, T, N, Hv), query.dtype)

    plan = _Plan(
        scale=scale,
        q_block=min(block_size, T),
        kv_block=min(block_size, S),
        q_len=T,
        kv_len=S,
        left=None if window is None else window - 1,
        right=0 if is_causal else (None if window is None else window - 1),
        softcap=logit_softcap,
    )
    # BTNH -> [B, K, G, T, H] / [B, K, S, H]: heads lead so that each tile is a batched matmul.
    q = _pad_axis(query.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4), 3, plan.q_block)
    k = _pad_axis(key.transpose(0, 2, 1, 3), 2, plan.kv_block)
    v = _pad_axis(value.transpose(0, 2, 1, 3), 2, plan.kv_block)
    kv_of_q = q_of_kv = None
    if q_segments is not None:
        kv_of_q, q_of_kv = _segment_block_ranges(plan, q_segments, kv_segments)
        q_segments = _pad_axis(q_segments, 1, plan.q_block)
        kv_segments = _pad_axis(kv_segments, 1, plan.kv_block, value=-1)
    out = _attention(plan, q, k, v, kv_lengths, q_segments, kv_segments, kv_of_q, q_of_kv, sinks)
    out = out[:, :, :, :T].transpose(0, 3, 1, 2, 4).reshape(B, T, N, Hv)
    return out.astype(query.dtype)
