"""What reading a Hugging Face `config.json` shares across families: the keys that describe no computation
(`IGNORED`), `Keys` (every key taken or refused by name) and RoPE parameters both ways (default, linear, llama3,
proportional and yarn)."""

from __future__ import annotations

import math
from typing import Any

from jaxformer.ops import RopeScaling

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


class Keys:
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


# YaRN's keys (transformers' `_compute_yarn_parameters`); mscale / mscale_all_dim only make its attention factor
_YARN_KEYS = (
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "truncate",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """transformers' `yarn_get_mscale`: 0.1 mscale ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(params: dict, where: str) -> RopeScaling:
    """RopeScaling('yarn') of a yarn parameter dict, as transformers' `_compute_yarn_parameters` reads it: beta_fast /
    beta_slow default (also when 0 or null) to 32 / 1, truncate to True; attention_factor, else (mscale and
    mscale_all_dim both set) mscale(factor, mscale) / mscale(factor, mscale_all_dim), else None (RopeScaling's
    default, 0.1 ln(factor) + 1: transformers ignores mscale without mscale_all_dim)."""
    unknown = sorted(set(params) - set(_YARN_KEYS))
    if unknown:
        raise ValueError(f"config.json: rope parameters{where} {unknown} are not supported for rope_type 'yarn'.")
    for key in ("factor", "original_max_position_embeddings"):
        if params.get(key) is None:
            raise ValueError(
                f"config.json: rope parameter {key}={params.get(key)!r}{where} is not supported for rope_type 'yarn'; "
                "jaxformer needs it given (transformers derives a missing factor from max_position_embeddings)."
            )
    factor, truncate = params["factor"], params.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ValueError(f"config.json: rope parameter truncate={truncate!r}{where} is not supported; expected a bool.")
    attention, mscale, mscale_all_dim = (params.get(k) for k in ("attention_factor", "mscale", "mscale_all_dim"))
    if attention is None and mscale and mscale_all_dim:
        attention = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return RopeScaling(
        "yarn",
        factor=factor,
        original_max_len=params["original_max_position_embeddings"],
        beta_fast=params.get("beta_fast") or 32.0,
        beta_slow=params.get("beta_slow") or 1.0,
        attention_factor=attention,
        truncate=truncate,
    )


def rope_params(params: dict, where: str = "") -> tuple[float | None, RopeScaling | None]:
    """(rope_theta or None, rope_scaling) of one RoPE parameter dict (`rope_type` default | linear | llama3 |
    proportional | yarn)."""
    params = dict(params)
    base = params.pop("rope_theta", None)
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        if params:
            raise ValueError(
                f"config.json: rope parameters{where} {sorted(params)} are not supported for rope_type default."
            )
        return base, None
    if kind == "yarn":
        return base, _yarn(params, where)
    if kind not in ("linear", "llama3", "proportional"):
        raise ValueError(
            f"config.json: rope_type={kind!r}{where} is not supported; jaxformer computes default, linear, llama3, "
            "proportional, yarn."
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


def rope(keys: Keys, default_base: float = 10000.0, default: dict | None = None) -> tuple[float, RopeScaling | None]:
    """(rope_base, rope_scaling) from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`
    (`default_base` where neither names a theta: the family's transformers default; `default`: the family's RoPE
    parameters where the file has neither rope_parameters nor rope_scaling, e.g. GPT-OSS's YaRN)."""
    given = keys.take("rope_parameters", None)
    params = dict(given or {})
    legacy = keys.take("rope_scaling", None)
    if legacy:
        params = {**dict(legacy), **params}
    if given is None and not legacy and default is not None:
        params = dict(default)
    base, scaling = rope_params(params)
    return float(base or keys.take("rope_theta", default_base)), scaling


def rope_dict(base: float, scaling: RopeScaling | None) -> dict[str, Any]:
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
        if scaling.kind == "yarn":  # floats where transformers' validation wants them
            rope.update(
                factor=float(scaling.factor),
                original_max_position_embeddings=scaling.original_max_len,
                beta_fast=float(scaling.beta_fast),
                beta_slow=float(scaling.beta_slow),
                truncate=scaling.truncate,
            )
            if scaling.attention_factor is not None:
                rope["attention_factor"] = float(scaling.attention_factor)
    return rope
