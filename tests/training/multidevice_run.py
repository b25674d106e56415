"""Run by test_sharding.py in a subprocess with 8 fake CPU devices: trains a tiny GPT for a few steps on each mesh
given as an argument and prints one JSON object {mesh: {"losses": [...], "specs": {...}}} on the last line.

    python tests/training/multidevice_run.py CORPUS 1,1,1 8,1,1 1,8,1 "1,8,1->1,1,1" "1,8,1->2,2,2"

An argument "SOURCE->TARGET" (SOURCE one of the meshes) checkpoints SOURCE's run halfway, restores the checkpoint
onto the TARGET mesh and trains the second half there (cross_mesh below; in one process, TARGET reuses the step run()
compiled for it); the JSON's "SOURCE->TARGET" holds what it found.
"""

import json
import os
import re
import sys
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np

from jaxformer import sharding
from jaxformer.configs import load_config
from jaxformer.data import pipeline
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner

CONFIG = "shakespeare_char_cpu"  # a recipe of jaxformer.configs
STEPS = 6
SAVE_AT = 3  # "SOURCE->TARGET": SOURCE's checkpoint; TARGET trains steps 4 to 6 from it
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
    if parallel == "jit":  # for inspecting the compiled program: the runner's own jitted step, lowered
        jitted = runner_jit(runner)

        def lower(s, b):
            with sharding.use_mesh(mesh):  # as the runner calls it: the trace it cached is reused
                return jitted.lower(s, sharding.shard_process_batch(b, mesh)).as_text()

        step = _Lowerable(runner.train_step, lower)
    # pmap's state lives on one device, not on the mesh.
    batches = pipeline.iterator(task.train_data())
    return task, batches, state, step, (None if mode == "pmap" else mesh), len(devices)


def runner_jit(runner: StepRunner):
    """The `jax.jit` object a parallel="jit" runner's train step calls (in the closure of its mesh wrapper)."""
    found = [c.cell_contents for c in runner._train.__closure__ or () if hasattr(c.cell_contents, "lower")]
    assert len(found) == 1, "StepRunner's jit step is no longer where multidevice_run.py looks for it"
    return found[0]


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


# Per mesh: (task, the initial state as an abstract template, the step compiled there, the mesh); see cross_mesh.
SETUPS: dict[str, tuple] = {}
SAVED: dict[str, list] = {}  # checkpoint directory -> the parameters it was saved with, on the host


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def run(corpus: str, mesh_arg: str, checkpoints: str | None = None) -> dict:
    """STEPS steps on the mesh; with a `checkpoints` directory, the state is saved after SAVE_AT of them."""
    task, batches, state, step, mesh, num_devices = setup(corpus, mesh_arg, STEPS)
    if mesh is not None:
        SETUPS[mesh_arg] = (task, abstract(state), step, mesh)
    balance: list[float] = []
    state, losses, grad_norms = train(batches, state, step, SAVE_AT if checkpoints else STEPS, balance)
    if checkpoints:
        with Checkpointer(checkpoints) as saver:
            saver.save(SAVE_AT, state, data_iterator=batches, config={})
        SAVED[checkpoints] = [np.asarray(x) for x in jax.tree.leaves(state.params)]
        state, more_losses, more_norms = train(batches, state, step, STEPS - SAVE_AT, balance)
        losses, grad_norms = losses + more_losses, grad_norms + more_norms
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


def cross_mesh(corpus: str, checkpoints: str, target: str) -> dict:
    """Restores the checkpoint that run() saved after SAVE_AT steps onto the `target` mesh (against its template's
    shardings) and trains the remaining steps there, with the step run() compiled for `target` if it ran there.
    Returns whether the parameters came back bit-identical and in the target's shardings, and the losses."""
    if target not in SETUPS:
        task, _, state, step, mesh, _ = setup(corpus, target, STEPS)
        SETUPS[target] = (task, abstract(state), step, mesh)
    task, template, step, mesh = SETUPS[target]
    batches = pipeline.iterator(task.train_data())
    with Checkpointer(checkpoints) as saver:
        restored, _ = saver.restore(template, SAVE_AT, data_iterator=batches)
    same = all(
        np.array_equal(a, np.asarray(b))
        for a, b in zip(SAVED[checkpoints], jax.tree.leaves(restored.params), strict=True)
    )
    layouts = {
        x.sharding.spec == y.sharding.spec
        for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(template), strict=True)
    }
    _, losses, _ = train(batches, restored, step, STEPS - SAVE_AT)
    return {"identical_params": same, "target_shardings": layouts == {True}, "losses": losses}


if __name__ == "__main__":  # CORPUS MESH... [SOURCE->TARGET...]
    corpus, *args = sys.argv[1:]
    meshes = [a for a in args if "->" not in a]
    restores = [a.split("->") for a in args if "->" in a]
    sources = {source for source, _ in restores}
    with tempfile.TemporaryDirectory(prefix="jaxformer-multidevice-") as directory:
        results = {m: run(corpus, m, os.path.join(directory, m) if m in sources else None) for m in meshes}
        for source, target in restores:
            results[f"{source}->{target}"] = cross_mesh(corpus, os.path.join(directory, source), target)
    print(json.dumps(results))
