"""Hugging Face `config.json` <-> `ModelConfig`, for the architectures jaxformer reads and writes.

Every key of a `config.json` is accounted for: it becomes a `ModelConfig` field, or it must hold the one value
jaxformer computes the same way (e.g. `hidden_act: "silu"`), or it is listed in `IGNORED` (bookkeeping that does
not change what the model computes: token ids, the dtype it was saved in, generation defaults). Any other key, or
a value jaxformer cannot compute, is refused with an error that names it: nothing is guessed.
"""

from __future__ import annotations

from typing import Any

from jaxformer.models import ModelConfig
from jaxformer.ops import RopeScaling

# architectures[0] -> jaxformer family. Each family reads the config keys of its `model_type`.
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "ViTForImageClassification": "vit",
    "ViTModel": "vit",
    "BertForMaskedLM": "bert",
    "BertModel": "bert",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma4ForCausalLM": "gemma4_text",
}
FAMILY_ARCHITECTURE = {family: arch for arch, family in ARCHITECTURES.items()}  # BERT: set by the heads below
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
GEMMA_FAMILY = ("gemma", "gemma2", "gemma3_text", "gemma4_text")

# Keys that describe no computation of the model (ids of special tokens, generation and training defaults, how it
# was saved). Values are not checked.
IGNORED = {
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "initializer_range",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "task_specific_params",
    "_name_or_path",
    "id2label",
    "label2id",
    "bad_words_ids",
    "max_length",
    "min_length",
    "num_beams",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "tokenizer_class",
    "prefix",
    "pretraining_tp",  # how the original training split matmuls; the same maths
    "cache_implementation",  # Gemma 2 / 3: which KV-cache class transformers' generate uses
    "chunk_size_feed_forward",  # how transformers may chunk the FFN over positions; the same maths
    "is_encoder_decoder",
    "problem_type",
    "reorder_and_upcast_attn",  # GPT-2: attention computed in float32, which jaxformer's softmax always is
    # GPT-2's sequence-summary head (GPT2DoubleHeadsModel only; a GPT2LMHeadModel has no such weights)
    "summary_activation",
    "summary_first_dropout",
    "summary_proj_to_labels",
    "summary_type",
    "summary_use_proj",
}

_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_exact"}


class _Keys:
    """A config dict whose keys must each be taken (`take`, `expect`) or ignored; `finish` refuses the rest."""

    def __init__(self, hf: dict, family: str):
        self.hf, self.family, self.seen = hf, family, set(IGNORED)

    def take(self, key: str, default: Any = ...) -> Any:
        self.seen.add(key)
        if key in self.hf:
            return self.hf[key]
        if default is ...:
            raise ValueError(f"config.json of a {self.family} model lacks {key!r}, which jaxformer needs.")
        return default

    def expect(self, key: str, *allowed: Any) -> None:
        """The key may be absent or hold one of `allowed` (what jaxformer computes); anything else is refused."""
        value = self.take(key, allowed[0])
        if value not in allowed:
            raise ValueError(
                f"config.json: {key}={value!r} is not supported for {self.family} models (jaxformer computes "
                f"{' or '.join(map(repr, allowed))}); the checkpoint would compute something else."
            )

    def finish(self) -> None:
        unknown = sorted(set(self.hf) - self.seen)
        if unknown:
            raise ValueError(
                f"config.json of a {self.family} model has keys jaxformer does not support: {unknown}. They may "
                "change what the model computes, so the checkpoint is refused rather than loaded approximately."
            )


