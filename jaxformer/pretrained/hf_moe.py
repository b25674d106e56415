"""Mixture-of-experts decoders `config.json` <-> `ModelConfig`: Mixtral (`mixtral`), Qwen2-MoE (`qwen2_moe`) and
Qwen3-MoE (`qwen3_moe`), the MoE families of `hf_config` (their attention is the Llama family's: Mistral's, Qwen2's
and Qwen3's). The tensors are weights.py's.

    Mixtral    every layer sparse; E = num_local_experts experts of width intermediate_size; top-k weights
               renormalised; router_jitter_noise (training noise on the router input) must be 0
    Qwen2-MoE  layer i sparse iff num_experts > 0, (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers
               (else a dense MLP of width intermediate_size); experts of width moe_intermediate_size; renormalised
               iff norm_topk_prob; every sparse layer adds a shared expert (shared_expert_intermediate_size) times
               sigmoid(x g); q/k/v biases (qkv_bias)
    Qwen3-MoE  Qwen2-MoE's layer rule and widths, no shared expert; q/k norms

Every family routes softmax-then-top-k without a router bias. `router_aux_loss_coef` is the weight training gives
the load-balancing loss; `output_router_logits` only asks transformers to return the router logits (ignored).
"""

from __future__ import annotations

from collections.abc import Callable

from jaxformer.models import ModelConfig
from jaxformer.pretrained.hf_keys import Keys

MOE_FAMILY = ("mixtral", "qwen2_moe", "qwen3_moe")

# transformers' defaults where config.json leaves a key out (MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig)
_DEFAULTS = {
    "mixtral": dict(num_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408, shared_expert_intermediate_size=5632
    ),
    "qwen3_moe": dict(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
}
ROUTER_AUX_LOSS_COEF = 0.001  # transformers' default for all three
MIXTRAL_ROPE_THETA = 1e6  # MixtralConfig's default rope_theta (the others' is 10000)


def _num_experts(keys: Keys, family: str) -> int:
    """E: Qwen2-MoE names it num_experts; Mixtral num_local_experts, and so does transformers 5 when it saves a
    Qwen3-MoE (the hub's Qwen3-MoE files say num_experts): both configs read either."""
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
    E = _count("num_experts", _num_experts(keys, family), 0 if family != "mixtral" else 1)
    k = keys.take("num_experts_per_tok", defaults["num_experts_per_tok"])
    keys.take("output_router_logits", None)  # whether transformers returns the router logits
    coef = keys.take("router_aux_loss_coef", ROUTER_AUX_LOSS_COEF)
    fields: dict = dict(router_aux_loss_coef=coef, router="softmax_topk", router_bias=False)
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


def moe_family(cfg: ModelConfig, need: Callable[[bool, str], None]) -> str:
    """The MoE family that computes `cfg` (a Llama-family config with num_experts > 0; `need` raises naming what
    fits none)."""
    need(
        cfg.router == "softmax_topk" and not cfg.router_bias,
        f"router={cfg.router!r}, router_bias={cfg.router_bias} (Mixtral and Qwen-MoE route softmax_topk, no bias)",
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
