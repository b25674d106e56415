"""Hugging Face `config.json` <-> `ModelConfig`, for the architectures jaxformer reads and writes (Gemma 1-4 in
hf_gemma.py; the mixtures of experts Mixtral, Qwen2-MoE, Qwen3-MoE and GPT-OSS in hf_moe.py; the key bookkeeping and
RoPE parameters shared by all in hf_keys.py).

Every key of a `config.json` is accounted for: it becomes a `ModelConfig` field, or it must hold the one value
jaxformer computes the same way (e.g. `hidden_act: "silu"`), or it is listed in `hf_keys.IGNORED` (bookkeeping that does
not change what the model computes: token ids, the dtype it was saved in, generation defaults). Any other key, or
a value jaxformer cannot compute, is refused with an error that names it: nothing is guessed.
"""

from __future__ import annotations

from jaxformer.models import ModelConfig
from jaxformer.pretrained import hf_gemma, hf_moe
from jaxformer.pretrained.hf_keys import Keys, rope, rope_dict

# architectures[0] -> jaxformer family. Each family reads the config keys of its `model_type`.
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GptOssForCausalLM": "gpt_oss",
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
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", *hf_moe.MOE_FAMILY)  # rotate-half RoPE, RMSNorm, SwiGLU
_QWEN = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
GEMMA_FAMILY = ("gemma", "gemma2", "gemma3_text", "gemma4_text")


_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_exact"}


def family_of(hf: dict) -> str:
    """The jaxformer family (gpt2, llama, mistral, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, gpt_oss, vit, bert,
    the gemmas) that `config.json` describes."""
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
    keys = Keys(hf, family)
    if family == "gpt2":
        fields = _gpt2_fields(keys)
    elif family == "vit":
        fields = _vit_fields(keys, classifier="ViTForImageClassification" in (hf.get("architectures") or []))
    elif family == "bert":
        fields = _bert_fields(keys, masked_lm="BertForMaskedLM" in (hf.get("architectures") or []))
    elif family in GEMMA_FAMILY:
        fields = hf_gemma.gemma_fields(keys, family)
    else:
        fields = _llama_fields(keys, family)
    keys.finish()
    return ModelConfig(**{**fields, **overrides})


def _gpt2_fields(keys: Keys) -> dict:
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


def _bert_fields(keys: Keys, *, masked_lm: bool) -> dict:
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


def _vit_fields(keys: Keys, *, classifier: bool) -> dict:
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


def _llama_fields(keys: Keys, family: str) -> dict:
    """Llama, Mistral (sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms) and their mixtures of experts:
    Mixtral (Mistral's attention), Qwen2-MoE (q/k/v biases as its `qkv_bias` says), Qwen3-MoE and GPT-OSS (biases,
    sinks, local / global layers, YaRN; hf_moe.py)."""
    keys.expect("hidden_act", "silu")  # GPT-OSS's experts have their own clamped SwiGLU; its files say silu
    moe, gpt_oss = family in hf_moe.MOE_FAMILY, family == "gpt_oss"
    if not moe:  # the MoE configs have no such keys (transformers ignores them: refused as unknown)
        keys.expect("mlp_bias", False)
    d_model, num_heads = keys.take("hidden_size"), keys.take("num_attention_heads")
    num_layers = keys.take("num_hidden_layers")
    if gpt_oss:
        rope_base, rope_scaling = rope(keys, hf_moe.GPT_OSS_ROPE_THETA, default=hf_moe.GPT_OSS_ROPE)
    else:
        rope_base, rope_scaling = rope(keys, hf_moe.MIXTRAL_ROPE_THETA if family == "mixtral" else 10000.0)
    # Mixtral's attention has no biases, Qwen2-MoE's no output bias: their configs have no attention_bias (unknown)
    attention_bias = False if family in ("mixtral", "qwen2_moe") else keys.take("attention_bias", gpt_oss)
    qkv_bias = attention_bias
    if family == "qwen2":
        qkv_bias = True
    if family == "qwen2_moe":
        qkv_bias = keys.take("qkv_bias", True)
    sliding_window, layers = None, {}
    if family in ("mistral", "mixtral"):
        sliding_window = keys.take("sliding_window", None)
    if gpt_oss:  # local / global layers
        layers = hf_moe.gpt_oss_layers(keys, num_layers, rope_scaling)
        sliding_window = layers.pop("sliding_window")
    if family in _QWEN:
        keys.expect("use_sliding_window", False)
        keys.take("sliding_window", None)  # read only when use_sliding_window is True
        keys.take("max_window_layers", None)  # likewise
        keys.expect("layer_types", None, ["full_attention"] * num_layers)
    eps = keys.take("rms_norm_eps", 1e-5 if family in ("mixtral", "gpt_oss") else 1e-6)
    fields = hf_moe.moe_fields(keys, family, num_layers) if moe else {}
    return dict(
        fields,
        **layers,
        vocab_size=keys.take("vocab_size"),
        num_layers=num_layers,
        d_model=d_model,
        num_heads=num_heads,
        num_kv_heads=keys.take("num_key_value_heads", None) or num_heads,
        head_dim=keys.take("head_dim", hf_moe.GPT_OSS_HEAD_DIM if gpt_oss else None) or d_model // num_heads,
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
        qkv_bias=qkv_bias,
        out_bias=attention_bias,
        mlp_bias=False,
        qk_norm=family in ("qwen3", "qwen3_moe"),
        qk_norm_epsilon=eps,
        tie_embeddings=keys.take("tie_word_embeddings", family == "qwen2"),
        dropout_rate=0.0,
        attention_dropout_rate=keys.take("attention_dropout", 0.0),
    )


