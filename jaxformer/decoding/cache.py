"""Model-agnostic KV-cache surgery used by the decoding loops.

Every jaxformer.nn.MultiHeadAttention with a cache holds `cached_key` / `cached_value` `[..., B, S, K, H]` and
`cache_index` `[..., B]` (a leading `[L]` when layers are scanned); these helpers act on all of them at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks
from jaxformer.nn.attention import MultiHeadAttention


def _caches(model: nnx.Module):
    for _, module in nnx.iter_graph(model):
        if isinstance(module, MultiHeadAttention) and module.cache_index is not None:
            yield module


def kv_cache_bytes(make_model: Callable[[], nnx.Module], batch_size: int, max_len: int, dtype=None) -> dict:
    """What the KV caches of `make_model()` (e.g. `lambda: GPT(cfg, rngs=nnx.Rngs(0))`) hold for `batch_size`
    sequences of up to `max_len` tokens, from shapes alone (`nnx.eval_shape`: nothing is allocated).

    Returns a dict: `bytes` (keys, values and indices as `init_cache(batch_size, max_len, dtype)` allocates them:
    ring buffers of `sliding_window` entries for local layers, nothing for KV-shared layers), `full_bytes` (every
    self-attention layer with a cache of max_len entries, as without rings or sharing), and `layers`, one
    (entries held, key/value bytes) pair per self-attention layer in order (0 entries: a KV-shared layer).
    """
    batch_size = checks.check_positive_int("batch_size", batch_size)
    max_len = checks.check_positive_int("max_len", max_len)

    def build():
        model = make_model()
        model.init_cache(batch_size, max_len, dtype)
        return model

    abstract = nnx.eval_shape(build)
    layers, held, full = [], 0, 0
    for _, module in nnx.iter_graph(abstract):
        if not isinstance(module, MultiHeadAttention) or (module.cache_index is None and not module.shared_kv):
            continue
        itemsize = jnp.dtype(module.dtype if dtype is None else dtype).itemsize
        stacked = 1 if module.cache_index is None else math.prod(module.cache_index.shape[:-1])  # scanned: [L, B]
        per_entry = 2 * batch_size * module.num_kv_heads * module.head_dim * itemsize  # a key and a value
        entries = 0 if module.cache_key_shape is None else module.cache_key_shape[-3]
        for _ in range(stacked):
            layers.append((entries, entries * per_entry))
        held += stacked * (entries * per_entry + (0 if module.cache_index is None else 4 * batch_size))
        full += stacked * (max_len * per_entry + 4 * batch_size)
    return {"bytes": held, "full_bytes": full, "layers": layers}


def set_cache_index(model: nnx.Module, index: jax.Array) -> None:
    """Sets every cache's index to `index [B]` (or a scalar for all): the next decoded token of sequence b is
    written at `index[b]`, an int in [0, max_len] (checked when known).

    After prefilling right-padded prompts, setting the index to the prompt lengths makes each sequence continue
    from its own last real token: its padding slots are overwritten and, being at or after the index, never seen.
    """
    index = checks.check_array("index", index)
    checks.check_integer("index", index)
    caches = list(_caches(model))  # none for a model without attention (or before init_cache): nothing to set
    if any(attention.is_ring_cache for attention in caches):
        raise ValueError(
            "set_cache_index cannot move a ring-buffer cache (a sliding-window layer keeps only its last window, "
            "so moving back would expose overwritten slots). Prefill right-padded prompts with decode=True and "
            "`valid` instead: each row's cache then advances by its real tokens."
        )
    for attention in caches[:1]:
        batch, max_len = attention.cache_index.shape[-1], attention.cached_key.shape[-3]
        if index.shape not in ((), (batch,)):
            raise ValueError(
                f"`index` must be a scalar or [B={batch}] (one per cached sequence); got shape {index.shape}."
            )
        checks.check_index_range("index", index, 0, max_len + 1, f" (the cache holds max_len={max_len} tokens)")
    for attention in caches:
        attention.cache_index[...] = jnp.broadcast_to(index, attention.cache_index.shape).astype(jnp.int32)


def reorder_cache(model: nnx.Module, batch_indices: jax.Array) -> None:
    """Replaces the cache of batch entry b by that of entry `batch_indices[b]` (which may repeat entries and change
    the batch size): how beam search follows the beams it keeps, and how it tiles one prefill over the beams.
    `batch_indices`: int `[B']`, each in [0, B) (checked when known)."""
    batch_indices = checks.check_array("batch_indices", batch_indices)
    checks.check_integer("batch_indices", batch_indices)
    checks.check_rank("batch_indices", batch_indices, 1, "[B']")
    caches = list(_caches(model))
    for attention in caches[:1]:
        batch = attention.cache_index.shape[-1]
        checks.check_index_range("batch_indices", batch_indices, 0, batch, " (the cached sequences)")
    for attention in caches:
        for cache, base_rank in ((attention.cached_key, 4), (attention.cached_value, 4), (attention.cache_index, 1)):
            axis = cache[...].ndim - base_rank
            cache.set_value(jnp.take(cache[...], batch_indices, axis=axis))
