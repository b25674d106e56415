"""Scaled dot-product attention (Vaswani et al., 2017), with multi-head, grouped-query and multi-query forms.

    Attention(Q, K, V) = softmax(cap(scale * Q K^T) + bias, masked) V,    scale = 1 / sqrt(H) by default,
    cap(s) = c * tanh(s / c) with c = logit_softcap (Gemma 2's logit soft-capping), cap(s) = s when it is None.

The cap bounds the scaled logits to (-c, c) smoothly, in float32; it acts before the bias and the mask (as Gemma
2's reference attention: scale, cap, then add the mask).

Attention sinks (GPT-OSS): one learned logit s_n per query head joins every softmax normaliser of that head but
has no value, so a row may give part of its weight (or all of it) to "nothing":

    probs[b, n, t, s] = exp(l_s - m) / (sum_s' exp(l_s' - m) + exp(s_n - m)),   m = max(max_s' l_s', s_n)

over the visible keys s of the row (l: the capped, biased logits); the output is sum_s probs v_s, which no longer
sums the values with weights adding up to 1. The sink is a raw logit: neither scaled, capped nor biased.

Layout is BTNH: query `[B, T, N, H]`, key `[B, S, K, H]`, value `[B, S, K, Hv]`. Query head n reads key/value
head `n // G` with G = N / K: K == N is multi-head attention, 1 < K < N grouped-query attention (GQA), K == 1
multi-query attention (MQA). This is the grouping of `jax.nn.dot_product_attention`.

Numerics: the logits and the softmax are float32 whatever the input dtype; the output has the query's dtype. A
query row whose mask is all False attends to nothing: its output and every gradient through it are exactly zero
(not NaN, not a uniform average over masked keys). Empty sequences are allowed: T = 0 gives an empty `[B, 0, N, Hv]`
output, S = 0 (no key at all) an output of zeros, as in every other attention kernel of jaxformer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxformer import checks
from jaxformer.ops.masks import MASKED_LOGIT, causal_mask


def _grouped(x, B, N, K, T, S) -> jax.Array:
    """Reshapes a mask or bias broadcastable to [B, N, T, S] into [B|1, K|1, G|1, T|1, S|1] (a free reshape)."""
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    b, n, t, s = x.shape
    if n == 1:
        return x.reshape(b, 1, 1, t, s)
    return x.reshape(b, K, N // K, t, s)


# Masked logits get the finite MASKED_LOGIT: next to any real logit its exp underflows to exactly 0, and a row
# with no real logit becomes a harmless uniform row (not NaN) that `rows_with_keys` then zeroes. Keeping the plain
# max/exp/sum/divide softmax lets XLA fuse it into one pass over the [T, S] logits.


def check_mask(mask, target: tuple[int, int, int, int]):
    """Validates an attention mask against [B, N, T, S] = `target`; returns it as a rank-4 array (or None)."""
    if mask is None:
        return None
    mask = checks.check_array("mask", mask)
    checks.check_bool("mask", mask, " Pass additive float terms as `bias`.")
    checks.check_broadcastable("mask", mask, target, "[B, N, T, S]")
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def masked_logits(logits, mask, *, clamp: bool = False) -> jax.Array:
    """float32 logits with masked entries replaced by the finite `MASKED_LOGIT`.

    `clamp=True` also lifts -inf (e.g. from a bias) to that value, so that a row of -inf cannot make NaN.
    """
    logits = logits.astype(jnp.float32)
    if clamp:
        logits = jnp.maximum(logits, MASKED_LOGIT)
    return logits if mask is None else jnp.where(mask, logits, MASKED_LOGIT)


def rows_with_keys(mask) -> jax.Array | None:
    """[..., T, 1] True where the mask row allows at least one key (None when there is no mask)."""
    return None if mask is None else jnp.any(mask, axis=-1, keepdims=True)


def check_scale(scale, head_dim: int):
    """The logit scale: `1 / sqrt(H)` when None, else a finite number > 0 (checked when it is concrete)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return checks.check_positive_real("scale", scale)


def check_logit_softcap(logit_softcap):
    """The soft-capping constant: None (no cap), else a finite number > 0 (checked when it is concrete)."""
    if logit_softcap is None:
        return None
    return checks.check_positive_real("logit_softcap", logit_softcap)


def soft_cap(logits, cap) -> jax.Array:
    """`cap * tanh(logits / cap)` (Gemma 2's logit soft-capping); the logits unchanged when `cap` is None."""
    return logits if cap is None else cap * jnp.tanh(logits / cap)


