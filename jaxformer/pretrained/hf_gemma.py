"""Gemma 1-4 (text) `config.json` <-> `ModelConfig`: the Gemma families of `hf_config` (docs/pretrained.md)."""

from __future__ import annotations

from collections.abc import Callable

from jaxformer.models import ModelConfig
from jaxformer.pretrained.hf_keys import Keys, rope, rope_dict, rope_params

_GEMMA_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}
_GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")  # transformers reads Gemma's legacy "gelu" as the tanh form


def _gemma4_globals(keys: Keys, layer_types: tuple[str, ...], k_eq_v: bool) -> tuple[int | None, int | None]:
    """(global_head_dim, global_num_kv_heads) from the hub's keys or transformers 5's `per_layer_config`
    ({layer index: {"head_dim", "num_key_value_heads"}} for the full-attention layers)."""
    head_dim, kv_heads = keys.take("global_head_dim", None), keys.take("num_global_key_value_heads", None)
    per_layer = keys.take("per_layer_config", None)
    if per_layer:
        globals_ = {str(i) for i, kind in enumerate(layer_types) if kind == "global"}
        values = list(per_layer.values())
        unknown = sorted({k for v in values for k in v} - {"head_dim", "num_key_value_heads"})
        if set(per_layer) != globals_ or unknown or any(v != values[0] for v in values):
            raise ValueError(
                f"config.json: per_layer_config={per_layer!r} is not supported; jaxformer computes one head_dim / "
                "num_key_value_heads override for every full-attention layer."
            )
        head_dim = values[0].get("head_dim", head_dim)
        kv_heads = values[0].get("num_key_value_heads", kv_heads if k_eq_v else None)
    # transformers uses num_global_key_value_heads only with attention_k_eq_v
    return head_dim, kv_heads if k_eq_v or per_layer else None


def _gemma4_fields(keys: Keys, fields: dict, layer_types: tuple[str, ...]) -> dict:
    """Gemma 4 text: plain (w) RMSNorms, q / k / v norms, logit scale 1, a scalar per layer, proportional partial
    RoPE on global layers, global layers' own head_dim / kv heads (and values = keys), KV sharing, per-layer
    inputs. Mixture-of-experts blocks are refused."""
    keys.expect("enable_moe_block", False)
    for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
        keys.take(key, None)  # read only with enable_moe_block
    k_eq_v = bool(keys.take("attention_k_eq_v", False))
    head_dim, kv_heads = _gemma4_globals(keys, layer_types, k_eq_v)
    shared = keys.take("num_kv_shared_layers", 0)
    double = keys.take("use_double_wide_mlp", False)
    ple = keys.take("hidden_size_per_layer_input", 0) or 0
    ple_vocab = keys.take("vocab_size_per_layer_input", None)
    params = keys.take("rope_parameters", None) or {}
    full = rope_params(params.get("full_attention") or {}, " (full_attention)")
    local = rope_params(params.get("sliding_attention") or {}, " (sliding_attention)")
    fields.update(
        norm_plus_one=False,
        qk_norm=True,
        v_norm=True,
        layer_scale=True,
        attention_scale=1.0,
        rope_base=float(full[0] or 1e6),
        rope_scaling=full[1],
        global_head_dim=None if head_dim in (None, fields["head_dim"]) else head_dim,
        global_num_kv_heads=None if kv_heads in (None, fields["num_kv_heads"]) else kv_heads,
        global_value_is_key=k_eq_v,
        num_kv_shared_layers=shared,
        kv_shared_d_ff=2 * fields["d_ff"] if double and shared else None,
        per_layer_input_dim=ple,
        per_layer_vocab_size=ple_vocab if ple and ple_vocab != fields["vocab_size"] else None,
    )
    if fields["layer_types"] is not None:
        fields.update(local_rope_base=float(local[0] or 1e4), local_rope_scaling=local[1])
    return fields