def family_of(hf: dict) -> str:
    """The jaxformer family (gpt2, llama, mistral, qwen2, qwen3) that `config.json` describes."""
    architectures = hf.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if not known:
        raise ValueError(
            f"config.json: architectures={architectures!r} (model_type={hf.get('model_type')!r}) is not supported; "
            f"jaxformer reads {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[known[0]]


def to_model_config(hf: dict, **overrides) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face `config.json` dict (plus field `overrides`, e.g. dtype)."""
    family = family_of(hf)
    keys = _Keys(hf, family)
    if family == "gpt2":
        fields = _gpt2_fields(keys)
    elif family == "vit":
        fields = _vit_fields(keys, classifier="ViTForImageClassification" in (hf.get("architectures") or []))
    elif family == "bert":
        fields = _bert_fields(keys, masked_lm="BertForMaskedLM" in (hf.get("architectures") or []))
    elif family in GEMMA_FAMILY:
        fields = _gemma_fields(keys, family)
    else:
        fields = _llama_fields(keys, family)
    keys.finish()
    return ModelConfig(**{**fields, **overrides})


def _gpt2_fields(keys: _Keys) -> dict:
    keys.expect("scale_attn_weights", True)
    keys.expect("scale_attn_by_inverse_layer_idx", False)
    keys.expect("add_cross_attention", False)
    activation = keys.take("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        raise ValueError(
            f"config.json: activation_function={activation!r} is not supported; jaxformer computes "
            f"{sorted(_GPT2_ACTIVATIONS)}."
        )
    resid, embd = keys.take("resid_pdrop", 0.1), keys.take("embd_pdrop", 0.1)
    if resid != embd:
        raise ValueError(
            f"config.json: resid_pdrop={resid} != embd_pdrop={embd}; jaxformer's dropout_rate is one rate for the "
            "sublayer outputs and the embeddings."
        )
    d_model = keys.take("n_embd")
    return dict(
        vocab_size=keys.take("vocab_size"),
        num_layers=keys.take("n_layer"),
        d_model=d_model,
        num_heads=keys.take("n_head"),
        d_ff=keys.take("n_inner", None) or 4 * d_model,
        max_len=keys.take("n_positions"),
        positional="learned",
        norm="layernorm",
        norm_position="pre",
        norm_epsilon=keys.take("layer_norm_epsilon", 1e-5),
        activation=_GPT2_ACTIVATIONS[activation],
        use_bias=True,
        tie_embeddings=keys.take("tie_word_embeddings", True),
        dropout_rate=resid,
        attention_dropout_rate=keys.take("attn_pdrop", 0.1),
    )


def _bert_fields(keys: _Keys, *, masked_lm: bool) -> dict:
    keys.expect("hidden_act", "gelu")
    keys.expect("position_embedding_type", "absolute")
    keys.expect("is_decoder", False)
    keys.expect("add_cross_attention", False)
    keys.take("classifier_dropout", None)  # a sequence-classification head's; these files have none
    dropout = keys.take("hidden_dropout_prob", 0.1)
    return dict(
        vocab_size=keys.take("vocab_size"),
        num_layers=keys.take("num_hidden_layers"),
        d_model=keys.take("hidden_size"),
        num_heads=keys.take("num_attention_heads"),
        d_ff=keys.take("intermediate_size"),
        max_len=keys.take("max_position_embeddings"),
        type_vocab_size=keys.take("type_vocab_size", 2),
        positional="learned",
        norm="layernorm",
        norm_position="post",
        norm_epsilon=keys.take("layer_norm_eps", 1e-12),
        embed_norm=True,
        activation="gelu_exact",
        use_bias=True,
        tie_embeddings=keys.take("tie_word_embeddings", True),
        pooler=not masked_lm,  # BertModel has the pooler; BertForMaskedLM drops it
        mlm_head=masked_lm,
        dropout_rate=dropout,
        attention_dropout_rate=keys.take("attention_probs_dropout_prob", 0.1),
    )


def _vit_fields(keys: _Keys, *, classifier: bool) -> dict:
    keys.expect("hidden_act", "gelu")
    keys.take("encoder_stride", None)  # masked image modelling's decoder, which neither model has
    d_model = keys.take("hidden_size")
    if classifier:  # the pooler settings describe a head that a ViTForImageClassification does not have
        keys.take("pooler_act", None)
        keys.take("pooler_output_size", None)
    else:  # ViTModel: its pooler is tanh(dense(h_0)) at the model's width
        keys.expect("pooler_act", "tanh")
        keys.expect("pooler_output_size", None, d_model)
    image, patch = keys.take("image_size"), keys.take("patch_size")
    labels = (keys.hf.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}) if classifier else {}
    dropout = keys.take("hidden_dropout_prob", 0.0)
    return dict(
        vocab_size=0,
        num_layers=keys.take("num_hidden_layers"),
        d_model=d_model,
        num_heads=keys.take("num_attention_heads"),
        d_ff=keys.take("intermediate_size"),
        max_len=(image // patch) ** 2 + 1,
        image_size=image,
        patch_size=patch,
        num_channels=keys.take("num_channels", 3),
        num_classes=len(labels),  # transformers' default num_labels is 2
        pooler=not classifier,
        positional="learned",
        norm="layernorm",
        norm_position="pre",
        norm_epsilon=keys.take("layer_norm_eps", 1e-12),
        activation="gelu_exact",
        use_bias=True,
        qkv_bias=keys.take("qkv_bias", True),
        dropout_rate=dropout,
        attention_dropout_rate=keys.take("attention_probs_dropout_prob", 0.0),
    )


def _rope_params(params: dict, where: str = "") -> tuple[float | None, RopeScaling | None]:
    """(rope_theta or None, rope_scaling) of one RoPE parameter dict (`rope_type` default | linear | llama3)."""
    params = dict(params)
    base = params.pop("rope_theta", None)
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        if params:
            raise ValueError(
                f"config.json: rope parameters{where} {sorted(params)} are not supported for rope_type default."
            )
        return base, None
    if kind not in ("linear", "llama3", "proportional"):
        raise ValueError(
            f"config.json: rope_type={kind!r}{where} is not supported; jaxformer computes default, linear, llama3, "
            "proportional."
        )
    names = {
        "factor": "factor",
        "low_freq_factor": "low_freq_factor",
        "high_freq_factor": "high_freq_factor",
        "original_max_position_embeddings": "original_max_len",
        "partial_rotary_factor": "fraction",
    }
    allowed = {"llama3": list(names)[:4], "linear": ["factor"], "proportional": ["factor", "partial_rotary_factor"]}
    unknown = sorted(set(params) - set(allowed[kind]))
    if unknown:
        raise ValueError(f"config.json: rope parameters{where} {unknown} are not supported for rope_type {kind!r}.")
    return base, RopeScaling(kind, **{names[k]: v for k, v in params.items()})


def _rope(keys: _Keys) -> tuple[float, RopeScaling | None]:
    """(rope_base, rope_scaling) from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`."""
    params = dict(keys.take("rope_parameters", None) or {})
    legacy = keys.take("rope_scaling", None)
    if legacy:
        params = {**dict(legacy), **params}
    base, scaling = _rope_params(params)
    return float(base or keys.take("rope_theta", 10000.0)), scaling


def _llama_fields(keys: _Keys, family: str) -> dict:
    keys.expect("hidden_act", "silu")
    keys.expect("mlp_bias", False)
    d_model, num_heads = keys.take("hidden_size"), keys.take("num_attention_heads")
    rope_base, rope_scaling = _rope(keys)
    attention_bias = keys.take("attention_bias", False)
    sliding_window = None
    if family == "mistral":
        sliding_window = keys.take("sliding_window", None)
    if family in ("qwen2", "qwen3"):
        keys.expect("use_sliding_window", False)
        keys.take("sliding_window", None)  # read only when use_sliding_window is True
        keys.take("max_window_layers", None)  # likewise
        keys.expect("layer_types", None, ["full_attention"] * keys.take("num_hidden_layers"))
    eps = keys.take("rms_norm_eps", 1e-6)
    return dict(
        vocab_size=keys.take("vocab_size"),
        num_layers=keys.take("num_hidden_layers"),
        d_model=d_model,
        num_heads=num_heads,
        num_kv_heads=keys.take("num_key_value_heads", None) or num_heads,
        head_dim=keys.take("head_dim", None) or d_model // num_heads,
        d_ff=keys.take("intermediate_size"),
        max_len=keys.take("max_position_embeddings"),
        positional="rope",
        rope_base=rope_base,
        rope_interleaved=False,  # Hugging Face's Llama family rotates halves
        rope_scaling=rope_scaling,
        sliding_window=sliding_window,
        norm="rmsnorm",
        norm_position="pre",
        norm_epsilon=eps,
        activation="swiglu",
        use_bias=False,
        qkv_bias=True if family == "qwen2" else attention_bias,
        out_bias=attention_bias,
        mlp_bias=False,
        qk_norm=family == "qwen3",
        qk_norm_epsilon=eps,
        tie_embeddings=keys.take("tie_word_embeddings", family == "qwen2"),
        dropout_rate=0.0,
        attention_dropout_rate=keys.take("attention_dropout", 0.0),
    )


_GEMMA_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}
_GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")  # transformers reads Gemma's legacy "gelu" as the tanh form


def _gemma4_globals(keys: _Keys, layer_types: tuple[str, ...], k_eq_v: bool) -> tuple[int | None, int | None]:
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


def _gemma4_fields(keys: _Keys, fields: dict, layer_types: tuple[str, ...]) -> dict:
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
    full = _rope_params(params.get("full_attention") or {}, " (full_attention)")
    local = _rope_params(params.get("sliding_attention") or {}, " (sliding_attention)")
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


def _gemma_fields(keys: _Keys, family: str) -> dict:
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
        fields["rope_base"], fields["rope_scaling"] = _rope(keys)
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
        fields["rope_base"], fields["rope_scaling"] = _rope(keys)
        return fields
    if family == "gemma4_text":
        return _gemma4_fields(keys, fields, layer_types)
    # Gemma 3: one RoPE per kind, as rope_parameters {"full_attention": ..., "sliding_attention": ...}
    # (transformers >= 5) or rope_theta + rope_scaling (global) and rope_local_base_freq (local).
    params = keys.take("rope_parameters", None) or {}
    if set(params) <= set(_GEMMA_LAYER_TYPES) and params:
        full = _rope_params(params.get("full_attention") or {}, " (full_attention)")
        local = _rope_params(params.get("sliding_attention") or {}, " (sliding_attention)")
        keys.take("rope_theta", None), keys.take("rope_local_base_freq", None), keys.take("rope_scaling", None)
        global_base, global_scaling = float(full[0] or 1e6), full[1]
        local_base, local_scaling = float(local[0] or 1e4), local[1]
    else:
        legacy = dict(keys.take("rope_scaling", None) or {})
        global_base, global_scaling = _rope_params({**legacy, **params})
        global_base = float(global_base or keys.take("rope_theta", 1e6))
        local_base, local_scaling = float(keys.take("rope_local_base_freq", 1e4)), None
    fields.update(rope_base=global_base, rope_scaling=global_scaling)
    if fields["layer_types"] is not None:
        fields.update(local_rope_base=local_base, local_rope_scaling=local_scaling)
    return fields


# -- ModelConfig -> config.json ----------------------------------------------------------------------------------


def family_for(cfg: ModelConfig, *, vision: bool = False, encoder: bool = False) -> str:
    """The Hugging Face family whose computation `cfg` is (`vision`: of a ViT), or a ValueError naming the field
    that fits none."""

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(f"No Hugging Face architecture computes this ModelConfig: {what}.")

    if encoder:
        need(cfg.positional == "learned" and cfg.norm == "layernorm", "BERT: learned positions, layernorm")
        need(cfg.norm_position == "post" and cfg.embed_norm, "BERT: post-norm with a norm after the embeddings")
        need(cfg.activation == "gelu_exact" and cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias, "BERT: GELU, biases")
        need(
            cfg.pooler != cfg.mlm_head,
            "BERT with both or neither of pooler and mlm_head (BertModel has the pooler, BertForMaskedLM the head)",
        )
        return "bert"
    if vision:
        need(cfg.num_classes > 0 or cfg.pooler, "a ViT with neither a classifier nor a pooler")
        need(cfg.positional == "learned" and cfg.norm == "layernorm", "ViT: learned positions, layernorm")
        need(cfg.norm_position == "pre" and cfg.activation == "gelu_exact", "ViT: pre-norm, exact GELU")
        need(cfg.out_bias and cfg.mlp_bias and not cfg.qk_norm, "ViT: output and MLP biases, no qk_norm")
        return "vit"

    need(cfg.norm_position == "pre", f"norm_position={cfg.norm_position!r} (the decoders are pre-norm)")
    if cfg.norm_plus_one or cfg.activation == "geglu":
        return _gemma_family(cfg, need)
    need(not (cfg.v_norm or cfg.layer_scale or cfg.per_layer_input_dim or cfg.num_kv_shared_layers), "Gemma 4's")
    need(cfg.layer_types is None, "layer_types (local / global layers are Gemma 2 and 3's)")
    need(cfg.attention_logit_softcap is None and cfg.final_logit_softcap is None, "logit soft-caps (Gemma 2's)")
    need(cfg.attention_scale is None and not cfg.sandwich_norm, "attention_scale / sandwich_norm (Gemma's)")
    need(not cfg.embed_scale and not cfg.embed_norm and cfg.type_vocab_size == 0, "embed_scale / embed_norm / types")
    need(not cfg.head_bias, "head_bias=True")
    need(cfg.vocab_multiple == 1, f"vocab_multiple={cfg.vocab_multiple} (save an unpadded vocabulary)")
    if cfg.positional == "learned":
        need(cfg.norm == "layernorm", f"norm={cfg.norm!r} with learned positions (GPT-2 has layernorm)")
        need(cfg.activation in ("gelu", "gelu_exact"), f"activation={cfg.activation!r} (GPT-2: gelu)")
        need(cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias, "GPT-2 has every bias")
        need(not cfg.qk_norm and cfg.sliding_window is None, "GPT-2 has no qk_norm or sliding window")
        need(cfg.num_kv_heads == cfg.num_heads and cfg.head_dim * cfg.num_heads == cfg.d_model, "GPT-2 is MHA")
        return "gpt2"
    need(cfg.positional == "rope" and not cfg.rope_interleaved, "the Llama family has rotate-half RoPE")
    need(cfg.norm == "rmsnorm" and cfg.activation == "swiglu", "the Llama family has rmsnorm and swiglu")
    need(not cfg.mlp_bias, "mlp_bias=True")
    if cfg.qk_norm:
        need(cfg.qkv_bias == cfg.out_bias and cfg.sliding_window is None, "Qwen3: one attention bias, no window")
        return "qwen3"
    if cfg.qkv_bias and not cfg.out_bias:
        need(cfg.sliding_window is None, "Qwen2 with a sliding window on every layer")
        return "qwen2"
    need(cfg.qkv_bias == cfg.out_bias, f"qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}")
    return "mistral" if cfg.sliding_window is not None else "llama"


def _gemma_family(cfg: ModelConfig, need) -> str:
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


def _rope_dict(base: float, scaling: RopeScaling | None) -> dict[str, Any]:
    """transformers' `rope_parameters` dict of one RoPE."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": base}
    if scaling is not None:
        rope.update(rope_type=scaling.kind, factor=scaling.factor)
        if scaling.kind == "proportional":
            rope["partial_rotary_factor"] = scaling.fraction
        if scaling.kind == "llama3":
            rope.update(
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_len,
            )
    return rope


def _gemma_config(cfg: ModelConfig, family: str) -> dict:
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
        return {**out, "rope_parameters": _rope_dict(cfg.rope_base, cfg.rope_scaling)}
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
        return {**out, "rope_parameters": _rope_dict(cfg.rope_base, cfg.rope_scaling)}
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
        "full_attention": _rope_dict(cfg.rope_base, cfg.rope_scaling),
        "sliding_attention": _rope_dict(local, cfg.local_rope_scaling),
    }
    return {**out, "rope_parameters": rope}


def from_model_config(cfg: ModelConfig, *, vision: bool = False, encoder: bool = False) -> dict:
    """The `config.json` dict (transformers' keys) of `cfg`, for the family `family_for(cfg)` names."""
    family = family_for(cfg, vision=vision, encoder=encoder)
    dtype = str(cfg.param_dtype)
    architecture = FAMILY_ARCHITECTURE[family]
    if family == "bert":
        architecture = "BertForMaskedLM" if cfg.mlm_head else "BertModel"
    if family == "vit":
        architecture = "ViTForImageClassification" if cfg.num_classes else "ViTModel"
    common = {"architectures": [architecture], "model_type": family, "dtype": dtype}
    if family in GEMMA_FAMILY:
        return {**common, **_gemma_config(cfg, family)}
    if family == "bert":
        return {
            **common,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu",
            "max_position_embeddings": cfg.max_len,
            "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_epsilon,
            "tie_word_embeddings": cfg.tie_embeddings,
            "hidden_dropout_prob": cfg.dropout_rate,
            "attention_probs_dropout_prob": cfg.attention_dropout_rate,
            "position_embedding_type": "absolute",
        }
    if family == "vit":
        return {
            **common,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu",
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "num_channels": cfg.num_channels,
            "layer_norm_eps": cfg.norm_epsilon,
            "qkv_bias": cfg.qkv_bias,
            "hidden_dropout_prob": cfg.dropout_rate,
            "attention_probs_dropout_prob": cfg.attention_dropout_rate,
            **(
                {
                    "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)},
                    "label2id": {f"LABEL_{i}": i for i in range(cfg.num_classes)},
                }
                if cfg.num_classes
                else {"pooler_act": "tanh", "pooler_output_size": cfg.d_model}
            ),
        }
    if family == "gpt2":
        activation = {"gelu": "gelu_new", "gelu_exact": "gelu"}[cfg.activation]
        return {
            **common,
            "vocab_size": cfg.vocab_size,
            "n_layer": cfg.num_layers,
            "n_embd": cfg.d_model,
            "n_head": cfg.num_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_len,
            "layer_norm_epsilon": cfg.norm_epsilon,
            "activation_function": activation,
            "tie_word_embeddings": cfg.tie_embeddings,
            "resid_pdrop": cfg.dropout_rate,
            "embd_pdrop": cfg.dropout_rate,
            "attn_pdrop": cfg.attention_dropout_rate,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "add_cross_attention": False,
        }
    rope = _rope_dict(cfg.rope_base, cfg.rope_scaling)
    out = {
        **common,
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_layers,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_len,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": cfg.attention_dropout_rate,
    }
    if family in ("llama", "qwen3"):
        out.update(attention_bias=cfg.out_bias, mlp_bias=False)
    if family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if family in ("qwen2", "qwen3"):
        out["use_sliding_window"] = False
    if family == "qwen3" and cfg.qk_norm_epsilon != cfg.norm_epsilon:
        raise ValueError(
            f"Qwen3 uses rms_norm_eps for q/k norms too: qk_norm_epsilon={cfg.qk_norm_epsilon} != "
            f"norm_epsilon={cfg.norm_epsilon}."
        )
    return out
