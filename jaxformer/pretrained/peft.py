"""LoRA adapters in and out in `peft`'s layout: `adapter_config.json` + `adapter_model.safetensors`.

    lora.load_adapter(model, "path/to/adapter" or "hub-id")   # peft.PeftModel.save_pretrained's output
    lora.save_adapter(model, "out/adapter")                     # peft.PeftModel.from_pretrained(hf_base, dir) loads it

A peft file names each tensor after the Hugging Face module it adapts, with no adapter name:
`base_model.model.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]` (torch Linear layout, also for
GPT-2's Conv1D modules: `fan_in_fan_out` only transposes peft's merged update). jaxformer keeps A `[*in, r]` and
B `[r, *out]` with the weight's own input / output axes (nn/lora.py), so A = lora_A.T and B = lora_B.T, reshaped.
Which module is which jaxformer weight comes from the checkpoint rules (weights.py): the module whose `.weight` a
rule reads into `w_q` is the query projection, and GPT-2's `c_attn` (read into w_q, w_k and w_v) gets one adapter
over all three (`FUSED_QKV`), as in peft.

The file's tensors say which modules are adapted and with which rank; adapter_config.json gives each module's
alpha (`lora_alpha`, or the first `alpha_pattern` key matching the module's name), `use_rslora` and the rank it
expects (`r`, `rank_pattern`), which must agree with the tensors. What jaxformer does not compute is refused by the
name the file gives it (`use_dora`, `bias`, `modules_to_save`, a tensor).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxformer import hub
from jaxformer.models import GPT
from jaxformer.models import lora as model_lora
from jaxformer.pretrained import hf_config, weights

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
FILES = [CONFIG, WEIGHTS]
PREFIX = "base_model.model."
_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")

# adapter_config.json options jaxformer does not compute: key -> (the values it accepts, what the option is).
_REFUSED = {
    "use_dora": ((None, False), "DoRA (weight-decomposed LoRA)"),
    "bias": ((None, "none"), "trained biases"),
    "lora_bias": ((None, False), "a bias on lora_B"),
    "modules_to_save": ((None, []), "fully trained extra modules"),
    "layer_replication": ((None, []), "replicated layers"),
    "target_parameters": ((None, []), "adapters on parameters rather than modules"),
    "trainable_token_indices": ((None, [], {}), "trainable token embeddings"),
    "use_qalora": ((None, False), "QA-LoRA"),
    "alora_invocation_tokens": ((None, []), "activated LoRA"),
}


def load_adapter(model: GPT, path_or_id: str | os.PathLike) -> GPT:
    """Adds the adapter a peft directory (or hub id) holds to `model` (in place; also returned), which must be the
    architecture the adapter was trained on, with `scan_layers=False` and no adapters yet."""
    cfg, family = _check_model(model)
    directory = hub.resolve(path_or_id, files=FILES)
    if not os.path.isfile(os.path.join(directory, CONFIG)):
        raise FileNotFoundError(
            f"{os.path.join(directory, CONFIG)} does not exist: a peft adapter directory holds {CONFIG} and {WEIGHTS}."
        )
    with open(os.path.join(directory, CONFIG)) as f:
        config = json.load(f)
    _check_config(config)
    modules = linear_modules(family, cfg)
    tensors = _read_tensors(os.path.join(directory, WEIGHTS), family)
    plan = {}  # jaxformer weight path -> (rank, alpha, A [r, in], B [out, r])
    for module, parts in sorted(tensors.items()):
        if module not in modules:
            raise ValueError(
                f"{WEIGHTS}: tensor {PREFIX}{module}.lora_A.weight adapts {module!r}, which is not a linear layer "
                f"jaxformer adapts in a {family} model (it adapts {sorted(set(_kinds(modules)))})."
            )
        missing = [f"{PREFIX}{module}.lora_{p}.weight" for p in "AB" if p not in parts]
        if missing:
            raise ValueError(f"{WEIGHTS} lacks tensor {missing[0]} (it has the other half of that adapter).")
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{WEIGHTS}: {PREFIX}{module}.lora_A.weight {a.shape} and .lora_B.weight {b.shape} must be [r, in] "
                "and [out, r] with one rank r."
            )
        rank = a.shape[0]
        expected = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8))
        if rank != expected:
            raise ValueError(
                f"{WEIGHTS}: {PREFIX}{module}.lora_A.weight has rank {rank}, but {CONFIG} gives {module!r} rank "
                f"{expected} (r / rank_pattern)."
            )
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
        plan[modules[module]] = (rank, alpha, a, b)
    if not plan:
        raise ValueError(f"{WEIGHTS} holds no LoRA tensors ({PREFIX}<module>.lora_A.weight / .lora_B.weight).")

    targets, ranks, alphas = [], {}, {}  # exact weight paths; a fused adapter is planned on its q, k and v
    for path, (rank, alpha, _, _) in plan.items():
        parent, _, name = path.rpartition("/")
        for weight in [f"{parent}/{n}" for n in ("w_q", "w_k", "w_v")] if name == model_lora.FUSED_QKV else [path]:
            key = re.escape(weight)
            targets.append(key)
            ranks[key], alphas[key] = rank, alpha
    model_lora.add_adapters(
        model,
        rank=config.get("r", 8),
        alpha=config.get("lora_alpha", 8),
        targets=targets,
        dropout=float(config.get("lora_dropout") or 0.0),
        use_rslora=bool(config.get("use_rslora", False)),
        rank_pattern=ranks,
        alpha_pattern=alphas,
        fused_qkv=family == "gpt2",
        rngs=nnx.Rngs(0),
    )
    made = {path: adapter for path, *_, adapter in model_lora.adapters(model)}
    if set(made) != set(plan):  # e.g. only two of GPT-2's q / k / v
        raise ValueError(f"{WEIGHTS}: adapters {sorted(set(plan) ^ set(made))} cannot be built as the file has them.")
    for path, (rank, _, a, b) in plan.items():
        adapter = made[path]
        want_a, want_b = (*adapter.in_shape, rank), (rank, *adapter.out_shape)
        if a.shape[1] != math.prod(adapter.in_shape) or b.shape[0] != math.prod(adapter.out_shape):
            raise ValueError(
                f"{WEIGHTS}: the adapter of {path} has lora_A {a.shape} and lora_B {b.shape}; this model needs "
                f"[{rank}, {math.prod(adapter.in_shape)}] and [{math.prod(adapter.out_shape)}, {rank}]."
            )
        for variable, value in ((adapter.a, a.T.reshape(want_a)), (adapter.b, b.T.reshape(want_b))):
            variable[...] = jax.device_put(np.asarray(value, variable.dtype), variable[...].sharding)
    return model


def save_adapter(model: GPT, directory: str | os.PathLike, *, base_model_name_or_path: str | None = None) -> str:
    """Writes `model`'s adapters in peft's layout to `directory` (created); returns it. `peft.PeftModel.
    from_pretrained(<the transformers base>, directory)` loads them, and so does `load_adapter`, bit-exactly."""
    cfg, family = _check_model(model)
    found = list(model_lora.adapters(model))
    if not found:
        raise ValueError("The model has no LoRA adapters to save (lora.add_adapters or lora.load_adapter).")
    by_path = {path: module for module, path in linear_modules(family, cfg).items()}
    tensors, ranks, alphas = {}, {}, {}
    for path, _, _, adapter in found:
        module = by_path[path]
        a, b = np.asarray(jax.device_get(adapter.a[...])), np.asarray(jax.device_get(adapter.b[...]))
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, adapter.rank).T)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(adapter.rank, -1).T)
        ranks[module], alphas[module] = adapter.rank, adapter.alpha
    rslora = {adapter.use_rslora for *_, adapter in found}
    dropout = {adapter.dropout.rate for *_, adapter in found}
    if len(rslora) > 1 or len(dropout) > 1:
        raise ValueError("peft's adapter_config.json has one use_rslora and one lora_dropout for all adapters.")
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout.pop(),
        "use_rslora": rslora.pop(),
        "target_modules": sorted(ranks),
        "rank_pattern": {m: v for m, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {m: v for m, v in sorted(alphas.items()) if v != alpha},
        "fan_in_fan_out": family == "gpt2",  # peft's flag for GPT-2's Conv1D (it sets it itself when False)
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    return directory


def linear_modules(family: str, cfg) -> dict[str, str]:
    """{Hugging Face module name: jaxformer adapter path} of every linear layer jaxformer adapts in a `family`
    model, e.g. "model.layers.0.self_attn.q_proj" -> "blocks/layers/0/self_attention/w_q" and GPT-2's
    "transformer.h.0.attn.c_attn" -> "blocks/layers/0/self_attention/w_qkv"."""
    out = {}
    for rule in weights.rules(family, cfg):
        if len(rule.tensors) != 1 or not rule.tensors[0].endswith(".weight"):
            continue
        module = rule.tensors[0].removesuffix(".weight")
        parent, names = rule.params[0].rpartition("/")[0], [p.rpartition("/")[2] for p in rule.params]
        if names == ["w_q", "w_k", "w_v"]:
            out[module] = f"{parent}/{model_lora.FUSED_QKV}"
        elif len(names) == 1 and names[0] in model_lora.TARGETS:
            out[module] = rule.params[0]
    return out


def _check_model(model) -> tuple:
    if not isinstance(model, GPT):
        raise TypeError(f"LoRA adapters in peft's layout are for decoders (GPT); got a {type(model).__name__}.")
    cfg = model.config
    if cfg.scan_layers:
        raise ValueError("Adapters in peft's layout need a model with scan_layers=False (one module per layer).")
    return cfg, hf_config.family_for(cfg)


def _check_config(config: dict) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{CONFIG}: peft_type={config['peft_type']!r}; jaxformer loads LoRA adapters ('LORA').")
    for key, (accepted, what) in _REFUSED.items():
        if config.get(key) not in accepted:
            raise ValueError(f"{CONFIG}: {key}={config[key]!r} ({what}) is not supported; jaxformer loads plain LoRA.")


def _read_tensors(path: str, family: str) -> dict[str, dict[str, np.ndarray]]:
    """{module (canonical checkpoint name): {"A": lora_A, "B": lora_B}}, as float32 NumPy arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: a peft adapter directory holds {WEIGHTS}.")
    out: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            match = _TENSOR.fullmatch(name)
            if match is None:
                raise ValueError(
                    f"{WEIGHTS}: tensor {name!r} is not a LoRA A or B matrix ({PREFIX}<module>.lora_A.weight); "
                    "jaxformer loads plain LoRA (no DoRA magnitudes, biases or embedding adapters)."
                )
            module = weights.canonical(family, f"{match['module']}.weight").removesuffix(".weight")
            out[module][match["part"]] = np.asarray(f.get_tensor(name), np.float32)
    return out


def _pattern_value(pattern: dict, module: str, default):
    """peft's rule: the value of the first key `k` with re.match(rf"(.*\\.)?({k})$", module), else `default`."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _kinds(modules: dict[str, str]) -> list[str]:
    return [m.rpartition(".")[2] for m in modules]
