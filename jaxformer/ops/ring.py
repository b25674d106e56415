"""Ring attention: exact attention over a sequence split across the devices of one mesh axis.

Inside `jax.shard_map` over a mesh axis (`axis_name`, n devices) that splits the sequence, device i holds a slice
of the queries and the same slice of the keys and values. The key/value blocks travel around the ring
(`jax.lax.ppermute`, i -> i + 1, n - 1 times): at step s = 0 .. n-1 device i holds the block of device
j = (i - s) mod n and folds it into the online softmax of its own queries (Liu, Zaharia & Abbeel 2023, "Ring
Attention with Blockwise Transformers"). With running row max m, normaliser l and unnormalised output o (started
at m = MASKED_LOGIT, l = 0, o = 0), one step does, for the local queries q and the visiting block (k_j, v_j):

    s = scale * q k_j^T                      (masked entries -> MASKED_LOGIT, their p -> 0; with a soft-cap c,
                                              s -> c tanh(s / c) first, and the backward's ds gains the factor
                                              1 - tanh^2(s / c))
    m' = max(m, rowmax(s));   p = exp(s - m')
    l' = exp(m - m') l + rowsum(p);   o' = exp(m - m') o + p v_j

and the output is o / l (0 for a row that saw no key), as `blockwise_attention`'s forward does per key block.
Within a step the visiting block is folded in `block_size` keys at a time (the same update per key block), so no
device ever holds more than `[T_local, block_size]` scores, nor more than one visiting key/value block: memory per
device is linear in T_local = T / n.

The backward pass (a custom VJP) saves only the output o and the row log-sum-exp L = m + log l, and rings again.
With delta = rowsum(do * o) computed locally, each step recomputes the tile's probabilities p = exp(s - L) and

    dv_j += p^T do,   dp = do v_j^T,   ds = scale * p * (dp - delta),   dk_j += ds^T q,   dq += ds k_j.

dq stays home; the accumulators dk_j, dv_j travel with their block (k_j, v_j): after its n visits (n ppermutes, one
more than k and v take) block j's accumulators are back on device j, holding the contributions of every query.

Positions and masks. Query and key slices are laid out over the global sequence by `layout`:

  "contiguous": device i holds global positions [i T_local, (i + 1) T_local).
  "zigzag": the global sequence is cut into 2n chunks of c = T_local / 2 and device i holds chunks i and
    2n - 1 - i, concatenated (`zigzag` lays a global array out that way, `unzigzag` undoes it).

Causality and the sliding window compare global positions (the window as `sliding_window_mask` /
`blockwise_attention`: causal t - window < s <= t, otherwise |t - s| < window); segment ids compare the query's id
with the visiting key's id (the key ids travel with k and v). Key blocks whose whole tile is masked are skipped at
run time (`lax.cond`; a far block under a sliding window, another document): with a causal contiguous layout
device i computes i + 1 of the n steps, so the last device does all n and the first only one. Zigzag balances
that: for j < i only the first half of the visiting keys (chunk j) is visible to any local query, and for j > i
only the second half of the local queries (chunk 2n - 1 - i) sees any key, so every device computes its own
(diagonal) tile and n - 1 half tiles.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import checks
from jaxformer.ops.attention import check_logit_softcap, check_scale, check_sinks, soft_cap
from jaxformer.ops.blockwise import sink_start
from jaxformer.ops.masks import MASKED_LOGIT

LAYOUTS = ("contiguous", "zigzag")
DEFAULT_BLOCK = 512  # key columns per block inside a ring step, at most (the largest divisor of the tile's width)


class _Ring(NamedTuple):
    """Static description of the computation (hashable: it is a custom_vjp non-differentiable argument)."""

    axis_name: str
    n: int  # devices on the ring
    scale: float
    layout: str
    q_len: int  # T_local
    kv_len: int  # S_local
    causal: bool
    softcap: float | None  # logits -> softcap * tanh(logits / softcap) (Gemma 2), before the mask
    block_size: int | None  # key columns per block inside a step (None: `_key_block`'s default)
    alibi: tuple[tuple[float, ...], ...] | None  # ALiBi slopes [K][G]: logits - slope |q_pos - k_pos| (None: none)
    # Key s is visible from query t iff  t - left <= s <= t + right  (None = unbounded on that side).
    left: int | None
    right: int | None


# -- Layouts ----------------------------------------------------------------------------------------------------------


def _zigzag_order(n: int) -> list[int]:
    """The 2n chunks in zigzag order: 0, 2n-1, 1, 2n-2, ..., n-1, n (device i gets chunks i and 2n-1-i)."""
    return [chunk for i in range(n) for chunk in (i, 2 * n - 1 - i)]


def _check_zigzag_args(x, n, axis):
    x = checks.check_array("x", x)
    n = checks.check_positive_int("n", n)
    axis = checks.check_int("axis", axis, low=-x.ndim, high=x.ndim - 1) % x.ndim
    if x.shape[axis] % (2 * n):
        raise ValueError(
            f"The zigzag layout cuts axis {axis} into 2n = {2 * n} chunks, so its length must be a multiple of "
            f"{2 * n}; got shape {checks.shape_str(x.shape)}."
        )
    return x, n, axis


def _permute_chunks(x, order: list[int], axis: int):
    """x's chunks along `axis` in `order`: NumPy in, NumPy out (a host batch stays on the host); else jax."""
    xp = np if isinstance(x, np.ndarray) else jnp
    chunk = x.shape[axis] // len(order)
    chunks = x.reshape((*x.shape[:axis], len(order), chunk, *x.shape[axis + 1 :]))
    chunks = xp.take(chunks, xp.asarray(order), axis=axis)
    return chunks.reshape(x.shape)