# -- ModelConfig -> config.json ----------------------------------------------------------------------------------


def family_for(cfg: ModelConfig, *, vision: bool = False, encoder: bool = False) -> str:
    """The Hugging Face family whose computation `cfg` is (`vision`: of a ViT), or a ValueError naming the field
    that fits none."""

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(f"No Hugging Face architecture computes this ModelConfig: {what}.")

    gpt_oss, gemma = hf_moe.is_gpt_oss(cfg), cfg.norm_plus_one or cfg.activation == "geglu"
    need(
        not (gpt_oss and (encoder or vision or cfg.positional == "learned" or gemma)),
        "attention_sinks / expert_bias / expert_activation='gptoss_swiglu' (GPT-OSS's) outside a rope, rmsnorm decoder",
    )
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
    if gemma:
        return hf_gemma.gemma_family(cfg, need)
    need(not (cfg.v_norm or cfg.layer_scale or cfg.per_layer_input_dim or cfg.num_kv_shared_layers), "Gemma 4's")
    need(cfg.layer_types is None or gpt_oss, "layer_types (local / global layers are Gemma 2-4's and GPT-OSS's)")
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
    if gpt_oss:
        return hf_moe.gpt_oss_family(cfg, need)
    if cfg.num_experts:
        return hf_moe.moe_family(cfg, need)
    if cfg.qk_norm:
        need(cfg.qkv_bias == cfg.out_bias and cfg.sliding_window is None, "Qwen3: one attention bias, no window")
        return "qwen3"
    if cfg.qkv_bias and not cfg.out_bias:
        need(cfg.sliding_window is None, "Qwen2 with a sliding window on every layer")
        return "qwen2"
    need(cfg.qkv_bias == cfg.out_bias, f"qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}")
    return "mistral" if cfg.sliding_window is not None else "llama"


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
        return {**common, **hf_gemma.gemma_config(cfg, family)}
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
    rope = rope_dict(cfg.rope_base, cfg.rope_scaling)
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
    if family in hf_moe.MOE_FAMILY:
        out.update(hf_moe.moe_config(cfg, family))
    if family in ("llama", "qwen3"):
        out.update(attention_bias=cfg.out_bias, mlp_bias=False)
    if family == "qwen3_moe":
        out["attention_bias"] = cfg.out_bias
    if family == "qwen2_moe":
        out["qkv_bias"] = cfg.qkv_bias
    if family in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window
    if family in _QWEN:
        out["use_sliding_window"] = False
    if family in ("qwen3", "qwen3_moe") and cfg.qk_norm_epsilon != cfg.norm_epsilon:
        raise ValueError(
            f"Qwen3 uses rms_norm_eps for q/k norms too: qk_norm_epsilon={cfg.qk_norm_epsilon} != "
            f"norm_epsilon={cfg.norm_epsilon}."
        )
    return out