def gemma_fields(keys: Keys, family: str) -> dict:
    """Gemma 1 (`gemma`), Gemma 2 (`gemma2`) and Gemma 3's text model (`gemma3_text`): RMSNorm scaling by 1 + w,
    the embedding times sqrt(D), the tanh-GELU gated FFN, rotate-half RoPE; from Gemma 2 on, sandwich norms,
    query_pre_attn_scalar, logit soft-caps and local / global layers; Gemma 3 adds q/k norms and a RoPE per kind."""
    keys.expect("use_bidirectional_attention", None, False)
    # Gemma 1 files name the activation hidden_act (legacy "gelu"); later ones hidden_activation, which wins.
    activation = keys.take("hidden_activation", None) or keys.take("hidden_act", "gelu_pytorch_tanh")
    keys.take("hidden_act", None)
    if activation not in _GEMMA_ACTIVATIONS:
        raise ValueError(
            f"config.json: hidden_activation={activation!r} is not supported for {family} models; jaxformer "
            f"computes {' or '.join(_GEMMA_ACTIVATIONS)} (the tanh GELU)."
        )
    d_model, num_heads, num_layers = (
        keys.take("hidden_size"),
        keys.take("num_attention_heads"),
        keys.take("num_hidden_layers"),
    )
    eps = keys.take("rms_norm_eps", 1e-6)
    attention_bias = keys.take("attention_bias", False)
    head_dim = keys.take("head_dim", None) or d_model // num_heads
    fields = dict(
        vocab_size=keys.take("vocab_size"),
        num_layers=num_layers,
        d_model=d_model,
        num_heads=num_heads,
        num_kv_heads=keys.take("num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        d_ff=keys.take("intermediate_size"),
        max_len=keys.take("max_position_embeddings"),
        positional="rope",
        rope_interleaved=False,
        norm="rmsnorm",
        norm_plus_one=True,
        norm_position="pre",
        norm_epsilon=eps,
        qk_norm_epsilon=eps,
        embed_scale=True,
        activation="geglu",
        use_bias=False,
        qkv_bias=attention_bias,
        out_bias=attention_bias,
        mlp_bias=False,
        tie_embeddings=keys.take("tie_word_embeddings", True),
        dropout_rate=0.0,
        attention_dropout_rate=keys.take("attention_dropout", 0.0),
    )
    if family == "gemma":
        fields["rope_base"], fields["rope_scaling"] = rope(keys)
        return fields

    window = keys.take("sliding_window", None)
    keys.take("sliding_window_size", None)  # an older name of sliding_window in some Gemma 2 files
    pattern = (
        keys.take("sliding_window_pattern", None)
        or keys.take("_sliding_window_pattern", None)
        or (2 if family == "gemma2" else 6)
    )
    keys.take("_sliding_window_pattern", None)
    hf_types = keys.take("layer_types", None) or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)
    ]
    unknown = sorted(set(hf_types) - set(_GEMMA_LAYER_TYPES))
    if unknown:
        raise ValueError(
            f"config.json: layer_types {unknown} are not supported; jaxformer computes {sorted(_GEMMA_LAYER_TYPES)}."
        )
    layer_types = tuple(_GEMMA_LAYER_TYPES[t] for t in hf_types)
    if family == "gemma4_text":  # transformers makes Gemma 4's last layer global whatever the file says
        layer_types = (*layer_types[:-1], "global")
    attention_cap = keys.take("attn_logit_softcapping", None)
    if family in ("gemma3_text", "gemma4_text"):
        # Gemma 3 files carry the key, but transformers' Gemma3Attention never applies it (nor did Google's Gemma 3).
        attention_cap = None
    fields.update(
        sandwich_norm=True,
        attention_scale=float(keys.take("query_pre_attn_scalar", head_dim)) ** -0.5,
        attention_logit_softcap=attention_cap,
        final_logit_softcap=keys.take("final_logit_softcapping", None),
        qk_norm=family == "gemma3_text",
        layer_types=None if "local" not in layer_types else layer_types,
        sliding_window=window if "local" in layer_types else None,
    )
    if family == "gemma2":
        fields["rope_base"], fields["rope_scaling"] = rope(keys)
        return fields
    if family == "gemma4_text":
        return _gemma4_fields(keys, fields, layer_types)
    # Gemma 3: one RoPE per kind, as rope_parameters {"full_attention": ..., "sliding_attention": ...}
    # (transformers >= 5) or rope_theta + rope_scaling (global) and rope_local_base_freq (local).
    params = keys.take("rope_parameters", None) or {}
    if set(params) <= set(_GEMMA_LAYER_TYPES) and params:
        full = rope_params(params.get("full_attention") or {}, " (full_attention)")
        local = rope_params(params.get("sliding_attention") or {}, " (sliding_attention)")
        keys.take("rope_theta", None), keys.take("rope_local_base_freq", None), keys.take("rope_scaling", None)
        global_base, global_scaling = float(full[0] or 1e6), full[1]
        local_base, local_scaling = float(local[0] or 1e4), local[1]
    else:
        legacy = dict(keys.take("rope_scaling", None) or {})
        global_base, global_scaling = rope_params({**legacy, **params})
        global_base = float(global_base or keys.take("rope_theta", 1e6))
        local_base, local_scaling = float(keys.take("rope_local_base_freq", 1e4)), None
    fields.update(rope_base=global_base, rope_scaling=global_scaling)
    if fields["layer_types"] is not None:
        fields.update(local_rope_base=local_base, local_rope_scaling=local_scaling)
    return fields


