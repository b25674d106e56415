"""Multi-head attention layer: projections, positions, a KV cache, and a choice of attention implementation."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import checks, ops
from jaxformer.nn import attention_dispatch, lora
from jaxformer.nn.context_attention import context_shardings, ring_self_attention
from jaxformer.nn.norms import RMSNorm
from jaxformer.nn.params import logical_param

# The position schemes that act inside attention (the others are added to the embeddings: nn/blocks.py POSITIONAL).
ATTENTION_POSITIONAL = ("rope", "alibi", "none")


class SharedKV(NamedTuple):
    """The keys and values one self-attention layer computed, for a later layer built with `shared_kv=True` that
    attends over them instead of projecting its own (Gemma 4's KV sharing): keys `[B, S, K, H]` after the norm
    and RoPE, values `[B, S, K, H]`; with decoding also the mask over them (`[B, 1, T, S]`, the cache's
    causality and window included), each key's position `[B|1, S]` and the cache index the queries start at `[B]`.
    """

    keys: jax.Array
    values: jax.Array
    mask: jax.Array | None = None
    key_positions: jax.Array | None = None
    offset: jax.Array | None = None


def check_cache_room(index, num_tokens: int, max_len: int) -> None:
    """Raises a ValueError when writing `num_tokens` at the cache index `[B]` would pass `max_len` (checked only
    when the index is known, outside jit)."""
    if num_tokens > max_len:
        raise ValueError(f"{num_tokens} new tokens do not fit a KV cache of max_len={max_len}.")
    index = checks.concrete_or_none(index)
    if index is not None and (index + num_tokens > max_len).any():
        b = int(np.argmax(index + num_tokens > max_len))
        raise ValueError(
            f"KV cache overflow: sequence {b} has {int(index[b])} cached tokens and this call adds T={num_tokens}, "
            f"past the cache's max_len={max_len}. Call init_cache with a larger max_len (or set_cache_index back)."
        )


# The attention kernels that apply attention sinks (`MultiHeadAttention(sinks=True)`).
SINK_IMPLEMENTATIONS = ("xla", "blockwise")


def check_sinks_implementation(implementation: str, sinks: bool) -> None:
    """Attention sinks need a kernel that applies them (`SINK_IMPLEMENTATIONS`, or "auto", which picks one): an
    explicit jax_nn, cudnn or pallas with `sinks=True` is a ValueError naming both, never a run without them."""
    if sinks and implementation not in ("auto", *SINK_IMPLEMENTATIONS):
        raise ValueError(
            f"sinks=True (GPT-OSS attention sinks) needs an attention kernel that applies them, and "
            f"implementation={implementation!r} has none. Use 'auto', 'xla' or 'blockwise'."
        )


class MultiHeadAttention(nnx.Module):
    """Self- or cross-attention with N query heads and K key/value heads (MHA, GQA, MQA).

        q = x W_q [B, T, N, H],  k = c W_k, v = c W_v [B, S, K, H]   (c = x for self-attention)
        out = dot_product_attention(q, k, v) W_o [B, T, D]

    Parameters (logical axes): `w_q [D, N, H]` (embed, heads, head_dim), `w_k`, `w_v [Dc, K, H]`
    (embed, kv_heads, head_dim), `w_o [N, H, D]` (heads, head_dim, embed); optional biases.

    Options: `use_bias` (q, k, v biases; and the output's unless `out_bias` says otherwise), `qk_norm` (RMSNorm
    over H on q and k, as in ViT-22B / Gemma / Qwen3, with `qk_norm_epsilon`; `norm_plus_one` scales it by 1 + w
    as Gemma 3), `scale` (the logit scale; None: 1 / sqrt(H); Gemma's query_pre_attn_scalar^-1/2),
    `logit_softcap` (Gemma 2: logits `s = scale q.k` become `cap tanh(s / cap)` before the mask; every kernel
    applies it, and the ones that cannot (jax_nn, cudnn) refuse it), `sinks` (GPT-OSS's attention sinks: a
    learned logit per query head, parameter `sinks [N]` (heads) initialised to zeros, that joins every softmax
    normaliser with no value, see `ops.dot_product_attention`; xla and blockwise apply it, an explicit jax_nn,
    cudnn or pallas is refused and "auto" picks xla or blockwise), `v_norm` (an RMSNorm without a scale on
    each value head, Gemma 4), `value_is_key` (no `w_v`: the values are the key projection before the key norm
    and RoPE, Gemma 4's global layers), `shared_kv` (no key / value projections or cache at all: each call takes
    the `SharedKV` of an earlier layer as `kv=`, Gemma 4's KV sharing; `return_kv=True` makes a layer return
    its own for that), `positional="rope"` (rotary on q
    and k at their absolute positions; `rope_interleaved=False` rotates halves, as Llama checkpoints expect;
    `rope_scaling` an `ops.RopeScaling`) or `"alibi"` (ALiBi bias), `sliding_window=W` (self-attention sees only the W
    nearest positions: causal `p - W < s <= p`, or `|p - s| < W` without `is_causal`; Mistral / Longformer),
    `implementation="xla"` (jaxformer's dense path),
    `"blockwise"` (O(T) memory; masks given structurally), `"jax_nn"` (`jax.nn.dot_product_attention` with its
    default backend), `"cudnn"` (the same call with `implementation="cudnn"`: cuDNN flash attention on NVIDIA
    GPUs, bf16/fp16 only; a ValueError elsewhere), `"pallas"` (jax's Pallas TPU splash kernel through
    `ops.splash_attention`; T and S multiples of 128; off TPU it runs in the Pallas interpreter) or `"auto"`
    (the best of these that supports the call on this backend); the table of what each supports is in
    nn/attention_dispatch.py.

    KV cache: `init_cache(batch_size, max_len)` allocates `[B, max_len, K, H]` key and value buffers and a
    per-example index. Each call with `decode=True` appends its T tokens at the index and attends causally over
    everything cached so far, so a prompt can be prefilled in one call and then extended one or more tokens at
    a time. The cache never wraps or clamps: a call that would write past `max_len` raises (NaN under jit; see
    `init_cache`). A sliding-window layer with `sliding_window = W < max_len` keeps a ring buffer of W entries
    instead (all it can ever attend to): position p lives in slot p mod W, and it never overflows.

    Empty sequences are allowed with every implementation: T = 0 gives `[B, 0, D]`, cross-attention over S = 0
    keys attends to nothing (zeros before the output projection).

    Context parallelism: under a sharded training step whose activation hints split the sequence ("length") over
    a mesh axis (`config.mesh.context` > 1; nn/constraints.py, sharding.py), self-attention runs as
    `ops.ring_attention` inside `jax.shard_map` over that axis instead of `implementation` (batch and heads mapped
    as the hints lay them out, the sequence in the hints' layout: contiguous or zigzag), with the layer's
    causality, sliding window, soft-cap, sinks, ALiBi (on the layer's positions) and segment ids on global
    positions. What ring attention cannot do there (attention dropout, an array `mask`, `decode`) is a ValueError
    naming it.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        context_dim: int | None = None,
        use_bias: bool = False,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_epsilon: float = 1e-6,
        norm_plus_one: bool = False,
        scale: float | None = None,
        logit_softcap: float | None = None,
        sinks: bool = False,
        v_norm: bool = False,
        value_is_key: bool = False,
        shared_kv: bool = False,
        positional: str = "none",
        rope_base: float = 10000.0,
        rope_interleaved: bool = True,
        rope_scaling: ops.RopeScaling | None = None,
        sliding_window: int | None = None,
        implementation: str = "xla",
        dropout_rate: float = 0.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model = checks.check_positive_int("d_model", d_model)
        num_heads = checks.check_positive_int("num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else checks.check_positive_int("num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}.")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(
                    f"d_model={d_model} is not divisible by num_heads={num_heads}; pass head_dim explicitly."
                )
            head_dim = d_model // num_heads
        head_dim = checks.check_positive_int("head_dim", head_dim)
        context_dim = d_model if context_dim is None else checks.check_positive_int("context_dim", context_dim)
        checks.check_choice("positional", positional, ATTENTION_POSITIONAL)
        attention_dispatch.check_implementation(implementation)
        if scale is not None:
            scale = checks.check_positive_real("scale", scale)
        if logit_softcap is not None:
            logit_softcap = checks.check_positive_real("logit_softcap", logit_softcap)
        attention_dispatch.check_softcap(implementation, logit_softcap)
        checks.check_flag("sinks", sinks)
        check_sinks_implementation(implementation, sinks)
        if positional == "rope" and head_dim % 2:
            raise ValueError(f"positional='rope' needs an even head_dim; got {head_dim}.")
        if sliding_window is not None:
            sliding_window = checks.check_positive_int("sliding_window", sliding_window)
        rope_base = checks.check_positive_real("rope_base", rope_base)
        qk_norm_epsilon = checks.check_positive_real("qk_norm_epsilon", qk_norm_epsilon)
        dropout_rate = checks.check_rate("dropout_rate", dropout_rate)
        if rope_scaling is not None and not isinstance(rope_scaling, ops.RopeScaling):
            raise TypeError(f"`rope_scaling` must be an ops.RopeScaling or None; got {rope_scaling!r}.")
        dtype = checks.check_float_dtype("dtype", dtype)
        param_dtype = checks.check_float_dtype("param_dtype", param_dtype)
        flags = ("use_bias", use_bias), ("qk_norm", qk_norm), ("rope_interleaved", rope_interleaved)
        more = ("norm_plus_one", norm_plus_one), ("v_norm", v_norm), ("value_is_key", value_is_key)
        for name, flag in (*flags, *more, ("shared_kv", shared_kv)):
            checks.check_flag(name, flag)
        if (value_is_key or shared_kv) and (use_bias or context_dim != d_model):
            raise ValueError(
                "value_is_key / shared_kv are for self-attention without q/k/v biases (Gemma 4); got "
                f"use_bias={use_bias}, context_dim={context_dim}."
            )
        if out_bias is not None:
            checks.check_flag("out_bias", out_bias)
        self.sliding_window, self.context_dim = sliding_window, context_dim
        self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = d_model, num_heads, num_kv_heads, head_dim
        self.positional, self.rope_base, self.implementation = positional, rope_base, implementation
        self.rope_interleaved, self.rope_scaling = rope_interleaved, rope_scaling
        self.dropout_rate, self.dtype = dropout_rate, dtype
        self.scale, self.logit_softcap = scale, logit_softcap
        self.v_norm, self.value_is_key, self.shared_kv = v_norm, value_is_key, shared_kv
        self.qk_norm_epsilon = qk_norm_epsilon
        self.deterministic = False  # set by model.eval() / model.train()

        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        N, K, H = num_heads, num_kv_heads, head_dim
        self.w_q = logical_param(rngs, init, (d_model, N, H), ("embed", "heads", "head_dim"), param_dtype)
        kv_axes = ("embed", "kv_heads", "head_dim")
        self.w_k = None if shared_kv else logical_param(rngs, init, (context_dim, K, H), kv_axes, param_dtype)
        own_values = not (shared_kv or value_is_key)
        self.w_v = logical_param(rngs, init, (context_dim, K, H), kv_axes, param_dtype) if own_values else None
        self.w_o = logical_param(rngs, out_init, (N, H, d_model), ("heads", "head_dim", "embed"), param_dtype)
        zeros = nnx.initializers.zeros
        if use_bias:
            self.b_q = logical_param(rngs, zeros, (N, H), ("heads", "head_dim"), param_dtype)
            self.b_k = logical_param(rngs, zeros, (K, H), ("kv_heads", "head_dim"), param_dtype)
            self.b_v = logical_param(rngs, zeros, (K, H), ("kv_heads", "head_dim"), param_dtype)
        else:
            self.b_q = self.b_k = self.b_v = None
        out_bias = use_bias if out_bias is None else out_bias
        self.b_o = logical_param(rngs, zeros, (d_model,), ("embed",), param_dtype) if out_bias else None
        self.sinks = logical_param(rngs, zeros, (N,), ("heads",), param_dtype) if sinks else None
        norm = lambda: RMSNorm(
            H, epsilon=qk_norm_epsilon, plus_one=norm_plus_one, param_dtype=param_dtype, axis="head_dim", rngs=rngs
        )
        self.q_norm = norm() if qk_norm else None
        self.k_norm = norm() if qk_norm and not shared_kv else None
        self.dropout_rngs = rngs["dropout"].fork() if dropout_rate > 0 else None
        # Declared as data (not static) so that init_cache can put Cache variables here later.
        self.cached_key, self.cached_value, self.cache_index = nnx.data(None), nnx.data(None), nnx.data(None)
        # LoRA adapters by weight name ("w_q", "w_k", "w_v", "w_o"; "w_qkv": one adapter over [w_q | w_k | w_v],
        # GPT-2's fused c_attn), added by jaxformer.lora.add_adapters (nn/lora.py).
        self.lora = nnx.data(None)

    # -- cache -------------------------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> None:
        """Allocates an empty KV cache for `batch_size` sequences of up to `max_len` tokens.

        The cache never wraps or clamps: a `decode=True` call whose T tokens would be written past `max_len`
        (cache index + T > max_len) raises a ValueError when the index is known (outside jit). Under `jax.jit` the
        index is traced and cannot raise: such a call then writes nothing for the overflowing sequences and
        returns NaN for them, so an overflow is always visible. (`decoding.generate` and `beam_search` size the
        cache so that it cannot overflow.)

        A layer with `sliding_window = W <= max_len` allocates W entries, a ring buffer (`is_ring_cache`): a query
        at position p sees keys p - W < s <= p only, so older ones are never needed. Position s is kept in slot
        s mod W; a decoding call attends over the ring's W entries and its own T new keys, then keeps the newest
        W of them. A ring never overflows: its length is bounded by the other layers' caches (or by nothing).
        """
        batch_size = checks.check_positive_int("batch_size", batch_size)
        max_len = checks.check_positive_int("max_len", max_len)
        if self.shared_kv:  # it attends over another layer's cache
            return
        if self.sliding_window is not None and self.sliding_window <= max_len:
            max_len = self.sliding_window
        shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
        dtype = self.dtype if dtype is None else checks.check_float_dtype("dtype", dtype)
        self.cached_key = nnx.Cache(jnp.zeros(shape, dtype))
        self.cached_value = nnx.Cache(jnp.zeros(shape, dtype))
        self.cache_index = nnx.Cache(jnp.zeros((batch_size,), jnp.int32))

    @property
    def cache_key_shape(self) -> tuple[int, ...] | None:
        """The shape of the cached keys (`[..., B, S, K, H]`; a leading `[L]` when scanned), None without a cache."""
        return None if self.cached_key is None else tuple(self.cached_key.shape)

    @property
    def is_ring_cache(self) -> bool:
        """Whether the KV cache is a ring buffer of `sliding_window` entries (see `init_cache`)."""
        return (
            self.cached_key is not None
            and self.sliding_window is not None
            and self.cached_key.shape[-3] == self.sliding_window
        )

    # -- forward -----------------------------------------------------------------------------------------------

    def _project(self, x, name, b, norm):
        if lora.adapter(self, lora.FUSED_QKV) is not None:
            raise ValueError("A fused q|k|v LoRA adapter ('w_qkv') is for self-attention; this call has a context.")
        out = lora.dense("BTD,DNH->BTNH", x, getattr(self, name), lora.adapter(self, name), dtype=self.dtype)
        if b is not None:
            out = out + b[...].astype(self.dtype)
        return out if norm is None else norm(out)

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Self-attention's projections of x `[B, T, D]`: q `[B, T, N, H]`, k and v `[B, T, K, H]`, in `dtype`,
        with the biases and (for q and k) the qk-norm applied; no RoPE, which needs positions (`__call__`).

        One matmul against [w_q | w_k | w_v] (concatenated along heads): one larger dot instead of three small
        ones, forward and backward (the same parameters and results)."""
        N, K = self.num_heads, self.num_kv_heads
        weights = [w[...] for w in (self.w_q, self.w_k, self.w_v) if w is not None]
        qkv = ops.dense("BTD,DNH->BTNH", x, jnp.concatenate(weights, axis=1), dtype=self.dtype)
        if self.b_q is not None:
            b = jnp.concatenate([self.b_q[...], self.b_k[...], self.b_v[...]], axis=0).astype(self.dtype)
            qkv = qkv + b
        if (fused := lora.adapter(self, lora.FUSED_QKV)) is not None:
            qkv = qkv + fused("BTD,DNH->BTNH", x, dtype=self.dtype)
        parts = {"w_q": qkv[:, :, :N], "w_k": qkv[:, :, N : N + K], "w_v": qkv[:, :, N + K :]}
        for name, part in parts.items():  # each projection's own adapter (the Llama family's q_proj, k_proj, ...)
            if (adapter := lora.adapter(self, name)) is not None:
                parts[name] = part + adapter("BTD,DNH->BTNH", x, dtype=self.dtype)
        q, k, v = parts["w_q"], parts["w_k"], parts["w_v"]
        q = q if self.q_norm is None else self.q_norm(q)
        if self.shared_kv:
            return q, None, None
        v = k if self.value_is_key else v  # value_is_key: the raw key projection
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.v_norm:
            v = ops.rms_norm(v, epsilon=self.qk_norm_epsilon)
        return q, k, v

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        decode: bool = False,
        valid: jax.Array | None = None,
        kv: SharedKV | None = None,
        return_kv: bool = False,
    ) -> jax.Array | tuple[jax.Array, SharedKV]:
        """x `[B, T, D]`; context `[B, S, Dc]` for cross-attention (None: self-attention).

        mask: bool, broadcastable to `[B, N, T, S]` (True = may attend). is_causal: queries see keys at or before
        their own position. positions: int `[T]` or `[B, T]` query (and, for self-attention, key) positions for
        RoPE / ALiBi; defaults to `arange(T)`, or to the cache index onwards with `decode=True`.
        segment_ids: int `[B, T]` for packed self-attention: tokens attend only within equal ids. The dense
        kernels get it as `ops.segment_mask`; `blockwise` and `pallas` take it as an argument (no `[B, T, T]` mask;
        blockwise also skips other documents' blocks when the ids are non-decreasing, as packing writes them).
        decode: use and extend the KV cache (self-attention only; call `init_cache` first). Attention is then
        causal over the cache by construction, and `mask` is ANDed with it.
        valid: with `decode=True` only, bool `[B, T]` with a True prefix per row (right-padded prompts): the cache
        index of row b advances by its count of True, so its next call continues after its last real token, and
        a ring buffer keeps only real tokens. (Padding keys sit after every real query: causality hides them.)
        kv: for a layer built with `shared_kv=True` (and only then), the `SharedKV` of the earlier layer whose keys
        and values it attends over, from that layer's call on the same tokens with `return_kv=True`, which then
        returns `(out, kv)`.
        """
        x, context, positions, segment_ids, is_causal, decode = self._check_call(
            x, context, positions, segment_ids, is_causal, decode
        )
        if valid is not None:
            valid = self._check_decode_valid(valid, x.shape[:2], decode)
        if self.shared_kv != (kv is not None):
            raise ValueError(
                "`kv` (another layer's SharedKV) is for a layer built with shared_kv=True, and such a layer needs it; "
                f"this layer has shared_kv={self.shared_kv} and got kv={'None' if kv is None else 'a SharedKV'}."
            )
        B, T, _ = x.shape
        if context is None:
            q, k, v = self.project_qkv(x)
        else:
            q = self._project(x, "w_q", self.b_q, self.q_norm)
            k = self._project(context, "w_k", self.b_k, self.k_norm)
            v = self._project(context, "w_v", self.b_v, None)

        if kv is not None and decode:
            offset = kv.offset
        else:
            offset = self.cache_index[...] if decode else jnp.zeros((B,), jnp.int32)
        if positions is None:
            positions = offset[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
        if self.positional == "rope":
            rope = dict(base=self.rope_base, interleaved=self.rope_interleaved, scaling=self.rope_scaling)
            q = ops.apply_rope(q, positions, **rope)
            k = k if k is None else ops.apply_rope(k, positions, **rope)

        overflow = None
        if kv is not None:  # another layer's keys and values (and, decoding, its cache's mask and positions)
            k, v = kv.keys, kv.values
            key_positions = jnp.arange(k.shape[1])[None, :] if kv.key_positions is None else kv.key_positions
            if decode:
                mask, is_causal = kv.mask, False
        elif context is None and not decode:  # self-attention: each key is a query's token, at its position
            # (per-document positions of packed rows too, for ALiBi's distances)
            key_positions = positions if positions.ndim == 2 else positions[None, :]
        else:
            key_positions = jnp.arange(k.shape[1])[None, :]  # [1|B, S]: where each key sits in the sequence
        if decode and kv is None:
            count = jnp.full((B,), T, jnp.int32) if valid is None else jnp.sum(valid, axis=1, dtype=jnp.int32)
            update = self._update_ring if self.is_ring_cache else self._update_cache
            k, v, mask, overflow, key_positions = update(k, v, mask, offset, count)
            is_causal = False  # the cache mask is causal already
        shared = SharedKV(k, v, mask, key_positions, offset) if decode else SharedKV(k, v)
        alibi = None  # ALiBi's (query positions [B, T], key positions [B, S]): the bias is made where it is used
        if self.positional == "alibi":
            alibi = (positions if positions.ndim == 2 else jnp.broadcast_to(positions, (B, T)), key_positions)
        out = self._attend(q, k, v, mask=mask, alibi=alibi, segment_ids=segment_ids, is_causal=is_causal, decode=decode)
        out = lora.dense("BTNH,NHD->BTD", out, self.w_o, lora.adapter(self, "w_o"), dtype=self.dtype)
        out = out if self.b_o is None else out + self.b_o[...].astype(self.dtype)
        if overflow is not None:  # (traced) writes past the cache: NaN, never a clamped or wrapped result
            out = jnp.where(overflow[:, None, None], jnp.asarray(jnp.nan, out.dtype), out)
        return (out, shared) if return_kv else out

    def _check_call(self, x, context, positions, segment_ids, is_causal, decode):
        """Validates the arguments of `__call__` (each error names the argument and what it should be); returns
        x, context, positions and segment_ids as arrays (None stays None) and the two flags as bools."""
        x = checks.check_array("x", x)
        checks.check_floating("x", x)
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"`x` must be [B, T, D={self.d_model}]; got shape {tuple(x.shape)}.")
        B, T, _ = x.shape
        is_causal = checks.check_flag("is_causal", is_causal)
        decode = checks.check_flag("decode", decode)
        cross = context is not None
        if cross:
            context = checks.check_array("context", context)
            checks.check_floating("context", context)
            if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
                raise ValueError(
                    f"`context` must be [B={B}, S, Dc={self.context_dim}] (the batch of `x`, the layer's "
                    f"context_dim); got shape {tuple(context.shape)}."
                )
        if positions is not None:
            positions = checks.check_array("positions", positions)
            checks.check_integer("positions", positions)
            if positions.shape not in ((T,), (B, T)):
                raise ValueError(
                    f"`positions` must be [T] = ({T},) or [B, T] = ({B}, {T}); got shape {tuple(positions.shape)}."
                )
        if segment_ids is not None:  # one array [B, T]: a list is an array here, never a (q, kv) pair
            segment_ids = checks.check_array("segment_ids", segment_ids)
            segment_ids, _ = checks.check_segment_ids(segment_ids, B, T, T, allow_pair=False)
        if cross and decode:
            raise ValueError("decode=True caches self-attention keys; for cross-attention compute the context once.")
        if cross and self.sliding_window is not None:
            raise ValueError("sliding_window is for self-attention; build cross-attention with sliding_window=None.")
        if segment_ids is not None and (cross or decode):
            raise ValueError(
                "segment_ids is for packed self-attention; pass it neither with `context` nor decode=True."
            )
        if cross and self.positional != "none":
            raise ValueError(
                f"positional={self.positional!r} is for self-attention; build cross-attention layers "
                "with positional='none'."
            )
        if decode and not self.shared_kv:
            if self.cache_index is None:
                raise ValueError("decode=True needs a KV cache: call init_cache(batch_size, max_len) first.")
            if self.cache_index.shape != (B,):
                raise ValueError(
                    f"`x` has batch size {B} but the KV cache was made for {self.cache_index.shape[0]} sequences; "
                    f"call init_cache({B}, max_len)."
                )
        return x, context, positions, segment_ids, is_causal, decode

    def _check_decode_valid(self, valid, shape: tuple[int, int], decode: bool) -> jax.Array:
        """`valid` of a decoding call: bool `[B, T]` whose rows are a True prefix (checked when known)."""
        if not decode:
            raise ValueError("`valid` is for decode=True calls (right-padded prompts); pass a `mask` otherwise.")
        valid = checks.check_array("valid", valid)
        checks.check_bool("valid", valid, meaning="True = a real token, False = padding")
        if valid.shape != tuple(shape):
            raise ValueError(f"`valid` must be [B, T] = {tuple(shape)}, like `x`; got {tuple(valid.shape)}.")
        concrete = checks.concrete_or_none(valid)
        if concrete is not None and (concrete[:, 1:] & ~concrete[:, :-1]).any():
            b = int(np.argmax((concrete[:, 1:] & ~concrete[:, :-1]).any(axis=1)))
            raise ValueError(
                f"`valid` with decode=True must mark right-padded rows (True, then only False); row {b} is "
                f"{concrete[b].astype(int).tolist()}."
            )
        return valid

    def _update_ring(self, k, v, mask, offset, count):
        """A sliding-window layer's step over its ring buffer of W slots (slot s holds the newest cached position
        congruent to s mod W): attends over the W cached keys and the T new ones, then stores the newest real
        ones. Returns keys and values `[B, W + T, K, H]`, the mask over them, no overflow, and their positions."""
        W, T = self.sliding_window, k.shape[1]
        slots = jnp.arange(W, dtype=jnp.int32)[None, :]
        last = offset[:, None] - 1  # the newest cached position, per sequence
        cached_pos = last - jnp.mod(last - slots, W)  # [B, W]; < 0: a slot not written yet
        new_pos = offset[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]  # [B, T]
        key_pos = jnp.concatenate([cached_pos, new_pos], axis=1)  # [B, W + T]
        key_ok = jnp.concatenate([cached_pos >= 0, jnp.arange(T)[None, :] < count[:, None]], axis=1)
        q, s = new_pos[:, :, None], key_pos[:, None, :]
        visible = key_ok[:, None, :] & (s <= q) & (s > q - W)  # [B, T, W + T]
        keys = jnp.concatenate([self.cached_key[...], k.astype(self.cached_key.dtype)], axis=1)
        values = jnp.concatenate([self.cached_value[...], v.astype(self.cached_value.dtype)], axis=1)

        # Slot s now holds the newest real position congruent to s: a new one when it is >= offset.
        newest = offset[:, None] + count[:, None] - 1
        pos = newest - jnp.mod(newest - slots, W)  # [B, W]
        take_new = (pos >= offset[:, None])[:, :, None, None]
        row = jnp.clip(pos - offset[:, None], 0, max(T - 1, 0))[:, :, None, None]
        if T:
            self.cached_key[...] = jnp.where(take_new, jnp.take_along_axis(keys[:, W:], row, axis=1), keys[:, :W])
            self.cached_value[...] = jnp.where(take_new, jnp.take_along_axis(values[:, W:], row, axis=1), values[:, :W])
        self.cache_index[...] = offset + count
        return keys, values, ops.combine_masks(mask, visible[:, None]), None, key_pos

    def _update_cache(self, k, v, mask, offset, count):
        """Writes k, v `[B, T, K, H]` at each sequence's index (which then advances by `count [B]`); returns the
        cache, the mask over it, the sequences `[B]` whose write would pass `max_len` (these are not written:
        dynamic_update_slice would clamp the start and overwrite earlier slots) and the keys' positions."""
        B, T = k.shape[:2]
        max_len = self.cached_key.shape[1]
        check_cache_room(offset, T, max_len)
        overflow = offset + T > max_len

        def write_one(buf, new, i, skip):
            # dynamic_update_slice would clamp the start to max_len - T; an overflowing sequence writes back the
            # slots that are there instead (a select of T rows: the update stays in place, no copy of the cache).
            start = jnp.clip(i, 0, max_len - T)
            old = jax.lax.dynamic_slice_in_dim(buf, start, T, axis=0)
            return jax.lax.dynamic_update_slice_in_dim(buf, jnp.where(skip, old, new), start, axis=0)

        write = jax.vmap(write_one)
        self.cached_key[...] = write(self.cached_key[...], k.astype(self.cached_key.dtype), offset, overflow)
        self.cached_value[...] = write(self.cached_value[...], v.astype(self.cached_value.dtype), offset, overflow)
        self.cache_index[...] = offset + count
        # [B, 1, T, max_len]; being causal it also hides the slots not written yet.
        if self.sliding_window is None:
            cache_mask = ops.causal_mask(T, max_len, offset=offset)
        else:
            cache_mask = ops.sliding_window_mask(T, max_len, window=self.sliding_window, offset=offset)
        key_positions = jnp.arange(max_len)[None, :]
        return (
            self.cached_key[...],
            self.cached_value[...],
            ops.combine_masks(mask, cache_mask),
            overflow,
            key_positions,
        )

    def _attend(self, q, k, v, *, mask, alibi, segment_ids, is_causal, decode):
        use_dropout = self.dropout_rate > 0 and not self.deterministic
        if (shardings := context_shardings(q, k)) is not None:  # the sequence split over devices: ring attention
            return ring_self_attention(
                q,
                k,
                v,
                shardings,
                causal=is_causal,
                window=self.sliding_window,
                scale=self.scale,
                logit_softcap=self.logit_softcap,
                sinks=None if self.sinks is None else self.sinks[...],
                alibi=alibi,
                segment_ids=segment_ids,
                mask=mask,
                decode=decode,
                dropout_rate=self.dropout_rate if use_dropout else 0.0,
            )
        bias = None
        if alibi is not None:  # ops.alibi_bias with per-example query positions (a cache index, `positions`), which
            # its scalar `offset` cannot express: -slope_n * |query position - key position|.
            q_pos, key_positions = alibi
            distance = jnp.abs(q_pos[:, None, :, None] - key_positions[:, None, None, :]).astype(jnp.float32)
            bias = -jnp.asarray(ops.alibi_slopes(self.num_heads))[None, :, None, None] * distance
        facts = dict(
            dtype=q.dtype,
            head_dim=self.head_dim,
            q_len=q.shape[1],
            kv_len=k.shape[1],
            has_mask=mask is not None,
            has_bias=bias is not None,
            has_segments=segment_ids is not None,
            sliding_window=self.sliding_window,
            softcap=self.logit_softcap,
            dropout=use_dropout,
            decode=decode,
        )
        implementation = attention_dispatch.choose(self.implementation, **facts)
        if self.sinks is not None and implementation not in SINK_IMPLEMENTATIONS:
            check_sinks_implementation(self.implementation, True)  # an explicit kernel without sinks: refused
            # "auto" chose a kernel without sinks (cudnn on a GPU, pallas on a TPU): take the one the CPU would
            # (blockwise for long sequences without an array mask or bias, else xla); both apply sinks.
            implementation = attention_dispatch.choose("auto", **facts, backend="cpu")
        logit_options = dict(scale=self.scale, logit_softcap=self.logit_softcap)
        if self.sinks is not None:
            logit_options["sinks"] = self.sinks[...]
        structural = implementation in ("blockwise", "pallas")  # these take the window and segments as arguments
        if self.sliding_window is not None and not structural and not decode:
            # (decoding's cache mask has the window already)
            window = ops.sliding_window_mask(q.shape[1], k.shape[1], window=self.sliding_window, causal=is_causal)
            mask = ops.combine_masks(mask, window)
        if segment_ids is not None and not structural:
            mask, segment_ids = ops.combine_masks(mask, ops.segment_mask(segment_ids)), None
        if implementation == "xla":
            rng = self.dropout_rngs() if use_dropout else None
            return ops.dot_product_attention(
                q,
                k,
                v,
                mask=mask,
                bias=bias,
                is_causal=is_causal,
                dropout_rate=self.dropout_rate if use_dropout else 0.0,
                dropout_rng=rng,
                **logit_options,
            )
        if implementation == "cudnn" and (
            jax.default_backend() != "gpu" or q.dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        ):
            raise ValueError(
                f"implementation='cudnn' runs cuDNN flash attention on an NVIDIA GPU in bfloat16 / float16; this call "
                f"is {q.dtype} on {jax.default_backend()!r}. Use implementation='auto' (or 'xla')."
            )
        if implementation in ("jax_nn", "cudnn"):  # note: rows with nothing to attend to average all values
            if mask is not None:
                mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
            backend = "cudnn" if implementation == "cudnn" else None
            return jax.nn.dot_product_attention(
                q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=self.scale, implementation=backend
            )
        if mask is not None or bias is not None:
            raise ValueError(
                f"implementation={implementation!r} takes its mask structurally (is_causal, sliding_window); "
                "an array mask (padding, packed segments) or an ALiBi bias needs implementation='xla'."
            )
        if implementation == "pallas":
            interpret = jax.default_backend() != "tpu"
            if interpret:
                warnings.warn(
                    f"implementation='pallas' on {jax.default_backend()!r} runs the TPU splash kernel in the Pallas "
                    "interpreter: correct but slow, for tests. Use 'auto' or 'xla' to train here.",
                    stacklevel=2,
                )
            return ops.splash_attention(
                q,
                k,
                v,
                is_causal=is_causal,
                window=self.sliding_window,
                segment_ids=segment_ids,
                interpret=interpret,
                **logit_options,
            )
        return ops.blockwise_attention(
            q, k, v, is_causal=is_causal, window=self.sliding_window, segment_ids=segment_ids, **logit_options
        )