def zigzag(x, n: int, axis: int = 1) -> jax.Array:
    """Lays a global sequence out in ring attention's zigzag order for n devices.

    The axis (length L, a multiple of 2n) is cut into 2n chunks of L / 2n; the result holds chunks
    0, 2n-1, 1, 2n-2, ..., n-1, n, so that splitting it contiguously over n devices gives device i chunks i and
    2n-1-i (what `ring_attention(..., layout="zigzag")` expects). Apply it to every array that is split on the
    sequence (tokens, targets, segment ids, ...); `unzigzag` undoes it.

    Args:
      x: an array with the sequence on `axis` (default 1: `[B, T, ...]`).
      n: the number of devices of the ring.
      axis: the sequence axis.

    Returns:
      x with its chunks reordered (same shape and dtype; a NumPy array for a NumPy input).
    """
    x, n, axis = _check_zigzag_args(x, n, axis)
    return _permute_chunks(x, _zigzag_order(n), axis)


def unzigzag(x, n: int, axis: int = 1) -> jax.Array:
    """Inverse of `zigzag(x, n, axis)`: the global sequence back in order (e.g. ring attention's gathered output)."""
    x, n, axis = _check_zigzag_args(x, n, axis)
    order = _zigzag_order(n)
    inverse = [order.index(chunk) for chunk in range(2 * n)]
    return _permute_chunks(x, inverse, axis)


def _positions(layout: str, index, n: int, length: int):
    """Global positions int32 `[length]` of the slice held by device `index` (may be traced) of n."""
    local = jnp.arange(length, dtype=jnp.int32)
    if layout == "contiguous":
        return index * length + local
    c = length // 2
    chunk = jnp.where(local < c, index, 2 * n - 1 - index)
    return chunk * c + local % c


def _axis_size(axis_name) -> int:
    try:
        return jax.lax.axis_size(axis_name)
    except NameError as err:
        raise NameError(
            f"ring attention: axis_name={axis_name!r} is not bound. Call it inside jax.shard_map over a mesh "
            "that has this axis (the one that splits the sequence), with q, k, v (and segment ids) sharded on "
            f"their sequence axis ({err})."
        ) from None