def check_sinks(sinks, num_heads: int):
    """Attention-sink logits: None, or a floating `[N]` array with one logit per query head; returned as float32."""
    if sinks is None:
        return None
    sinks = checks.check_array("sinks", sinks)
    checks.check_floating("sinks", sinks)
    if sinks.shape != (num_heads,):
        raise ValueError(
            f"`sinks` must have shape [N] = ({num_heads},), one logit per query head; got "
            f"{checks.shape_str(sinks.shape)}."
        )
    return sinks.astype(jnp.float32)


def softmax_with_sinks(logits, sinks) -> jax.Array:
    """softmax over the last axis of float32 logits `[B, K, G, T, S]` whose normaliser also holds exp(sink) of each
    head (`sinks` float32 `[K, G]`, or None: the plain softmax). The sink's own probability is not returned.

        probs[..., s] = exp(l_s - m) / (sum_s' exp(l_s' - m) + exp(sink - m)),   m = max(max_s' l_s', sink)

    m carries no gradient (it cancels), as in `jax.nn.softmax`; a sink of -inf is no sink."""
    if sinks is None:
        return jax.nn.softmax(logits, axis=-1)
    sink = sinks[None, :, :, None, None]  # [1, K, G, 1, 1]
    row_max = jnp.max(logits, axis=-1, keepdims=True, initial=MASKED_LOGIT)  # initial: S = 0 has a max too
    row_max = jax.lax.stop_gradient(jnp.maximum(row_max, sink))
    unnormalized = jnp.exp(logits - row_max)
    return unnormalized / (jnp.sum(unnormalized, axis=-1, keepdims=True) + jnp.exp(sink - row_max))


def _grouped_logits(query, key, *, mask, bias, scale, is_causal, logit_softcap=None):
    """Masked float32 logits [B, K, G, T, S], and the user mask grouped [B|1, K|1, G|1, T, S] (or None).

    Validates every argument. The causal mask never empties a row (query t always sees key 0), so only a
    user-given mask is returned for `rows_with_keys`.
    """
    B, T, S, N, K, H = checks.check_query_key(query, key)
    is_causal = checks.check_flag("is_causal", is_causal)
    target, layout = (B, N, T, S), "[B, N, T, S]"
    mask = check_mask(mask, target)
    if bias is not None:
        bias = checks.check_array("bias", bias)
        checks.check_floating("bias", bias)
        checks.check_broadcastable("bias", bias, target, layout)
    scale = check_scale(scale, H)
    logit_softcap = check_logit_softcap(logit_softcap)
    if mask is not None:
        mask = _grouped(mask, B, N, K, T, S)
    full_mask = mask
    if is_causal:
        causal = causal_mask(T, S)[:, :, None]
        full_mask = causal if mask is None else mask & causal

    # Put the query in [B, K, G, T, H] first: the dot then yields [B, K, G, T, S] in its natural order, with no
    # transpose of the [T, S] logits inside the softmax fusions (seen in the optimized HLO on CPU).
    # Scaling the query rather than the logits touches T * H numbers instead of T * S (also in the backward pass).
    query = (query.astype(jnp.float32) * scale).astype(query.dtype)
    query_BKGTH = query.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    logits = jnp.einsum("BKGTH,BSKH->BKGTS", query_BKGTH, key, preferred_element_type=jnp.float32)
    logits = soft_cap(logits, logit_softcap)  # float32, before the bias and the mask
    if bias is not None:
        logits = logits + _grouped(bias.astype(jnp.float32), B, N, K, T, S)
    return masked_logits(logits, full_mask, clamp=bias is not None), (None if mask is None else full_mask)


