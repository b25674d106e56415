"""The attention scores that came before scaled dot-product: additive (Bahdanau) and multiplicative (Luong).

Both take the BTNH layout with one key/value head per query head (K == N) and per-head weights, and share the
masked softmax of `dot_product_attention` (True = may attend, empty rows give zeros):

    additive (Bahdanau et al., 2015):   score[t, s] = v . tanh(W_q q_t + W_k k_s)
    multiplicative (Luong et al., 2015, "general"):   score[t, s] = q_t^T W k_s

Neither is scaled by 1 / sqrt(H); that is what experiments/claims compares against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import checks
from jaxformer.ops.attention import check_mask, masked_logits, rows_with_keys


def _check_inputs(query, key, value) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Validates BTNH query/key/value with K == N; returns them as arrays."""
    arrays = []
    for name, x, layout in (
        ("query", query, "[B, T, N, Hq]"),
        ("key", key, "[B, S, N, Hk]"),
        ("value", value, "[B, S, N, Hv]"),
    ):
        x = checks.check_array(name, x)
        checks.check_rank(name, x, 4, layout)
        checks.check_floating(name, x)
        arrays.append(x)
    query, key, value = arrays
    B, T, N, _ = query.shape
    if key.shape[0] != B or key.shape[2] != N:
        raise ValueError(
            f"`key` of shape {checks.shape_str(key.shape)} must be [B={B}, S, N={N}, Hk] to match "
            f"`query` of shape {checks.shape_str(query.shape)}."
        )
    if value.shape[:3] != key.shape[:3]:
        raise ValueError(
            f"`value` of shape {checks.shape_str(value.shape)} must share [B, S, N] = "
            f"{checks.shape_str(key.shape[:3])} with `key`."
        )
    return query, key, value


def _check_weight(name: str, w, want: tuple[int, ...] | None, layout: str) -> jax.Array:
    """A floating weight of shape `want` (None: only the rank of `layout`); returned as an array."""
    w = checks.check_array(name, w)
    checks.check_floating(name, w)
    if want is not None and w.shape != want:
        raise ValueError(
            f"`{name}` must have shape {layout} = {checks.shape_str(want)}; got {checks.shape_str(w.shape)}."
        )
    return w


def _attend(scores_BNTS, value, mask, dtype) -> jax.Array:
    probs = jax.nn.softmax(masked_logits(scores_BNTS, mask), axis=-1)
    out = jnp.einsum("BNTS,BSNH->BTNH", probs.astype(value.dtype), value, preferred_element_type=jnp.float32)
    if mask is not None:
        out = out * jnp.moveaxis(rows_with_keys(mask), 1, 2)  # rows with no key: zeros
    return out.astype(dtype)


def additive_attention(query, key, value, w_query, w_key, v, *, mask=None) -> jax.Array:
    """Additive (Bahdanau) attention:

        score[b, n, t, s] = sum_a v[n, a] tanh((q W_q)[b, t, n, a] + (k W_k)[b, s, n, a])

    Materialises `[B, N, T, S, A]` activations: this cost, against the `[B, N, T, S]` of a dot product, is
    why dot-product attention won on accelerators.

    Args:
      query: `[B, T, N, Hq]`.
      key: `[B, S, N, Hk]`.
      value: `[B, S, N, Hv]`.
      w_query: `[N, Hq, A]` query projection (A = the attention MLP width).
      w_key: `[N, Hk, A]` key projection.
      v: `[N, A]` score vector.
      mask: bool, broadcastable to `[B, N, T, S]`; True = may attend.

    Returns:
      `[B, T, N, Hv]` in the query's dtype.
    """
    query, key, value = _check_inputs(query, key, value)
    (B, T, N, _), S = query.shape, key.shape[1]
    v = _check_weight("v", v, None, "[N, A]")
    checks.check_rank("v", v, 2, "[N, A]")
    A = v.shape[1]
    _check_weight("v", v, (N, A), "[N, A]")
    w_query = _check_weight("w_query", w_query, (N, query.shape[-1], A), "[N, Hq, A]")
    w_key = _check_weight("w_key", w_key, (N, key.shape[-1], A), "[N, Hk, A]")
    mask = check_mask(mask, (B, N, T, S))
    q_proj = jnp.einsum("BTNH,NHA->BNTA", query, w_query, preferred_element_type=jnp.float32)
    k_proj = jnp.einsum("BSNH,NHA->BNSA", key, w_key, preferred_element_type=jnp.float32)
    hidden = jnp.tanh(q_proj[:, :, :, None, :] + k_proj[:, :, None, :, :])  # [B, N, T, S, A]
    scores = jnp.einsum("BNTSA,NA->BNTS", hidden, v.astype(jnp.float32))
    return _attend(scores, value, mask, query.dtype)


def multiplicative_attention(query, key, value, w, *, mask=None) -> jax.Array:
    """Multiplicative (Luong "general") attention: `score[b, n, t, s] = q[b, t, n] . W[n] . k[b, s, n]`, unscaled.

    Args:
      query: `[B, T, N, Hq]`.
      key: `[B, S, N, Hk]`.
      value: `[B, S, N, Hv]`.
      w: `[N, Hq, Hk]` bilinear form per head (the identity gives unscaled dot-product attention).
      mask: bool, broadcastable to `[B, N, T, S]`; True = may attend.

    Returns:
      `[B, T, N, Hv]` in the query's dtype.
    """
    query, key, value = _check_inputs(query, key, value)
    (B, T, N, _), S = query.shape, key.shape[1]
    w = _check_weight("w", w, (N, query.shape[-1], key.shape[-1]), "[N, Hq, Hk]")
    mask = check_mask(mask, (B, N, T, S))
    q_w = jnp.einsum("BTNH,NHJ->BTNJ", query, w, preferred_element_type=jnp.float32)
    scores = jnp.einsum("BTNJ,BSNJ->BNTS", q_w, key.astype(jnp.float32))
    return _attend(scores, value, mask, query.dtype)
