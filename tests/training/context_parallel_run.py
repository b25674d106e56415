"""Run by test_context_parallel.py in a subprocess with 8 fake CPU devices: trains a tiny rotary GPT (2 layers,
seq_len 32: layer 0 local with a sliding window of 8, layer 1 global; 4 query heads over 2 key/value heads;
batches packed with segment ids and per-document positions) for 6 steps on each mesh given as an argument and
prints one JSON object on the last line:
{mesh: {"losses": [...], "grad_norms": [...], "devices": n, "ring": bool, "batch_spec": [...], ...}}.

    python tests/training/context_parallel_run.py CORPUS data=1 data=2,context=4 context=8

A mesh is "axis=size,..." over sharding.MESH_AXES (missing axes 1).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np

from jaxformer import sharding
from jaxformer.configs import load_config
from jaxformer.data import pipeline
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner, make_train_step


def setup(corpus: str, mesh_arg: str):
    sizes = {axis: int(size) for axis, size in (part.split("=") for part in mesh_arg.split(","))}
    config = load_config("shakespeare_char_cpu")
    config.data.update(source="text_file", path=corpus, seq_len=32)
    model = dict(num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64, dropout_rate=0.0)
    model.update(positional="rope", sliding_window=8, layer_types=("local", "global"), scan_layers=False, remat="none")
    config.model.update(model)
    config.update(batch_size=8, warmup_steps=2, num_steps=6)
    run = build_run(config)
    mesh = sharding.make_mesh(**{"data": 1, **sizes}, devices=jax.devices()[: _count(sizes)])
    runner = StepRunner("jit", run.make_model, run.optimizer, run.schedule, run.task.loss, mesh=mesh)
    lower = make_train_step(
        runner.graphs,
        run.optimizer,
        run.schedule,
        run.task.loss,
        state_shardings=runner.state_shardings,
        batch_sharding=sharding.batch_sharding(mesh),
    ).lower
    return runner, mesh, lower, map(packed, enumerate(pipeline.iterator(run.task.train_data())))


def packed(numbered):
    """The batch with 1-4 documents per row (the same for every mesh): `segment_ids` 1, 2, ... and `positions`
    restarting at 0 where each document starts (what the packed_documents sampling gives)."""
    step, batch = numbered
    rng = np.random.default_rng(step)
    B, T = batch["inputs"].shape
    starts = rng.random((B, T)) < 0.08
    starts[:, 0] = True
    segment_ids = np.cumsum(starts, axis=1).astype(np.int32)
    first = np.maximum.accumulate(np.where(starts, np.arange(T), 0), axis=1)
    positions = (np.arange(T)[None, :] - first).astype(np.int32)
    return {**batch, "segment_ids": segment_ids, "positions": positions}


def _count(sizes: dict) -> int:
    n = 1
    for size in sizes.values():
        n *= size
    return n


def run(corpus: str, mesh_arg: str, steps: int = 6) -> dict:
    runner, mesh, lower, batches = setup(corpus, mesh_arg)
    state = runner.to_devices(runner.initial_state)
    losses, grad_norms, segments = [], [], 0
    for _ in range(steps):
        batch = next(batches)
        segments = max(segments, int(batch["segment_ids"].max()))
        state, metrics = runner.train_step(state, batch)
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    placed = sharding.shard_batch(next(batches), mesh)
    with sharding.use_mesh(mesh):
        hlo = lower(state, placed).as_text()
    return {
        "losses": losses,
        "grad_norms": grad_norms,
        "devices": mesh.devices.size,
        # ring attention's ppermute (collective_permute) in the compiled step
        "ring": "collective_permute" in hlo,
        "batch_spec": [list(a) if isinstance(a, tuple) else a for a in placed["inputs"].sharding.spec],
        "max_segments": segments,
    }


if __name__ == "__main__":
    corpus, *meshes = sys.argv[1:]
    print(json.dumps({m: run(corpus, m) for m in meshes}))