def _grouped_sinks(sinks, query, key):
    """`check_sinks` for this query, as float32 `[K, G]` (query head n = k G + g, as the logits), or None."""
    if sinks is None:
        return None
    N, K = query.shape[2], key.shape[2]
    return check_sinks(sinks, N).reshape(K, N // K)


def attention_weights(
    query,
    key,
    *,
    mask=None,
    bias=None,
    scale=None,
    is_causal=False,
    logit_softcap: float | None = None,
    sinks=None,
) -> jax.Array:
    """The attention probabilities `softmax(cap(scale * q . k) + bias)` over keys, for inspection and plots.

    `cap(s) = logit_softcap * tanh(s / logit_softcap)`, or `s` when `logit_softcap` is None.

    Args:
      query: `[B, T, N, H]`.
      key: `[B, S, K, H]`, N a multiple of K.
      mask: bool, broadcastable to `[B, N, T, S]`; True = may attend.
      bias: float, broadcastable to `[B, N, T, S]`; added to the scaled logits before the softmax.
      scale: multiplies q . k, a number > 0; defaults to `1 / sqrt(H)`.
      is_causal: also apply `causal_mask(T, S)` (query t sees keys s <= t).
      logit_softcap: soft-capping constant c > 0 (Gemma 2): the scaled logits s become `c * tanh(s / c)`
        (float32) before the bias and the mask. None (the default): no cap.
      sinks: float `[N]`, one attention-sink logit per query head (GPT-OSS): it joins each row's normaliser with
        no value (see the module docstring). None (the default): no sink.

    Returns:
      float32 `[B, N, T, S]`; each row sums to 1 (with sinks: 1 minus the sink's share), or is all zeros where the
      mask leaves nothing to attend to.
    """
    query, key = checks.check_array("query", query), checks.check_array("key", key)
    logits, mask = _grouped_logits(
        query, key, mask=mask, bias=bias, scale=scale, is_causal=is_causal, logit_softcap=logit_softcap
    )
    probs = softmax_with_sinks(logits, _grouped_sinks(sinks, query, key))
    if mask is not None:
        probs = jnp.where(rows_with_keys(mask), probs, 0.0)
    B, K, G, T, S = probs.shape
    return probs.reshape(B, K * G, T, S)


def dot_product_attention(
    query,
    key,
    value,
    *,
    mask=None,
    bias=None,
    scale=None,
    is_causal=False,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    logit_softcap: float | None = None,
    sinks=None,
) -> jax.Array:
    """Scaled dot-product attention: `softmax(cap(scale * Q K^T) + bias, masked) V`, per query head.

        raw[b, n, t, s] = scale * sum_h query[b, t, n, h] * key[b, s, n // G, h]
        logits[b, n, t, s] = cap(raw[b, n, t, s]) + bias[b, n, t, s],   cap(x) = c * tanh(x / c)  (or x)
        probs = softmax over s of logits, restricted to mask[b, n, t, s] == True
                (with sinks: exp(logits) / (sum_s exp(logits) + exp(sinks[n])), over the allowed s)
        out[b, t, n, :] = sum_s probs[b, n, t, s] * value[b, s, n // G, :]

    Args:
      query: `[B, T, N, H]`.
      key: `[B, S, K, H]`; N must be a multiple of K (K == N: MHA, K == 1: MQA, otherwise GQA).
      value: `[B, S, K, Hv]`; Hv may differ from H.
      mask: bool, broadcastable to `[B, N, T, S]` (True = may attend); e.g. from `jaxformer.ops.masks`.
      bias: float, broadcastable to `[B, N, T, S]`, added before the softmax (e.g. `alibi_bias`).
      scale: logit scale, a number > 0; defaults to `1 / sqrt(H)`.
      is_causal: AND the mask with `causal_mask(T, S)`: query t sees keys s <= t (top-left aligned, as in
        `jax.nn.dot_product_attention`). For queries that follow a cache use `mask=causal_mask(T, S, offset=...)`.
      dropout_rate: probability of dropping an attention weight (inverted dropout, rescaled by 1 / (1 - rate)).
      dropout_rng: `jax.random` key, required when `dropout_rate > 0`.
      logit_softcap: soft-capping constant c > 0 (Gemma 2's attention logit soft-capping): the scaled logits
        become `c * tanh(raw / c)`, in float32, before the bias is added and the mask applied, so that every
        logit but the bias lies in (-c, c). None (the default): no cap.
      sinks: float `[N]`, one attention-sink logit per query head (GPT-OSS's `sinks`), shared by every batch
        element and query position: it joins each row's softmax normaliser but has no value, so a row's weights
        sum to less than 1. It is not scaled, capped nor biased; dropout acts on the key weights only. None (the
        default): no sink.

    Returns:
      `[B, T, N, Hv]` in the query's dtype. Rows with nothing to attend to are zeros (with sinks too: all their
      weight goes to the sink).
    """
    query, key = checks.check_array("query", query), checks.check_array("key", key)
    value = checks.check_array("value", value)
    logits, mask = _grouped_logits(
        query, key, mask=mask, bias=bias, scale=scale, is_causal=is_causal, logit_softcap=logit_softcap
    )
    checks.check_value(value, query, key)
    probs = softmax_with_sinks(logits, _grouped_sinks(sinks, query, key))
    dropout_rate = checks.check_rate("dropout_rate", dropout_rate)
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("`dropout_rng` (a jax.random key) is required when `dropout_rate` > 0.")
        checks.check_prng_key("dropout_rng", dropout_rng)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    # value as [B, K, S, Hv] makes the probabilities the left operand, contracted over their last (contiguous)
    # axis. With BSKH operands XLA:CPU transposed the whole [T, S] matrix first (as it does for jax.nn); this way
    # it fuses the softmax into the matmul instead (see BENCHMARKS.md).
    value_BKSH = value.transpose(0, 2, 1, 3)
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs.astype(value.dtype), value_BKSH, preferred_element_type=jnp.float32)
    if mask is not None:
        out = out * rows_with_keys(mask)  # rows with no key came out of the softmax uniform: zero them
    B, T, N = query.shape[:3]
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, N, value.shape[-1]).astype(query.dtype)
