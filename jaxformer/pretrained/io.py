"""Reading and writing checkpoints in Hugging Face's layout: `config.json` plus safetensors (one file, or shards
named by `model.safetensors.index.json`). Finding them locally or on the hub is `jaxformer.hub.resolve`.

Loading never builds the model in host memory: the model is built abstractly (`nnx.eval_shape`), each parameter
is read from the file on its own (`safetensors.safe_open`, no torch), converted, and put straight where it lives:
on the default device, or split over a mesh by the logical-axis rules (`jaxformer/sharding.py`), so a model larger
than one device loads across an FSDP mesh while the host holds about one tensor at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from jaxformer.pretrained import weights

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: a Hugging Face checkpoint directory holds config.json.")
    with open(path) as f:
        return json.load(f)


def tensor_files(directory: str) -> dict[str, str]:
    """name -> file of every tensor: from the index when the checkpoint is sharded, else the one file."""
    index = os.path.join(directory, INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    single = os.path.join(directory, SINGLE)
    if not os.path.isfile(single):
        raise FileNotFoundError(f"{directory} holds neither {SINGLE} nor {INDEX}.")
    with safe_open(single, framework="flax") as f:
        return {name: single for name in f.keys()}


class TensorReader:
    """Reads named tensors one at a time (`get`), remembering which were read.

    Each read opens the file, copies the one tensor out and closes it again: safetensors maps the file into
    memory, and pages of a mapping that stays open count as the process's memory until it is closed, so a reader
    that kept the files open would end up holding the whole checkpoint beside the model."""

    def __init__(self, files: dict[str, str], family: str):
        self.family = family
        self.files = {weights.canonical(family, name): (file, name) for name, file in files.items()}
        self.used: set[str] = set()

    def get(self, name: str) -> jax.Array:
        if name not in self.files:
            raise ValueError(f"The checkpoint lacks tensor {name!r}, which the model needs.")
        file, stored = self.files[name]
        self.used.add(name)
        with safe_open(file, framework="flax") as f:
            return f.get_tensor(stored)

    def unused(self) -> list[str]:
        return sorted(n for n in set(self.files) - self.used if not weights.is_buffer(self.family, n))


def path_str(path) -> str:
    """A pytree path of a parameter as "blocks/layers/0/ffn/w_in" (the Variable's `value` left out)."""
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(k for k in keys if k != "value")


def flat_params(state: nnx.State) -> dict[str, object]:
    """`nnx.Param` state -> {"blocks/layers/0/ffn/w_in": leaf}."""
    return {path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def read_params(reader: TensorReader, rules: list[weights.Rule], abstract: dict, shardings: dict) -> dict:
    """{path: array} for every parameter of `abstract` ({path: ShapeDtypeStruct}), each read, converted, checked
    against its shape, cast to its dtype and placed with `shardings[path]`."""
    values: dict[str, jax.Array] = {}
    for rule in rules:
        tensors = [reader.get(name) for name in rule.tensors]
        for path, value in zip(rule.params, rule.load(*tensors), strict=True):
            if path not in abstract:
                raise ValueError(f"Tensor(s) {list(rule.tensors)} map to {path!r}, which this model does not have.")
            want = abstract[path]
            if tuple(value.shape) != tuple(want.shape):
                raise ValueError(
                    f"Tensor(s) {list(rule.tensors)} give {path} shape {tuple(value.shape)}; the model's config "
                    f"needs {tuple(want.shape)}."
                )
            values[path] = jax.device_put(jnp.asarray(value, want.dtype), shardings[path])
    unused = reader.unused()
    if unused:
        raise ValueError(
            f"The checkpoint has tensors no part of the model reads: {unused[:8]}{' ...' * (len(unused) > 8)}."
        )
    missing = sorted(set(abstract) - set(values))
    if missing:
        raise ValueError(f"No checkpoint tensor sets the model parameters {missing[:8]}.")
    return values


def save_tensors(tensors: Iterator[tuple[str, jax.Array]], directory: str, *, max_shard_bytes: int) -> None:
    """Writes named tensors as `model.safetensors`, or as shards plus `model.safetensors.index.json` when they
    exceed `max_shard_bytes` (each shard gathered on the host alone, then written)."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors:
        nbytes = value.size * value.dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = jax.device_get(value)
        size += nbytes
    metadata = {"format": "pt"}  # what transformers expects of a safetensors file it loads into torch
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SINGLE), metadata=metadata)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
        total += sum(v.size * v.dtype.itemsize for v in shard.values())
    with open(os.path.join(directory, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
