"""LoRA: train a low-rank update of each linear layer instead of the layer, in peft's adapter format.

    from jaxformer import lora, pretrained

    model = pretrained.from_pretrained(base_dir_or_id)
    lora.add_adapters(model, rank=8, alpha=16, targets="all-linear", dropout=0.0, rngs=nnx.Rngs(0))  # in place
    lora.save_adapter(model, "out/adapter")      # adapter_config.json + adapter_model.safetensors, as peft writes
    lora.load_adapter(model, path_or_id)         # peft's layout (e.g. a PeftModel.save_pretrained directory)
    lora.merge(model)                            # W + scale * A B folded into the weights; no LoRAParam left
    pretrained.from_pretrained(base, adapter=adapter_dir_or_id)   # base + adapter in one call

The adapter maths and its layer hook: nn/lora.py. Adding, listing and merging on a model: models/lora.py. The
peft layout: pretrained/peft.py. The adapters are `nnx.LoRAParam` variables (a kind of `nnx.Param`): train only
them with `nnx.DiffState(0, nnx.LoRAParam)` / `nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
from flax import nnx

from jaxformer.models import GPT
from jaxformer.models import lora as model_lora
from jaxformer.models.lora import FUSED_QKV, TARGETS, adapters, count, merge
from jaxformer.nn.lora import LoRA
from jaxformer.pretrained import hf_config
from jaxformer.pretrained.peft import load_adapter, save_adapter

__all__ = [
    "FUSED_QKV",
    "TARGETS",
    "LoRA",
    "adapters",
    "add_adapters",
    "count",
    "load_adapter",
    "merge",
    "save_adapter",
]


def add_adapters(
    model: nnx.Module,
    *,
    rank: int,
    alpha: float,
    targets: str | Sequence[str] = "all-linear",
    dropout: float = 0.0,
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    fused_qkv: bool | None = None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Adds LoRA adapters to `model` in place and returns it; the outputs are unchanged (B = 0).

    The arguments are models.lora.add_adapters'; `fused_qkv=None` adapts q, k and v as peft adapts the
    architecture: one adapter over GPT-2's fused c_attn (a GPT whose config is GPT-2's), separate ones otherwise.
    targets: "all-linear" (attention and feed-forward weights, not the output head, as peft's "all-linear") or
    names from `TARGETS` ("w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_in", "w_out") or path patterns.
    """
    if fused_qkv is None:
        fused_qkv = isinstance(model, GPT) and _family(model.config) == "gpt2"
    return model_lora.add_adapters(
        model,
        rank=rank,
        alpha=alpha,
        targets=targets,
        dropout=dropout,
        use_rslora=use_rslora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fused_qkv=fused_qkv,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _family(cfg) -> str | None:
    try:
        return hf_config.family_for(cfg)
    except ValueError:  # no Hugging Face architecture computes this config
        return None
