"""Pretrained checkpoints in and out, in Hugging Face's layout (`config.json` + safetensors + `tokenizer.json`).

    from jaxformer import pretrained

    model = pretrained.from_pretrained("path/to/dir" or "hub-id", dtype=None, mesh=None)   # GPT/BERT/ViT, .config
    tokenizer = pretrained.load_tokenizer("path/to/dir" or "hub-id")                     # data.Tokenizer protocol
    pretrained.save_pretrained(model, "out/dir", tokenizer=tokenizer)                    # transformers loads it

Supported (`config.json`'s architectures): GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM (sliding window),
Qwen2ForCausalLM (q/k/v biases), Qwen3ForCausalLM (q/k norms), the Gemma 1-4 text models, and the mixtures of
experts MixtralForCausalLM, Qwen2MoeForCausalLM (shared expert), Qwen3MoeForCausalLM (dense layers) and
GptOssForCausalLM (attention sinks, YaRN, biased router and experts) as `GPT`; BertForMaskedLM and BertModel as
`BERT`; ViTForImageClassification and ViTModel as `ViT`.
What each needs is a `ModelConfig` option (rotate-half RoPE, Llama-3 and YaRN RoPE scaling, separate bias switches,
norm epsilons), so the weights load as they are. A config key or tensor that jaxformer does not compute is refused
with an error naming it (hf_config.py, weights.py); docs/pretrained.md has the table.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxformer import checks, data, hub, sharding
from jaxformer.models import BERT, GPT, ModelConfig, ViT
from jaxformer.pretrained import hf_config, io, peft, weights

__all__ = ["from_pretrained", "load_params", "load_tokenizer", "model_class", "save_pretrained"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _checkpoint_dtype(hf: dict):
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if name not in _DTYPES:
        raise ValueError(f"config.json: dtype={name!r} is not supported; jaxformer loads {sorted(_DTYPES)}.")
    return _DTYPES[name]


def _check_mesh(mesh) -> None:
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh (jaxformer.sharding.make_mesh) or None; got {mesh!r:.80}.")


def from_pretrained(
    path_or_id: str | os.PathLike, *, dtype=None, mesh: Mesh | None = None, adapter: str | os.PathLike | None = None
) -> GPT | BERT | ViT:
    """The model a Hugging Face checkpoint describes, in eval mode, with its `ModelConfig` as `.config`.

    path_or_id: a directory with `config.json` and `*.safetensors`, or a hub id (downloaded into the
      huggingface_hub cache when online; offline the cache is used).
    dtype: parameters and computation in this dtype (e.g. jnp.bfloat16); None keeps the checkpoint's own.
    mesh: a device mesh (`jaxformer.sharding.make_mesh`); each parameter is placed split over it by the
      logical-axis rules as it is read. None: the default device.
    adapter: a LoRA adapter in peft's layout (directory or hub id) to add to the decoder (`jaxformer.lora`).
    """
    _check_mesh(mesh)
    if dtype is not None:
        dtype = checks.check_float_dtype("dtype", dtype)
    directory = hub.resolve(path_or_id)
    hf = io.read_config(directory)
    dtype = _checkpoint_dtype(hf) if dtype is None else jnp.dtype(dtype)
    cfg = hf_config.to_model_config(hf, dtype=dtype, param_dtype=dtype)
    make = lambda: model_class(hf)(cfg, rngs=nnx.Rngs(0))
    graphdef, _, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    # The RNG state of the dropout layers, materialised alone: XLA drops the parameters' initialisers. It is placed
    # as the parameters are (replicated), so that a jitted call's outputs come back with the shardings its inputs
    # had and the second call does not compile again.
    placement = _default_placement() if mesh is None else NamedSharding(mesh, PartitionSpec())
    rest = jax.jit(lambda: nnx.state(make(), nnx.Not(nnx.Param)), out_shardings=placement)()
    model = nnx.merge(graphdef, load_params(directory, cfg, mesh=mesh), rest)
    if adapter is not None:
        peft.load_adapter(model, adapter)  # placed like the weights they adapt
    model.eval()
    return model


def _default_placement() -> NamedSharding:
    """Where a model loaded without a mesh lives: the default device, as a (one-device) NamedSharding."""
    return NamedSharding(Mesh(jax.devices()[:1], ("replica",)), PartitionSpec())


def model_class(hf: dict) -> type[GPT | BERT | ViT]:
    """The jaxformer model class of a `config.json` dict."""
    return {"vit": ViT, "bert": BERT}.get(hf_config.family_of(hf), GPT)


def load_params(path_or_id: str | os.PathLike, cfg: ModelConfig, *, mesh: Mesh | None = None) -> nnx.State:
    """The `nnx.Param` state of a checkpoint for the model `cfg` describes (which must be the checkpoint's
    architecture, e.g. `hf_config.to_model_config` of its config.json with other dtypes or dropout rates), each
    parameter in `cfg.param_dtype`, placed on the default device or split over `mesh` by the rules table."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"`cfg` must be a ModelConfig; got {type(cfg).__name__}.")
    _check_mesh(mesh)
    directory = hub.resolve(path_or_id)
    hf = io.read_config(directory)
    family = hf_config.family_of(hf)
    abstract_params = nnx.state(nnx.eval_shape(lambda: model_class(hf)(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    abstract = io.flat_params(abstract_params)
    if mesh is None:
        shardings = dict.fromkeys(abstract, _default_placement())
    else:
        specs = io.flat_params(sharding.param_specs(abstract_params, mesh))
        shardings = {path: NamedSharding(mesh, spec) for path, spec in specs.items()}
    reader = io.TensorReader(io.tensor_files(directory), family)
    values = io.read_params(reader, weights.rules(family, cfg, stored=reader.files), abstract, shardings)
    is_abstract = lambda x: isinstance(x, jax.ShapeDtypeStruct)
    return jax.tree_util.tree_map_with_path(lambda p, _: values[io.path_str(p)], abstract_params, is_leaf=is_abstract)


def save_pretrained(
    model: GPT | BERT | ViT, directory: str | os.PathLike, *, tokenizer=None, max_shard_bytes: int = 5 * 2**30
) -> str:
    """Writes `model` in Hugging Face's layout to `directory` (created): `config.json` and the weights as
    safetensors (sharded past `max_shard_bytes`, with an index), plus `tokenizer.json` when `tokenizer` is a
    `data.HFTokenizer`. `transformers`' AutoModelForCausalLM.from_pretrained loads it; so does `from_pretrained`,
    bit-exactly. Returns the directory."""
    max_shard_bytes = checks.check_positive_int("max_shard_bytes", max_shard_bytes)
    if not isinstance(model, GPT | BERT | ViT):
        raise TypeError(f"save_pretrained writes GPT, BERT and ViT models; got a {type(model).__name__}.")
    cfg: ModelConfig = model.config
    if cfg.scan_layers:
        raise ValueError("save_pretrained needs a model with scan_layers=False (one parameter set per layer).")
    hf = hf_config.from_model_config(cfg, vision=isinstance(model, ViT), encoder=isinstance(model, BERT))
    family = hf["model_type"]
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    params = io.flat_params(nnx.state(model, nnx.Param))
    rules = weights.rules(family, cfg)
    covered = {p for rule in rules for p in rule.params}
    if covered != set(params):
        raise ValueError(f"No checkpoint tensor for the parameters {sorted(set(params) - covered)[:8]}.")

    def tensors():
        for rule in rules:
            values = rule.save(*(jnp.asarray(params[p]) for p in rule.params))
            yield from zip(rule.tensors, values, strict=True)

    io.save_tensors(tensors(), directory, max_shard_bytes=max_shard_bytes)
    with open(os.path.join(directory, io.CONFIG), "w") as f:
        json.dump(hf, f, indent=2)
    if tokenizer is not None:
        if not isinstance(tokenizer, data.HFTokenizer):
            raise TypeError(f"`tokenizer` must be a data.HFTokenizer (tokenizer.json); got {type(tokenizer).__name__}.")
        tokenizer.save(directory)
    return directory


def load_tokenizer(path_or_id: str | os.PathLike) -> data.HFTokenizer:
    """The `tokenizer.json` of a checkpoint directory or hub id, as a jaxformer tokenizer (`data.HFTokenizer`)."""
    return data.HFTokenizer.from_pretrained(path_or_id)