def ring_positions(length: int, *, axis_name: str = "context", layout: str = "contiguous") -> jax.Array:
    """Global positions int32 `[length]` of this device's slice of a sequence split over `axis_name` in `layout`.

    Inside `shard_map`: device i holds `[i length, (i + 1) length)` ("contiguous") or chunks i and 2n - 1 - i of
    length / 2 ("zigzag"). These are the positions `ring_attention` masks with; use them for position embeddings
    (RoPE) of a sharded sequence.
    """
    length = checks.check_nonnegative_int("length", length)
    layout = checks.check_choice("layout", layout, LAYOUTS)
    n = _axis_size(axis_name)
    if layout == "zigzag" and length % 2:
        raise ValueError(f"layout='zigzag' holds two chunks per device, so length must be even; got {length}.")
    return _positions(layout, jax.lax.axis_index(axis_name), n, length)


# -- The kernel ---------------------------------------------------------------------------------------------------


def _varying_axes(x) -> frozenset:
    """The mesh axes over which x varies inside shard_map (empty outside, or without the check)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()))


def _vary_like(x, *refs):
    """x marked as varying over every mesh axis any of `refs` varies over (fori_loop and cond need one type)."""
    want = frozenset().union(*(_varying_axes(r) for r in refs if r is not None))
    missing = tuple(sorted(want - _varying_axes(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _tile_mask(ring: _Ring, q_pos, k_pos, q_ids, k_ids, check_future: bool = True):
    """Boolean mask of one tile, broadcastable to [B, K, G, t, s]; None when nothing is masked. `check_future`
    False: the tile is known to hold no key after its queries (a causal zigzag half tile), so that test is left out.
    """
    t, s = q_pos[:, None], k_pos[None, :]
    mask = None

    def both(a, b):
        return b if a is None else a & b

    if ring.left is not None:
        mask = both(mask, s >= t - ring.left)
    if ring.right is not None and (check_future or not ring.causal):
        mask = both(mask, s <= t + ring.right)
    if q_ids is not None:
        mask = both(mask, q_ids[:, :, None] == k_ids[:, None, :])
    if mask is None:
        return None
    mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)  # [B|1, t, s]
    return mask[:, None, None]


def _tiles(ring: _Ring):
    """The (query rows, key columns, whether causality must be checked) each ring step computes, as static slices:
    one entry per `lax.switch` branch.

    Zigzag + causal: branch 0 (the device's own block) the whole tile, branch 1 (a block from an earlier device)
    every query against the first half of the keys, branch 2 (from a later device) the second half of the queries
    against every key: the other halves hold no visible pair, and these halves no future key. Otherwise one branch,
    the whole tile."""
    rows, cols = slice(0, ring.q_len), slice(0, ring.kv_len)
    if ring.layout == "zigzag" and ring.causal and ring.n > 1:
        return [
            (rows, cols, True),
            (rows, slice(0, ring.kv_len // 2), False),
            (slice(ring.q_len // 2, None), cols, False),
        ]
    return [(rows, cols, True)]


def _take(x, part: slice, axis: int):
    """x[part] along `axis` (a static slice; x itself when it is the whole axis)."""
    start, stop, _ = part.indices(x.shape[axis])
    return x if (start, stop) == (0, x.shape[axis]) else jax.lax.slice_in_dim(x, start, stop, axis=axis)


def _put(x, part: slice, y, axis: int):
    """x with x[part] along `axis` replaced by y (y itself when the part is the whole axis)."""
    start, stop, _ = part.indices(x.shape[axis])
    return y if (start, stop) == (0, x.shape[axis]) else jax.lax.dynamic_update_slice_in_dim(x, y, start, axis)


def _branch(ring: _Ring, index, source):
    """Which entry of `_tiles` step (index, source) computes."""
    if len(_tiles(ring)) == 1:
        return jnp.int32(0)
    return jnp.where(source == index, 0, jnp.where(source < index, 1, 2)).astype(jnp.int32)


def _key_block(ring: _Ring, width: int) -> int:
    """The key block a tile of `width` key columns is computed in: `ring.block_size` (which must divide it), or
    by default the largest divisor of width up to DEFAULT_BLOCK; the whole width when that divisor is under 64
    (a prime width, say: blocks that small would cost more than the tile's memory saves)."""
    if ring.block_size is not None:
        return ring.block_size
    block = max(d for d in range(1, min(width, DEFAULT_BLOCK) + 1) if width % d == 0)
    return block if block >= min(width, 64) else width


def _alibi_bias(ring: _Ring, q_pos, k_pos):
    """ALiBi's bias of one tile, float32 [B|1, K, G, t, s]: -slope_n |q_pos - k_pos| (`ops.alibi_bias`), from the
    positions int32 [B|1, t] and [B|1, s]; `ring.alibi` holds the slopes as [K][G] (query head n = k G + g)."""
    slopes = jnp.asarray(ring.alibi, jnp.float32)[None, :, :, None, None]  # [1, K, G, 1, 1]
    distance = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)  # [B|1, t, s]
    return -slopes * distance[:, None, None]


def _run_tile(ring: _Ring, compute, state, tile_args, rows, cols, check_future, index, source):
    """compute(state, rows, start, size, mask, bias) over the tile's key blocks [start, start + size) in turn (an
    online softmax: the scores held at once are `[rows, size]`, not the whole tile), each skipped (state unchanged)
    when its mask hides every pair. `tile_args` = ((q_ids, q_alibi_pos), (k_ids, k_alibi_pos)), None where unused."""
    (q_ids, q_ap), (k_ids, k_ap) = tile_args
    q_pos = _positions(ring.layout, index, ring.n, ring.q_len)[rows]
    first, stop, _ = cols.indices(ring.kv_len)
    k_pos = _positions(ring.layout, source, ring.n, ring.kv_len)[first:stop]
    if q_ids is not None:
        q_ids, k_ids = _take(q_ids, rows, 1), _take(k_ids, cols, 1)
    if q_ap is not None:
        q_ap, k_ap = _take(q_ap, rows, 1), _take(k_ap, cols, 1)
    size = _key_block(ring, stop - first)

    def block(j, st):
        offset = j * size
        pos = jax.lax.dynamic_slice_in_dim(k_pos, offset, size)
        ids = None if k_ids is None else jax.lax.dynamic_slice_in_dim(k_ids, offset, size, axis=1)
        mask = _tile_mask(ring, q_pos, pos, q_ids, ids, check_future)
        bias = None
        if q_ap is not None:
            bias = _alibi_bias(ring, q_ap, jax.lax.dynamic_slice_in_dim(k_ap, offset, size, axis=1))
        run = lambda st: compute(st, rows, first + offset, size, mask, bias)
        return run(st) if mask is None else jax.lax.cond(jnp.any(mask), run, lambda st: st, st)

    if size == stop - first:
        return block(0, state)
    return jax.lax.fori_loop(0, (stop - first) // size, block, state)


def _step(ring: _Ring, compute, state, tile_args, index, src):
    """One ring step: the tile(s) of (local queries, the key block from device `src`) that can hold visible pairs,
    chosen at run time."""
    branches = [
        functools.partial(_run_tile, ring, compute, rows=rows, cols=cols, check_future=check, index=index, source=src)
        for rows, cols, check in _tiles(ring)
    ]
    if len(branches) == 1:
        return branches[0](state, tile_args)
    return jax.lax.switch(_branch(ring, index, src), branches, state, tile_args)


def _shift(ring: _Ring, *xs):
    """Each array sent one device along the ring (i -> i + 1)."""
    perm = [(i, (i + 1) % ring.n) for i in range(ring.n)]
    return tuple(None if x is None else jax.lax.ppermute(x, ring.axis_name, perm) for x in xs)


def _forward(ring: _Ring, q, k, v, q_meta, k_meta, sinks=None):
    """q [B, K, G, T, H], k [B, K, S, H], v [B, K, S, Hv], q_meta / k_meta (segment ids, ALiBi positions) int32
    [B|1, T] / [B|1, S] or None each -> (out f32 [B, K, G, T, Hv], lse f32 [B, K, G, T])."""
    B, K, G, T, _ = q.shape
    index = jax.lax.axis_index(ring.axis_name)
    refs = (q, k, v, *q_meta, *k_meta, index)

    def compute(state, rows, start, size, mask, bias):
        row_max, row_sum, acc, k, v = state
        q_tile = _take(q, rows, 3)
        k_tile, v_tile = (jax.lax.dynamic_slice_in_dim(x, start, size, axis=2) for x in (k, v))
        logits = soft_cap(
            jnp.einsum("BKGqH,BKkH->BKGqk", q_tile, k_tile, preferred_element_type=jnp.float32) * ring.scale,
            ring.softcap,
        )
        if bias is not None:  # after the soft-cap, as dot_product_attention's bias
            logits = logits + bias
        if mask is not None:
            logits = jnp.where(mask, logits, MASKED_LOGIT)
        old_max = _take(row_max, rows, 3)
        new_max = jnp.maximum(old_max, jnp.max(logits, axis=-1))
        probs = jnp.exp(logits - new_max[..., None])
        if mask is not None:  # a row with nothing visible yet has max MASKED_LOGIT: exp(0) = 1 without this
            probs = jnp.where(mask, probs, 0.0)
        correction = jnp.exp(old_max - new_max)
        pv = jnp.einsum("BKGqk,BKkH->BKGqH", probs.astype(v.dtype), v_tile, preferred_element_type=jnp.float32)
        row_sum = _put(row_sum, rows, correction * _take(row_sum, rows, 3) + jnp.sum(probs, axis=-1), 3)
        acc = _put(acc, rows, correction[..., None] * _take(acc, rows, 3) + pv, 3)
        return _put(row_max, rows, new_max, 3), row_sum, acc, k, v

    def step(s, carry):
        stats, (k, v, k_meta) = carry
        source = (index - s) % ring.n
        visiting = _shift(ring, k, v, *k_meta)  # sent before the compute, which does not need it: may overlap
        *stats, _, _ = _step(ring, compute, (*stats, k, v), (q_meta, k_meta), index, source)
        return tuple(_vary_like(x, *refs) for x in stats), (*visiting[:2], visiting[2:])

    stats = (*sink_start(sinks, (B, K, G, T)), jnp.zeros((B, K, G, T, v.shape[-1]), jnp.float32))
    stats = tuple(_vary_like(x, *refs) for x in stats)
    stats, (k, v, k_meta) = jax.lax.fori_loop(0, ring.n - 1, step, (stats, (k, v, k_meta)))
    source = (index - (ring.n - 1)) % ring.n  # the last block: computed, not sent on
    row_max, row_sum, acc, _, _ = _step(ring, compute, (*stats, k, v), (q_meta, k_meta), index, source)
    attended = row_sum > 0.0  # False only for rows that saw no key (nor sink) at all: output 0, lse +inf.
    out = acc / jnp.where(attended, row_sum, 1.0)[..., None]
    lse = jnp.where(attended, row_max + jnp.log(jnp.where(attended, row_sum, 1.0)), jnp.inf)
    return out, lse


def _backward(ring: _Ring, q, k, v, q_meta, k_meta, sinks, out, lse, dout):
    """(dq, dk, dv) in the dtypes of q, k, v, and dsinks float32 [K, G] (None without sinks); dk and dv ring with
    their block and come home after n shifts."""
    index = jax.lax.axis_index(ring.axis_name)
    refs = (q, k, v, *q_meta, *k_meta, index)
    delta = jnp.sum(dout.astype(jnp.float32) * out, axis=-1)  # rowsum(do * o) [B, K, G, T]
    dsinks = None
    if sinks is not None:  # d/dsigma = -sum over rows of p_sink delta: this device's rows, then summed over the mesh
        dsinks = -jnp.sum(jnp.exp(sinks[None, :, :, None] - lse) * delta, axis=(0, 3))
        over = tuple(sorted(_varying_axes(dsinks) - _varying_axes(sinks)))
        dsinks = jax.lax.psum(dsinks, over) if over else dsinks

    def compute(state, rows, start, size, mask, bias):
        dq, k, v, dk, dv = state
        q_tile, do_tile = _take(q, rows, 3), _take(dout, rows, 3)
        k_tile, v_tile = (jax.lax.dynamic_slice_in_dim(x, start, size, axis=2) for x in (k, v))
        capped = soft_cap(
            jnp.einsum("BKGqH,BKkH->BKGqk", q_tile, k_tile, preferred_element_type=jnp.float32) * ring.scale,
            ring.softcap,
        )
        logits = capped if bias is None else capped + bias  # the bias is a constant: no gradient through it
        logits = logits if mask is None else jnp.where(mask, logits, MASKED_LOGIT)
        probs = jnp.exp(logits - _take(lse, rows, 3)[..., None])  # rows that see nothing: lse = +inf, p = 0
        if mask is not None:
            probs = jnp.where(mask, probs, 0.0)
        dv_tile = jnp.einsum("BKGqk,BKGqH->BKkH", probs.astype(dout.dtype), do_tile, preferred_element_type=jnp.float32)
        dprobs = jnp.einsum("BKGqH,BKkH->BKGqk", do_tile, v_tile, preferred_element_type=jnp.float32)
        dlogits = probs * (dprobs - _take(delta, rows, 3)[..., None]) * ring.scale
        if ring.softcap is not None:  # d(c tanh(x / c)) / dx = 1 - (capped / c)^2 (masked entries have p = 0)
            dlogits = dlogits * (1.0 - jnp.square(capped / ring.softcap))
        dlogits = dlogits.astype(q.dtype)
        dk_tile = jnp.einsum("BKGqk,BKGqH->BKkH", dlogits, q_tile, preferred_element_type=jnp.float32)
        dq_tile = jnp.einsum("BKGqk,BKkH->BKGqH", dlogits, k_tile, preferred_element_type=jnp.float32)
        dq = _put(dq, rows, _take(dq, rows, 3) + dq_tile, 3)
        dk, dv = (
            jax.lax.dynamic_update_slice_in_dim(x, jax.lax.dynamic_slice_in_dim(x, start, size, 2) + x_tile, start, 2)
            for x, x_tile in ((dk, dk_tile), (dv, dv_tile))
        )
        return dq, k, v, dk, dv

    def visit(dq, k, v, k_meta, dk, dv, s):
        source = (index - s) % ring.n
        dq, _, _, dk, dv = _step(ring, compute, (dq, k, v, dk, dv), (q_meta, k_meta), index, source)
        return tuple(_vary_like(x, *refs) for x in (dq, dk, dv))

    def step(s, carry):
        dq, (k, v, k_meta, dk, dv) = carry
        k_next, v_next, *meta_next = _shift(ring, k, v, *k_meta)  # independent of this step's compute
        dq, dk, dv = visit(dq, k, v, k_meta, dk, dv, s)
        dk, dv = _shift(ring, dk, dv)  # the accumulators follow their block
        return dq, (k_next, v_next, tuple(meta_next), dk, dv)

    zeros = [_vary_like(jnp.zeros(x.shape, jnp.float32), *refs) for x in (q, k, v)]
    dq, (k, v, k_meta, dk, dv) = jax.lax.fori_loop(0, ring.n - 1, step, (zeros[0], (k, v, k_meta, *zeros[1:])))
    dq, dk, dv = visit(dq, k, v, k_meta, dk, dv, ring.n - 1)
    if ring.n > 1:  # block (index + 1)'s accumulators, after its last visit here, go home
        dk, dv = _shift(ring, dk, dv)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dsinks


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_attention(ring, q, k, v, q_meta, k_meta, sinks):
    return _forward(ring, q, k, v, q_meta, k_meta, sinks)[0].astype(q.dtype)


def _ring_attention_fwd(ring, q, k, v, q_meta, k_meta, sinks):
    out, lse = _forward(ring, q, k, v, q_meta, k_meta, sinks)
    return out.astype(q.dtype), (q, k, v, q_meta, k_meta, sinks, out, lse)


def _ring_attention_bwd(ring, residuals, dout):
    dq, dk, dv, dsinks = _backward(ring, *residuals, dout)
    q_meta, k_meta = residuals[3], residuals[4]
    no_grad = lambda meta: tuple(None for _ in meta)  # integer ids and positions
    return dq, dk, dv, no_grad(q_meta), no_grad(k_meta), dsinks


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


def ring_attention(
    query,
    key,
    value,
    *,
    axis_name: str = "context",
    causal: bool = False,
    segment_ids=None,
    window: int | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
    sinks=None,
    alibi_slopes=None,
    positions=None,
    layout: str = "contiguous",
    block_size: int | None = None,
) -> jax.Array:
    """Exact attention over a sequence split across the devices of mesh axis `axis_name` (call inside shard_map).

    Equals `dot_product_attention` on the gathered global sequence (to float32 rounding), forward and backward,
    with the mask described by the arguments below, while each device holds only its own slice of the queries, one
    visiting key/value block and `[T_local, block_size]` tiles of scores: the key/value blocks ring around the n devices
    of `axis_name` (`jax.lax.ppermute`, n - 1 shifts forward; the backward shifts them again, with their dk / dv
    accumulators). See the module docstring for the maths.

    Args:
      query: `[B, T_local, N, H]`, this device's slice of the queries (sharded on T over `axis_name`).
      key: `[B, S_local, K, H]`, N a multiple of K (grouped-query attention), sharded like the query.
      value: `[B, S_local, K, Hv]`.
      axis_name: the shard_map mesh axis that splits the sequence (n = its size; n = 1 is plain attention).
      causal: query at global position t sees keys at s <= t. Needs S_local == T_local (one sequence).
      segment_ids: int `[B, T_local]` sharded like the query (tokens attend only within equal ids; the key side's
        ids ring with the keys), or a pair `(q_ids [B, T_local], kv_ids [B, S_local])`. Ids may change anywhere.
      window: sliding window, as `sliding_window_mask(window=window, causal=causal)` on global positions: causal
        `t - window < s <= t`, otherwise `|t - s| < window`. Needs S_local == T_local.
      scale: logit scale, a number > 0; defaults to `1 / sqrt(H)`.
      logit_softcap: c > 0 soft-caps the scaled logits, `s -> c tanh(s / c)` before the mask (Gemma 2), as
        `dot_product_attention(logit_softcap=c)`; None (default) leaves them alone.
      sinks: float `[N]`, one attention-sink logit per query head (GPT-OSS), as `dot_product_attention(sinks=)`:
        each row's softmax normaliser also holds exp(sink), which attends to nothing. Replicated (or split like
        the heads); its gradient is summed over the devices that share it.
      alibi_slopes: ALiBi (Press et al. 2022), concrete floats `[N]` (`ops.alibi_slopes(N)`): the bias
        `-slope_n |p_t - p_s|` is added to the (soft-capped) logits, as `dot_product_attention(bias=...)` with
        `ops.alibi_bias`. Needs S_local == T_local.
      positions: with `alibi_slopes`, int `[B, T_local]` sharded like the query: the positions the bias measures
        (per-document positions of packed rows, say); the key side's ring with the keys. Default: the global
        positions of the layout (`ring_positions`).
      layout: how the global sequence is split: "contiguous" (device i holds positions
        `[i T_local, (i + 1) T_local)`) or "zigzag" (device i holds chunks i and 2n - 1 - i of the 2n chunks of
        T_local / 2; lay the inputs out with `zigzag`, which balances causal work over the devices). Only causal
        and window masks depend on it.
      block_size: key columns per block within a ring step: each step folds its visiting block into the online
        softmax `block_size` keys at a time, so a device holds `[T_local, block_size]` scores at once (memory linear
        in T_local), and blocks whose mask hides every pair are skipped. Must divide S_local (and S_local / 2 with
        a causal zigzag layout, whose steps see half blocks). Default: the largest divisor of the step's width up
        to 512 (the whole width when that is under 64: a prime width).

    Returns:
      `[B, T_local, N, Hv]` in the query's dtype, this device's slice of the output; a row that sees no key is
      zeros (and its gradients are zeros, never NaN).
    """
    query, key, value = (checks.check_array(name, x) for name, x in (("query", query), ("key", key), ("value", value)))
    B, T, S, N, K, H = checks.check_query_key(query, key)
    checks.check_value(value, query, key)
    causal = checks.check_flag("causal", causal)
    layout = checks.check_choice("layout", layout, LAYOUTS)
    scale = float(check_scale(scale, H))
    logit_softcap = check_logit_softcap(logit_softcap)
    logit_softcap = None if logit_softcap is None else float(logit_softcap)
    sinks = check_sinks(sinks, N)
    alibi = None
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, np.float64)
        if slopes.shape != (N,) or not np.all(np.isfinite(slopes)):
            raise ValueError(f"`alibi_slopes` must be {N} finite numbers (one per query head); got {alibi_slopes!r}.")
        if T != S:
            raise ValueError(
                f"ring_attention with `alibi_slopes` measures distances within one sequence: T_local={T} must equal "
                f"S_local={S}."
            )
        alibi = tuple(tuple(float(x) for x in row) for row in slopes.reshape(K, N // K))
    if positions is not None:
        if alibi is None:
            raise ValueError("`positions` is what the ALiBi bias measures: pass it with `alibi_slopes`.")
        positions = checks.check_array("positions", positions)
        if positions.shape != (B, T) or not jnp.issubdtype(positions.dtype, jnp.integer):
            raise ValueError(
                f"`positions` must be int [B={B}, T_local={T}] like the query; got {positions.dtype} "
                f"{checks.shape_str(positions.shape)}."
            )
    if window is not None:
        window = checks.check_positive_int("window", window)
    if (causal or window is not None) and T != S:
        raise ValueError(
            "ring_attention with `causal` or `window` compares positions of one sequence, so the local query and "
            f"key lengths must agree: query of shape {checks.shape_str(query.shape)} has T_local={T}, key of shape "
            f"{checks.shape_str(key.shape)} has S_local={S}."
        )
    if layout == "zigzag" and (T % 2 or S % 2):
        raise ValueError(
            "layout='zigzag' holds two chunks per device, so T_local and S_local must be even; got query shape "
            f"{checks.shape_str(query.shape)} and key shape {checks.shape_str(key.shape)}."
        )
    if block_size is not None:
        block_size = checks.check_positive_int("block_size", block_size)
        widths = [S // 2] if layout == "zigzag" and causal else []
        if any(w % block_size for w in [S, *widths]):
            raise ValueError(
                f"block_size={block_size} must divide the key columns of every ring step: S_local={S}"
                + (f" and its half {S // 2} (causal zigzag)" if widths else "")
                + f"; key shape {checks.shape_str(key.shape)}."
            )
    q_ids, k_ids = checks.check_segment_ids(segment_ids, B, T, S)
    if q_ids is not None:
        q_ids, k_ids = q_ids.astype(jnp.int32), k_ids.astype(jnp.int32)
    n = _axis_size(axis_name)
    G, Hv = N // K, value.shape[-1]
    if T == 0 or S == 0:
        return jnp.zeros((B, T, N, Hv), query.dtype)

    ring = _Ring(
        axis_name=axis_name,
        n=n,
        scale=scale,
        layout=layout,
        q_len=T,
        kv_len=S,
        causal=causal,
        softcap=logit_softcap,
        block_size=block_size,
        alibi=alibi,
        left=None if window is None else window - 1,
        right=0 if causal else (None if window is None else window - 1),
    )
    # BTNH -> [B, K, G, T, H] / [B, K, S, H]: heads lead so that each tile is a batched matmul (query head
    # n = k G + g reads key/value head k).
    q = query.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    sinks = None if sinks is None else sinks.reshape(K, G)
    q_pos = None
    if alibi is not None:
        q_pos = positions.astype(jnp.int32) if positions is not None else None
        if q_pos is None:
            q_pos = _positions(layout, jax.lax.axis_index(axis_name), n, T)[None]
    meta = ((q_ids, q_pos), (k_ids, q_pos))  # self-attention: the keys' positions are the queries'
    out = _ring_attention(ring, q, key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3), *meta, sinks)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, N, Hv)
