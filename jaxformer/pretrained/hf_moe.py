"""Mixture-of-experts decoders `config.json` <-> `ModelConfig`: Mixtral (`mixtral`), Qwen2-MoE (`qwen2_moe`),
Qwen3-MoE (`qwen3_moe`) and GPT-OSS (`gpt_oss`), the MoE families of `hf_config` (their attention is the Llama
family's: Mistral's, Qwen2's, Qwen3's; GPT-OSS's with sinks). The tensors are weights.py's.

    Mixtral    every layer sparse; E = num_local_experts experts of width intermediate_size; top-k weights
               renormalised; router_jitter_noise (training noise on the router input) must be 0
    Qwen2-MoE  layer i sparse iff num_experts > 0, (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers
               (else a dense MLP of width intermediate_size); experts of width moe_intermediate_size; renormalised
               iff norm_topk_prob; every sparse layer adds a shared expert (shared_expert_intermediate_size) times
               sigmoid(x g); q/k/v biases (qkv_bias)
    Qwen3-MoE  Qwen2-MoE's layer rule and widths, no shared expert; q/k norms
    GPT-OSS    every layer sparse; E = num_local_experts (or num_experts) experts of width intermediate_size,
               routed top-k of the logits (router bias included), then a softmax over those k (topk_softmax);
               expert biases; the clamped SwiGLU (swiglu_limit, swiglu_alpha); attention sinks; q/k/v/o biases
               (attention_bias, default true); local / global layers (layer_types sliding_attention /
               full_attention, sliding_window) sharing one RoPE (default YaRN, theta 150000). OpenAI's own keys
               `experts_per_token` (must equal num_experts_per_tok) and `initial_context_length` (YaRN's original
               context) are read by neither transformers nor jaxformer; a `quantization_config` (the hub's MXFP4
               experts) is refused.

Mixtral and Qwen route softmax-then-top-k without a router bias. `router_aux_loss_coef` is the weight training gives
the load-balancing loss; `output_router_logits` only asks transformers to return the router logits (ignored).
"""

from __future__ import annotations

from collections.abc import Callable

from jaxformer.models import ModelConfig
from jaxformer.pretrained.hf_keys import Keys

MOE_FAMILY = ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")

