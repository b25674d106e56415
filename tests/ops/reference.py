"""Float64 NumPy reference for softmax attention, shared by the attention tests."""

import numpy as np


def attention_probs(q, k, *, mask=None, bias=None, scale=None, softcap=None):
    """q [B, T, N, H], k [B, S, K, H] -> probs [B, N, T, S] in float64; rows with nothing to attend are zeros.

    `softcap` c: the scaled logits x become c * tanh(x / c) before the bias and the mask (Gemma 2)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    B, T, N, H = q.shape
    G = N // k.shape[2]
    k = np.repeat(k, G, axis=2)  # head n reads kv head n // G
    scale = 1.0 / np.sqrt(H) if scale is None else scale
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if softcap is not None:
        logits = softcap * np.tanh(logits / softcap)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), logits.shape)
    logits = np.where(allowed, logits, -np.inf)
    row_max = logits.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(allowed, np.exp(logits - row_max), 0.0)
    denom = e.sum(axis=-1, keepdims=True)
    return e / np.where(denom == 0, 1.0, denom)


def attention(q, k, v, *, mask=None, bias=None, scale=None, softcap=None):
    """Dense softmax attention in float64: [B, T, N, Hv]."""
    probs = attention_probs(q, k, mask=mask, bias=bias, scale=scale, softcap=softcap)
    G = q.shape[2] // k.shape[2]
    v = np.repeat(np.asarray(v, np.float64), G, axis=2)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def causal(T, S):
    return np.tril(np.ones((T, S), bool))[None, None]
