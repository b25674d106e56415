"""Run by test_sharding.py in a subprocess with 8 fake CPU devices: trains a tiny GPT for a few steps on each mesh
given as an argument and prints one JSON object {mesh: {"losses": [...], "specs": {...}}} on the last line.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/training/multidevice_run.py CORPUS 1,1,1 8,1,1
"""

import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np

from jaxformer import sharding
from jaxformer.configs import load_config
from jaxformer.data import pipeline
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner, make_train_step

CONFIG = "shakespeare_char_cpu"  # a recipe of jaxformer.configs
SPOT_CHECK = {
    "w_qkv": ("blocks", "layers", 0, "self_attention", "w_q"),
    "w_o": ("blocks", "layers", 0, "self_attention", "w_o"),
    "w_in": ("blocks", "layers", 0, "ffn", "w_in"),
    "w_out": ("blocks", "layers", 0, "ffn", "w_out"),
    "embedding": ("embed", "tokens", "embedding"),
}

EXPERT_CHECK = {
    "experts_up": ("blocks", "layers", 1, "ffn", "w_up"),
    "router": ("blocks", "layers", 1, "ffn", "router"),
}


def spec_list(array) -> list:
    """The array's PartitionSpec as JSON: a list of None / axis name / list of axis names."""
    return [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec]


def setup(corpus: str, mesh_arg: str, steps: int):
    """(task, train batches, state, step function, mesh, devices) for a tiny GPT on the mesh "data,fsdp,tensor"
    or "data,fsdp,tensor,expert" (optionally followed by ":pmap" or ":shard_map" for those data-parallel modes,
    ":nodropout", or ":moe" for a mixture of 4 experts, top-2, in every other layer, dropout off)."""
    mesh_arg, _, mode = mesh_arg.partition(":")
    data, fsdp, tensor, expert = (*(int(x) for x in mesh_arg.split(",")), 1)[:4]
    config = load_config(CONFIG)
    config.data.update(source="text_file", path=corpus, seq_len=16)
    # Per-device modes draw the same dropout stream on every device, so they are compared without dropout.
    dropout = 0.0 if mode else 0.1
    # The looped stack: SPOT_CHECK above names layer 0's parameters (the recipe itself scans its layers).
    config.model.update(num_layers=2, num_heads=4, d_model=32, d_ff=64, dropout_rate=dropout, scan_layers=False)
    config.update(batch_size=8, warmup_steps=2, num_steps=steps)
    if mode == "moe":
        moe = dict(num_experts=4, experts_per_token=2, expert_d_ff=32, dense_layers=(0,), router_z_loss_coef=1e-3)
        config.model.update(activation="swiglu", num_layers=2, **moe)
    run = build_run(config)
    task, schedule, optimizer = run.task, run.schedule, run.optimizer
    devices = jax.devices()[: data * fsdp * tensor * expert]
    mesh = sharding.make_mesh(data, fsdp, tensor, expert=expert, devices=devices)
    parallel = mode if mode in ("pmap", "shard_map") else "jit"
    runner = StepRunner(parallel, run.make_model, optimizer, schedule, task.loss, mesh=mesh)
    step = runner.train_step
    state = runner.to_devices(runner.initial_state)
    if parallel == "jit":  # for inspecting the compiled program: the same step, lowered
        jitted = make_train_step(
            runner.graphs,
            optimizer,
            schedule,
            task.loss,
            state_shardings=runner.state_shardings,
            batch_sharding=sharding.batch_sharding(mesh),
        )
        step = _Lowerable(runner.train_step, lambda s, b: jitted.lower(s, sharding.shard_batch(b, mesh)).as_text())
    # pmap's state lives on one device, not on the mesh.
    batches = pipeline.iterator(task.train_data())
    return task, batches, state, step, (None if mode == "pmap" else mesh), len(devices)


class _Lowerable:
    """The runner's train step, plus `lower(state, batch)`: the HLO text of the same step."""

    def __init__(self, step, lower):
        self.step, self.lower = step, lower

    def __call__(self, state, batch):
        return self.step(state, batch)


def residual_constraints(hlo: str, shape: str) -> list[str]:
    """The distinct shardings that the program's sharding constraints give arrays of `shape` (e.g. "8x16x32")."""
    found = re.findall(r"sdy\.sharding_constraint %\S+ <@\w+, (\[.*?\])> : tensor<" + shape + r"x", hlo)
    return sorted(set(found))


def train(batches, state, step, steps: int, router: list | None = None):
    losses, grad_norms = [], []
    for _ in range(steps):
        state, metrics = step(state, next(batches))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
        if router is not None and "moe_balance_loss" in metrics:
            router.append(float(metrics["moe_balance_loss"]))
    return state, losses, grad_norms


def run(corpus: str, mesh_arg: str, steps: int) -> dict:
    _, batches, state, step, mesh, num_devices = setup(corpus, mesh_arg, steps)
    balance: list[float] = []
    state, losses, grad_norms = train(batches, state, step, steps, balance)
    if mesh is None:  # pmap
        return {"losses": losses, "grad_norms": grad_norms, "devices": num_devices}
    specs = {}
    checks = EXPERT_CHECK if balance else SPOT_CHECK
    for name, path in checks.items():
        node = state.params
        for key in path:
            node = node[key]
        specs[name] = spec_list(node.get_value())
    mu = jax.tree.leaves(state.opt_state)
    # The residual stream [batch 8, length 16, embed 32] is pinned at every block boundary (nn/constraints.py).
    lower = getattr(step, "lower", None)  # jit modes only
    constraints = residual_constraints(lower(state, next(batches)), "8x16x32") if lower else None
    return {
        "residual_constraints": constraints,
        "losses": losses,
        "grad_norms": grad_norms,
        "balance_losses": balance,
        "specs": specs,
        "devices": num_devices,
        "opt_specs": [json.loads(s) for s in sorted({json.dumps(spec_list(x)) for x in mu})],
    }


def cross_mesh(corpus: str, directory: str, source: str, targets: list[str]) -> dict:
    """Trains 5 steps on `source`, checkpoints, restores onto each target mesh and trains 5 more there; the
    source run also goes on for 5 steps. Returns whether each restore gave identical parameters, and the losses."""
    _, batches, state, step, mesh, _ = setup(corpus, source, 10)
    state, _, _ = train(batches, state, step, 5)
    with Checkpointer(directory) as checkpoints:
        checkpoints.save(5, state, data_iterator=batches, config={})
    saved = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    _, continued, _ = train(batches, state, step, 5)
    result = {source: continued}
    for target in targets:
        _, batches, template, step, mesh, _ = setup(corpus, target, 10)
        with Checkpointer(directory) as checkpoints:
            restored, _ = checkpoints.restore(template, 5, data_iterator=batches)
        same = all(
            np.array_equal(a, np.asarray(b)) for a, b in zip(saved, jax.tree.leaves(restored.params), strict=True)
        )
        layouts = {
            x.sharding.spec == y.sharding.spec
            for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(template), strict=True)
        }
        _, losses, _ = train(batches, restored, step, 5)
        result[target] = {"identical_params": same, "target_shardings": layouts == {True}, "losses": losses}
    return result


if __name__ == "__main__":
    if sys.argv[1] == "--cross-mesh":  # --cross-mesh CORPUS DIR SOURCE TARGET...
        corpus, directory, source, *targets = sys.argv[2:]
        print(json.dumps(cross_mesh(corpus, directory, source, targets)))
    else:  # CORPUS MESH...
        corpus, *meshes = sys.argv[1:]
        print(json.dumps({m: run(corpus, m, 6) for m in meshes}))