# transformers' defaults where config.json leaves a key out (MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig,
# GptOssConfig)
_DEFAULTS = {
    "mixtral": dict(num_experts=8, num_experts_per_tok=2),
    "gpt_oss": dict(num_experts=128, num_experts_per_tok=4, swiglu_limit=7.0, swiglu_alpha=1.702),
    "qwen2_moe": dict(
        num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408, shared_expert_intermediate_size=5632
    ),
    "qwen3_moe": dict(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
}
ROUTER_AUX_LOSS_COEF = 0.001  # transformers' default for all four
MIXTRAL_ROPE_THETA = 1e6  # MixtralConfig's default rope_theta (the Qwen MoEs' is 10000)
GPT_OSS_ROPE_THETA = 150000.0  # GptOssConfig's default_theta
# GptOssConfig's rope_parameters where config.json has neither rope_parameters nor rope_scaling
GPT_OSS_ROPE = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
GPT_OSS_HEAD_DIM = 64  # GptOssConfig's default head_dim (not hidden_size / num_attention_heads)
GPT_OSS_SLIDING_WINDOW = 128  # GptOssConfig's default; written when no layer is local (transformers needs one)
_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _num_experts(keys: Keys, family: str) -> int:
    """E: Qwen2-MoE names it num_experts; Mixtral and GPT-OSS num_local_experts, and so does transformers 5 when it
    saves a Qwen3-MoE (the hub's Qwen3-MoE files say num_experts): those configs read either."""
    default = _DEFAULTS[family]["num_experts"]
    if family == "qwen2_moe":
        return keys.take("num_experts", default)
    both = {k: keys.take(k) for k in ("num_experts", "num_local_experts") if k in keys.hf}
    if len(set(both.values())) > 1:
        raise ValueError(
            f"config.json: num_experts={both['num_experts']!r} and num_local_experts={both['num_local_experts']!r} "
            f"disagree; a {family} config names the number of experts once (either key)."
        )
    return next(iter(both.values()), default)


def _count(key: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        expected = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise ValueError(f"config.json: {key}={value!r} is not supported; jaxformer expects {expected}.")
    return value


def moe_fields(keys: Keys, family: str, num_layers: int) -> dict:
    """The mixture-of-experts `ModelConfig` fields of a `family` config (the attention ones are the Llama family's:
    hf_config._llama_fields)."""
    defaults = _DEFAULTS[family]
    E = _count("num_experts", _num_experts(keys, family), 1 if family in ("mixtral", "gpt_oss") else 0)
    k = keys.take("num_experts_per_tok", defaults["num_experts_per_tok"])
    keys.take("output_router_logits", None)  # whether transformers returns the router logits
    coef = keys.take("router_aux_loss_coef", ROUTER_AUX_LOSS_COEF)
    fields: dict = dict(router_aux_loss_coef=coef, router="softmax_topk", router_bias=False)
    if family == "gpt_oss":
        return dict(fields, **_gpt_oss_fields(keys, E, k))
    if family == "mixtral":
        jitter = keys.take("router_jitter_noise", 0.0)
        if jitter:
            raise ValueError(
                f"config.json: router_jitter_noise={jitter!r} is not supported; jaxformer's router has no jitter "
                "noise (transformers multiplies the router's input by U(1 - r, 1 + r) noise while training), "
                "expected 0."
            )
        return dict(fields, num_experts=E, experts_per_token=_count("num_experts_per_tok", k, 1, E))
    expert_d_ff = keys.take("moe_intermediate_size", defaults["moe_intermediate_size"])
    shared = None
    if family == "qwen2_moe":  # every sparse layer has a shared expert
        shared = keys.take("shared_expert_intermediate_size", defaults["shared_expert_intermediate_size"])
    step = _count("decoder_sparse_step", keys.take("decoder_sparse_step", 1), 1)
    mlp_only = keys.take("mlp_only_layers", None) or []
    if not isinstance(mlp_only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in mlp_only):
        raise ValueError(
            f"config.json: mlp_only_layers={mlp_only!r} is not supported; jaxformer expects a list of layer indices "
            "(ints)."
        )
    if E == 0:  # transformers builds every layer dense: a Qwen2 / Qwen3 model
        keys.take("norm_topk_prob", False)
        return dict(router_aux_loss_coef=coef)
    dense = tuple(i for i in range(num_layers) if (i + 1) % step or i in mlp_only)
    return dict(
        fields,
        num_experts=E,
        experts_per_token=_count("num_experts_per_tok", k, 1, E),
        expert_d_ff=_count("moe_intermediate_size", expert_d_ff, 1),
        shared_expert_d_ff=None if shared is None else _count("shared_expert_intermediate_size", shared, 1),
        router_normalize=bool(keys.take("norm_topk_prob", False)),
        dense_layers=dense,
    )


def _gpt_oss_fields(keys: Keys, E: int, k) -> dict:
    """GPT-OSS's experts (every layer sparse) and attention sinks."""
    quantization = keys.take("quantization_config", None)
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        raise ValueError(
            f"config.json: quantization_config (quant_method={method!r}) is not supported; jaxformer reads float "
            "weights, and the hub's GPT-OSS checkpoints hold their experts in MXFP4: dequantize them first (e.g. "
            "transformers' Mxfp4Config(dequantize=True)) and save the float model."
        )
    openai_k = keys.take("experts_per_token", None)  # OpenAI's name, beside transformers' num_experts_per_tok
    if openai_k is not None and openai_k != k:
        raise ValueError(
            f"config.json: experts_per_token={openai_k!r} and num_experts_per_tok={k!r} disagree; transformers "
            "routes num_experts_per_tok and ignores experts_per_token, so a file with both must agree."
        )
    keys.take("initial_context_length", None)  # OpenAI's YaRN original context; transformers reads rope's own
    defaults = _DEFAULTS["gpt_oss"]
    return dict(
        num_experts=E,
        experts_per_token=_count("num_experts_per_tok", k, 1, E),
        router="topk_softmax",
        router_bias=True,
        expert_bias=True,
        expert_activation="gptoss_swiglu",
        swiglu_limit=keys.take("swiglu_limit", defaults["swiglu_limit"]),
        swiglu_alpha=keys.take("swiglu_alpha", defaults["swiglu_alpha"]),
        attention_sinks=True,
    )


def gpt_oss_layers(keys: Keys, num_layers: int, rope_scaling) -> dict:
    """GPT-OSS's local / global layers: `layer_types` (default sliding, full, sliding, ...) and `sliding_window`.
    Every layer turns with the one RoPE (local_rope_scaling = rope_scaling); only local layers: no layer_types."""
    window = keys.take("sliding_window", GPT_OSS_SLIDING_WINDOW)
    hf_types = keys.take("layer_types", None)
    if hf_types is None:  # GptOssConfig's default
        hf_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
    if not isinstance(hf_types, list) or len(hf_types) != num_layers or set(hf_types) - set(_LAYER_TYPES):
        raise ValueError(
            f"config.json: layer_types={hf_types!r} is not supported; jaxformer expects one of "
            f"{sorted(_LAYER_TYPES)} per layer ({num_layers} layers)."
        )
    kinds = tuple(_LAYER_TYPES[t] for t in hf_types)
    if "local" not in kinds:
        return dict(sliding_window=None)
    window = _count("sliding_window", window, 1)
    if "global" not in kinds:
        return dict(sliding_window=window)
    return dict(sliding_window=window, layer_types=kinds, local_rope_scaling=rope_scaling)


def is_gpt_oss(cfg: ModelConfig) -> bool:
    """Whether `cfg` has one of GPT-OSS's own options (attention sinks, expert biases, its clamped SwiGLU)."""
    return cfg.attention_sinks or cfg.expert_bias or cfg.expert_activation == "gptoss_swiglu"


def gpt_oss_family(cfg: ModelConfig, need: Callable[[bool, str], None]) -> str:
    """The family name "gpt_oss" when GPT-OSS computes `cfg` (a Llama-family config with one of its options); `need`
    raises naming what it lacks."""
    need(
        cfg.attention_sinks and cfg.expert_bias and cfg.expert_activation == "gptoss_swiglu",
        f"attention_sinks={cfg.attention_sinks}, expert_bias={cfg.expert_bias}, expert_activation="
        f"{cfg.expert_activation!r} (GPT-OSS has all three: sinks, expert biases, 'gptoss_swiglu')",
    )
    need(
        cfg.num_experts > 0 and not cfg.dense_layers and cfg.shared_expert_d_ff is None,
        f"num_experts={cfg.num_experts}, dense_layers={cfg.dense_layers}, shared_expert_d_ff="
        f"{cfg.shared_expert_d_ff} (GPT-OSS: every layer a mixture of experts, no shared expert)",
    )
    need(
        cfg.router == "topk_softmax" and cfg.router_bias,
        f"router={cfg.router!r}, router_bias={cfg.router_bias} (GPT-OSS routes topk_softmax with a router bias)",
    )
    need(
        cfg.capacity_factor is None,
        f"capacity_factor={cfg.capacity_factor} (transformers computes every expert assignment: save a model with "
        "capacity_factor=None, e.g. load_params into its config with that change)",
    )
    need(
        cfg.qkv_bias == cfg.out_bias and not cfg.qk_norm,
        f"qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}, qk_norm={cfg.qk_norm} (GPT-OSS: one attention_bias "
        "switch, no q/k norms)",
    )
    if cfg.layer_types is not None and "local" in cfg.layer_types:
        need(
            cfg.local_rope_base in (None, cfg.rope_base) and cfg.local_rope_scaling == cfg.rope_scaling,
            f"local_rope_base={cfg.local_rope_base}, local_rope_scaling={cfg.local_rope_scaling} (GPT-OSS turns "
            f"every layer with the one RoPE: rope_base={cfg.rope_base}, rope_scaling={cfg.rope_scaling})",
        )
    return "gpt_oss"


def moe_family(cfg: ModelConfig, need: Callable[[bool, str], None]) -> str:
    """The MoE family (not GPT-OSS: gpt_oss_family) that computes `cfg` (a Llama-family config with num_experts > 0;
    `need` raises naming what fits none)."""
    need(
        cfg.router == "softmax_topk" and not cfg.router_bias,
        f"router={cfg.router!r}, router_bias={cfg.router_bias} (Mixtral and Qwen-MoE route softmax_topk, no bias; "
        "GPT-OSS's topk_softmax with a bias comes with attention_sinks, expert_bias and 'gptoss_swiglu')",
    )
    need(
        cfg.capacity_factor is None,
        f"capacity_factor={cfg.capacity_factor} (transformers computes every expert assignment: save a model with "
        "capacity_factor=None, e.g. load_params into its config with that change)",
    )
    if cfg.qk_norm:
        need(cfg.shared_expert_d_ff is None, "Qwen3-MoE (q/k norms) with a shared expert")
        need(cfg.qkv_bias == cfg.out_bias and cfg.sliding_window is None, "Qwen3-MoE: one attention bias, no window")
        return "qwen3_moe"
    if cfg.shared_expert_d_ff is not None:
        need(not cfg.out_bias and cfg.sliding_window is None, "Qwen2-MoE: no output bias, no sliding window")
        return "qwen2_moe"
    need(
        not (cfg.qkv_bias or cfg.out_bias or cfg.dense_layers) and cfg.router_normalize,
        f"a mixture of experts without q/k norms or a shared expert is Mixtral's, which has no attention biases "
        f"(qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}), no dense layers (dense_layers={cfg.dense_layers}) "
        f"and renormalised top-k weights (router_normalize={cfg.router_normalize})",
    )
    return "mixtral"


def moe_config(cfg: ModelConfig, family: str) -> dict:
    """The mixture-of-experts keys of a `family` config.json (beside the Llama family's keys)."""
    out = {
        "num_experts_per_tok": cfg.experts_per_token,
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
        "output_router_logits": False,
    }
    if family == "gpt_oss":
        kinds = cfg.layer_types or (("local" if cfg.sliding_window else "global"),) * cfg.num_layers
        return {
            **out,
            "num_local_experts": cfg.num_experts,
            "intermediate_size": cfg.expert_d_ff or cfg.d_ff,
            "swiglu_limit": cfg.swiglu_limit,
            "swiglu_alpha": cfg.swiglu_alpha,
            "attention_bias": cfg.out_bias,
            "layer_types": [{"local": "sliding_attention", "global": "full_attention"}[k] for k in kinds],
            "sliding_window": cfg.sliding_window or GPT_OSS_SLIDING_WINDOW,  # unused without local layers
        }
    if family == "mixtral":  # one width: the experts'
        return {
            **out,
            "num_local_experts": cfg.num_experts,
            "intermediate_size": cfg.expert_d_ff or cfg.d_ff,
            "router_jitter_noise": 0.0,
        }
    out.update(
        num_experts=cfg.num_experts,
        intermediate_size=cfg.d_ff,  # the dense layers'
        moe_intermediate_size=cfg.expert_d_ff or cfg.d_ff,
        norm_topk_prob=cfg.router_normalize,
        decoder_sparse_step=1,
        mlp_only_layers=list(cfg.dense_layers),
    )
    if family == "qwen2_moe":
        out["shared_expert_intermediate_size"] = cfg.shared_expert_d_ff
    return out