def gemma_family(cfg: ModelConfig, need: Callable[[bool, str], None]) -> str:
    """The Gemma family (gemma | gemma2 | gemma3_text | gemma4_text) that `cfg` computes; `need(condition, what)`
    refuses what none does."""
    gemma4 = cfg.v_norm or cfg.layer_scale or cfg.per_layer_input_dim > 0 or cfg.num_kv_shared_layers > 0
    if gemma4:
        need(cfg.norm == "rmsnorm" and not cfg.norm_plus_one, "Gemma 4: plain (w) RMSNorm")
        need(cfg.activation == "geglu" and cfg.sandwich_norm and cfg.qk_norm, "Gemma 4: GeGLU, sandwich and q/k norms")
        need(cfg.v_norm and cfg.layer_scale and cfg.attention_scale == 1.0, "Gemma 4: v norm, layer scalars, scale 1")
        need(cfg.positional == "rope" and not cfg.rope_interleaved, "Gemma 4 has rotate-half RoPE")
        need(cfg.embed_scale and not cfg.embed_norm and cfg.type_vocab_size == 0, "Gemma scales its embedding")
        need(not cfg.head_bias and not cfg.mlp_bias and not cfg.qkv_bias and not cfg.out_bias, "Gemma 4: no biases")
        need(cfg.attention_logit_softcap is None, "Gemma 4 with an attention soft-cap (transformers has none)")
        need(cfg.layer_types is not None and cfg.layer_types[-1] == "global", "Gemma 4: layer_types ending global")
        need(cfg.vocab_multiple == 1, f"vocab_multiple={cfg.vocab_multiple} (save an unpadded vocabulary)")
        need(cfg.kv_shared_d_ff in (None, 2 * cfg.d_ff), "Gemma 4: KV-shared layers' FFN d_ff or 2 d_ff wide")
        need(cfg.global_num_kv_heads is None or cfg.global_value_is_key, "Gemma 4: global kv heads need k_eq_v")
        return "gemma4_text"
    need(cfg.norm == "rmsnorm" and cfg.norm_plus_one and cfg.activation == "geglu", "Gemma: (1 + w) RMSNorm, GeGLU")
    need(cfg.positional == "rope" and not cfg.rope_interleaved, "Gemma has rotate-half RoPE")
    need(cfg.embed_scale and not cfg.embed_norm and cfg.type_vocab_size == 0, "Gemma scales its embedding by sqrt(D)")
    need(not cfg.head_bias and not cfg.mlp_bias and cfg.qkv_bias == cfg.out_bias, "Gemma: one attention bias switch")
    need(cfg.vocab_multiple == 1, f"vocab_multiple={cfg.vocab_multiple} (save an unpadded vocabulary)")
    if not cfg.sandwich_norm:
        need(not cfg.qk_norm and cfg.layer_types is None and cfg.sliding_window is None, "Gemma 1: no window, qk_norm")
        need(cfg.attention_logit_softcap is None and cfg.final_logit_softcap is None, "Gemma 1 has no soft-caps")
        need(cfg.attention_scale in (None, cfg.head_dim**-0.5), "Gemma 1 scales logits by head_dim^-1/2")
        return "gemma"
    if cfg.qk_norm:
        need(cfg.attention_logit_softcap is None, "Gemma 3 with an attention soft-cap (transformers ignores it)")
        return "gemma3_text"
    need(cfg.local_rope_base is None and cfg.local_rope_scaling is None, "Gemma 2: one RoPE for every layer")
    return "gemma2"


def gemma_config(cfg: ModelConfig, family: str) -> dict:
    out = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act" if family == "gemma" else "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_epsilon,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.out_bias,
        "attention_dropout": cfg.attention_dropout_rate,
    }
    if cfg.qk_norm and cfg.qk_norm_epsilon != cfg.norm_epsilon:
        raise ValueError(
            f"Gemma 3 uses rms_norm_eps for q/k norms too: qk_norm_epsilon={cfg.qk_norm_epsilon} != "
            f"norm_epsilon={cfg.norm_epsilon}."
        )
    if family == "gemma":
        return {**out, "rope_parameters": rope_dict(cfg.rope_base, cfg.rope_scaling)}
    kinds = cfg.layer_types or ("local" if cfg.sliding_window else "global",) * cfg.num_layers
    scalar = cfg.head_dim if cfg.attention_scale is None else cfg.attention_scale**-2
    out.update(
        query_pre_attn_scalar=round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar,
        sliding_window=cfg.sliding_window,
        layer_types=[{"local": "sliding_attention", "global": "full_attention"}[k] for k in kinds],
        attn_logit_softcapping=cfg.attention_logit_softcap,
        final_logit_softcapping=cfg.final_logit_softcap,
    )
    if family == "gemma2":
        return {**out, "rope_parameters": rope_dict(cfg.rope_base, cfg.rope_scaling)}
    if family == "gemma4_text":
        for key in ("query_pre_attn_scalar", "attn_logit_softcapping"):
            del out[key]
        out.update(
            attention_k_eq_v=cfg.global_value_is_key,
            global_head_dim=cfg.global_head_dim or cfg.head_dim,
            num_kv_shared_layers=cfg.num_kv_shared_layers,
            use_double_wide_mlp=cfg.kv_shared_d_ff is not None,
            hidden_size_per_layer_input=cfg.per_layer_input_dim,
            vocab_size_per_layer_input=cfg.per_layer_vocab_size or cfg.vocab_size,
            enable_moe_block=False,
        )
        if cfg.global_value_is_key:
            out["num_global_key_value_heads"] = cfg.global_num_kv_heads or cfg.num_kv_heads
    local = cfg.local_rope_base or cfg.rope_base
    rope = {
        "full_attention": rope_dict(cfg.rope_base, cfg.rope_scaling),
        "sliding_attention": rope_dict(local, cfg.local_rope_scaling),
    }
    return {**out, "rope_parameters": rope}
