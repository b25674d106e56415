"""Splash attention: jax's Pallas TPU flash-attention kernel for structural masks, in jaxformer's BTNH layout.

`jax.experimental.pallas.ops.tpu.splash_attention` ("sparse flash") is the TPU kernel MaxText trains with. Like
`blockwise_attention` it never materialises the `[T, S]` logits and skips key blocks that a mask hides entirely,
but each tile runs as one Pallas kernel on the TPU's matrix unit instead of as XLA ops. It computes

    out[b, t, n] = sum_s softmax_s(cap(scale * q[b, t, n] . k[b, s, n // G]) + mask(t, s)) v[b, s, n // G]

with the mask given structurally (causal, a sliding window, segment ids), never as an array, and cap(x) =
c tanh(x / c) for a `logit_softcap` c (Gemma 2; the kernel's `attn_logits_soft_cap`), cap(x) = x without one.
This wrapper turns BTNH into the kernel's per-example `[N, T, H]`, folds the logit scale into the query (the
kernel applies none; its cap then acts on the scaled logits, as in the dense path), builds the kernel once per
static configuration, and maps it over the batch.

On a machine without a TPU the same kernel runs through the Pallas interpreter (`interpret=True`): slow, but it
executes the kernel's own block logic and its custom backward pass, which is how the tests check it on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxformer import checks
from jaxformer.ops.attention import check_logit_softcap, check_scale

LANES = 128  # TPU vector lane width: the kernel's key blocks must be multiples of it


def _splash_module():
    """jax's splash package, imported on first use (it is experimental: a jax release may move it)."""
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention
    except ImportError as err:
        raise ValueError(
            f"jax {jax.__version__} has no Pallas splash kernel at jax.experimental.pallas.ops.tpu.splash_attention "
            f"({err}); use dot_product_attention / blockwise_attention (implementation='xla' or 'blockwise')."
        ) from err
    return splash_attention


