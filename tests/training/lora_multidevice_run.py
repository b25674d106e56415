"""Run by test_lora_training.py in a subprocess with 8 fake CPU devices: a few LoRA steps over the Llama fixture's
frozen weights on each mesh given as an argument; prints one JSON object {mesh: {"losses": [...], ...}} last.

    python tests/training/lora_multidevice_run.py CORPUS 1,1,1 2,2,2 1,1,1:nodropout 8,1,1:pmap 8,1,1:shard_map

A mesh is "data,fsdp,tensor" (parallel="jit", adapter dropout 0.1), optionally followed by ":pmap" or ":shard_map"
(those data-parallel modes) or ":nodropout" (jit), all three without dropout.
"""

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np
from flax import nnx

from jaxformer import sharding
from jaxformer.configs import load_config
from jaxformer.data import pipeline
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner
from jaxformer.training.state import with_base

LLAMA = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrained" / "llama"
STEPS = 4
# Layer 0's query projection [embed, heads, head_dim]: its adapter's A [embed, r] and B [r, heads, head_dim].
LAYER0 = ("blocks", "layers", 0, "self_attention")


def config_for(corpus: str, parallel: str, dropout: float):
    config = load_config("gpt2_finetune_shakespeare")
    config.init_from = str(LLAMA)
    config.data.update(source="text_file", path=corpus, tokenizer=f"hf:{LLAMA}", seq_len=16)
    config.model.dtype = "float32"
    config.update(batch_size=8, num_steps=STEPS, warmup_steps=0, learning_rate=1e-2, parallel=parallel)
    config.lora.update(rank=4, alpha=8.0, dropout=dropout)
    return config


def spec_list(array) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec]


def run(corpus: str, mesh_arg: str) -> dict:
    mesh_arg, _, mode = mesh_arg.partition(":")
    data, fsdp, tensor = (int(x) for x in mesh_arg.split(","))
    parallel = mode if mode in ("pmap", "shard_map") else "jit"
    # Per-device modes draw the same dropout stream on every device, so they are compared without dropout.
    run = build_run(config_for(corpus, parallel, dropout=0.0 if mode else 0.1))
    mesh = sharding.make_mesh(data, fsdp, tensor, devices=jax.devices()[: data * fsdp * tensor])
    runner = StepRunner(parallel, run.make_model, run.optimizer, run.schedule, run.task.loss, mesh=mesh)
    state = with_base(runner.initial_state, run.initial_params(runner.state_mesh))
    state = runner.to_devices(jax.device_put(state, runner.state_shardings))
    base = [np.asarray(x) for x in jax.tree.leaves(state.frozen)]
    batches = pipeline.iterator(run.task.train_data())
    losses, grad_norms = [], []
    for _ in range(STEPS):
        state, metrics = runner.train_step(state, next(batches))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    batches.close()
    frozen = jax.tree.leaves(state.frozen)
    same = all(np.array_equal(a, np.asarray(b)) for a, b in zip(base, frozen, strict=True))  # pmap: per device
    out = {"losses": losses, "grad_norms": grad_norms, "devices": data * fsdp * tensor, "base_unchanged": same}
    if parallel == "jit":
        node = lambda tree: tree["blocks"]["layers"][0]["self_attention"]
        adapter = node(state.params)["lora"]["w_q"]
        is_variable = lambda x: isinstance(x, nnx.Variable)
        out["specs"] = {
            "a": spec_list(adapter["a"].get_value()),
            "b": spec_list(adapter["b"].get_value()),
            "w_q": spec_list(node(state.frozen)["w_q"].get_value()),
            "opt": sorted({json.dumps(spec_list(x)) for x in jax.tree.leaves(state.opt_state) if x.ndim}),
            "trained": sorted({type(v).__name__ for v in jax.tree.leaves(state.params, is_leaf=is_variable)}),
        }
    return out


if __name__ == "__main__":
    corpus, *meshes = sys.argv[1:]
    print(json.dumps({m: run(corpus, m) for m in meshes}))