def _tile(length: int, block_size: int) -> int:
    """The largest multiple of LANES that divides `length` and is at most `block_size`."""
    return next(b for b in range(min(block_size, length) // LANES * LANES, 0, -LANES) if length % b == 0)


@functools.cache
def _kernel(
    num_heads: int, q_len: int, kv_len: int, is_causal: bool, window, block: int, interpret: bool, softcap=None
):
    """The splash kernel for one static configuration (mask processing runs in NumPy; cached so it runs once)."""
    splash = _splash_module()

    shape = (q_len, kv_len)
    if window is not None:  # LocalMask keeps keys s with  t - left <= s <= t + right
        head_mask = splash.LocalMask(shape, window_size=(window - 1, 0 if is_causal else window - 1), offset=0)
    elif is_causal:
        head_mask = splash.CausalMask(shape)
    else:
        head_mask = splash.FullMask(shape)
    bq, bkv = _tile(q_len, block), _tile(kv_len, block)
    blocks = splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    mask = splash.MultiHeadMask([head_mask] * num_heads)
    # The kernel holds its mask tables as arrays; made eagerly, they stay valid when a later call (or a call
    # outside jit) finds this cached kernel, instead of being tracers of the trace that first built it.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(
            mask,
            block_sizes=blocks,
            head_shards=1,
            q_seq_shards=1,
            attn_logits_soft_cap=softcap,
            interpret=interpret,
        )


def splash_attention(
    query,
    key,
    value,
    *,
    is_causal: bool = False,
    window: int | None = None,
    segment_ids=None,
    scale: float | None = None,
    block_size: int = 512,
    interpret: bool = False,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Exact attention through jax's Pallas TPU splash kernel; equals `dot_product_attention` with the same mask
    (and the same `scale` and `logit_softcap`).

    Args:
      query: `[B, T, N, H]`.
      key: `[B, S, K, H]`, N a multiple of K (MHA, GQA, MQA).
      value: `[B, S, K, Hv]`.
      is_causal: query t sees keys s <= t (as `causal_mask(T, S)`).
      window: sliding window (as `sliding_window_mask(T, S, window=window, causal=is_causal)`): query t sees keys
        with `t - window < s <= t` when causal, `|t - s| < window` otherwise. Needs T <= S.
      segment_ids: int `[B, T]` for self-attention (T == S): tokens attend only within equal ids (as
        `segment_mask`; give padding its own id). Every query sees at least itself, so no row is empty.
      scale: logit scale, a number > 0; defaults to `1 / sqrt(H)`.
      block_size: most queries / keys per tile, a multiple of 128; each tile is the largest multiple of 128 up
        to it that divides T (or S). T and S must be multiples of 128: pad, or use `dot_product_attention`.
      interpret: run the kernel through the Pallas interpreter, on any backend (slow: for tests). Without it the
        kernel compiles for TPU only.
      logit_softcap: soft-capping constant c > 0 (Gemma 2): the scaled logits x = scale * q . k become
        `c * tanh(x / c)` (float32, inside the kernel, forward and backward) before the mask. None (the default):
        no cap. A static number (not a traced value): it is part of the kernel's configuration.

    Returns:
      `[B, T, N, Hv]` in the query's dtype (T = 0: empty; S = 0: zeros, as the dense path).

    Not supported (use `dot_product_attention` or `blockwise_attention`): array masks, an additive bias, key
    lengths, dropout on the weights, segment ids for cross-attention.
    """
    query, key = checks.check_array("query", query), checks.check_array("key", key)
    value = checks.check_array("value", value)
    B, T, S, N, K, H = checks.check_query_key(query, key)
    checks.check_value(value, query, key)
    is_causal = checks.check_flag("is_causal", is_causal)
    block_size = checks.check_positive_int("block_size", block_size)
    scale = check_scale(scale, H)
    logit_softcap = check_logit_softcap(logit_softcap)
    logit_softcap = None if logit_softcap is None else float(logit_softcap)
    if not interpret and jax.default_backend() != "tpu":
        raise ValueError(
            f"splash_attention compiles a Pallas TPU kernel, and the default backend is "
            f"{jax.default_backend()!r}. Pass interpret=True to run it through the Pallas interpreter (slow; for "
            "tests), or use dot_product_attention / blockwise_attention."
        )
    if block_size % LANES:
        raise ValueError(f"`block_size` must be a multiple of {LANES} (the TPU lane width); got {block_size}.")
    for name, length in (("T (query length)", T), ("S (key length)", S)):
        if length % LANES:
            raise ValueError(
                f"splash_attention needs {name} to be a multiple of {LANES} (the kernel's tiles are); got "
                f"{length}. Pad the sequence, or use dot_product_attention."
            )
    if window is not None:
        window = checks.check_positive_int("window", window)
        if T > S:
            raise ValueError(f"A `window` needs T <= S (otherwise late queries see no key); got T={T}, S={S}.")
    ids, _ = checks.check_segment_ids(segment_ids, B, T, S, allow_pair=False)  # self-attention ids only
    ids = None if ids is None else ids.astype(jnp.int32)
    if T == 0 or S == 0:  # no tile to run: the dense path's empty output (T = 0) or zeros (no key, S = 0)
        return jnp.zeros((B, T, N, value.shape[-1]), query.dtype)

    interpret = checks.check_flag("interpret", interpret)
    kernel = _kernel(N, T, S, is_causal, window, block_size, interpret, logit_softcap)
    # [B, T, N, H] -> [B, N, T, H]: the kernel is written per example, heads first.
    q_BNTH = jnp.swapaxes(query * jnp.asarray(scale, query.dtype), 1, 2)
    k_BKSH, v_BKSH = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
    if ids is None:
        out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKSH, v_BKSH)
    else:
        out_BNTH = jax.vmap(lambda q, k, v, i: kernel(q, k, v, segment_ids=_splash_module().SegmentIds(q=i, kv=i)))(
            q_BNTH, k_BKSH, v_BKSH, ids
        )
    return jnp.swapaxes(out_BNTH, 1, 2).astype(query.dtype)
