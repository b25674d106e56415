"""Run by test_context_parallel.py in a subprocess with 8 fake CPU devices: trains a tiny rotary GPT (2 layers,
seq_len 32: layer 0 local with a sliding window of 8, layer 1 global; 4 query heads over 2 key/value heads;
batches packed with segment ids and per-document positions) for 6 steps on each run given as an argument and
prints one JSON object on the last line:
{run: {"losses": [...], "grad_norms": [...], "devices": n, "ring": bool, "batch_spec": [...], ...}}.

    python tests/training/context_parallel_run.py CORPUS data=1 data=2,context=4 context=8:contiguous

A run is "axis=size,...[:option...]": the mesh over sharding.MESH_AXES (missing axes 1), then options:
"contiguous" (the sequence layout; default config.sequence_layout, zigzag), "plain" (unpacked rows: no segment
ids, no positions, so the model's default positions are used), "softcap" (attention logits soft-capped at 5),
"sinks" (GPT-OSS's attention sinks), "alibi" (ALiBi instead of RoPE), "moe" (the second layer a mixture of 4
experts, top-2, with the balance and z losses).
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
from jaxformer.training.loop import check_context_config
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner, make_train_step

OPTIONS = ("contiguous", "plain", "softcap", "sinks", "alibi", "moe")


def setup(corpus: str, run_arg: str):
    mesh_arg, *options = run_arg.split(":")
    assert set(options) <= set(OPTIONS), options
    sizes = {axis: int(size) for axis, size in (part.split("=") for part in mesh_arg.split(","))}
    config = load_config("shakespeare_char_cpu")
    config.data.update(source="text_file", path=corpus, seq_len=32)
    model = dict(num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64, dropout_rate=0.0)
    model.update(positional="rope", sliding_window=8, layer_types=("local", "global"), scan_layers=False, remat="none")
    if "softcap" in options:
        model.update(attention_logit_softcap=5.0)
    if "sinks" in options:
        model.update(attention_sinks=True)
    if "alibi" in options:  # instead of RoPE
        model.update(positional="alibi")
    if "moe" in options:  # 4 SwiGLU experts, top-2, layer 0 dense; balance and z losses on
        model.update(activation="swiglu", num_experts=4, experts_per_token=2, expert_d_ff=32, dense_layers=(0,))
        model.update(router_z_loss_coef=0.001)
    config.model.update(model)
    config.update(batch_size=8, warmup_steps=2, num_steps=6)
    if "contiguous" in options:
        config.sequence_layout = "contiguous"
    run = build_run(config)
    mesh = sharding.make_mesh(**{"data": 1, **sizes}, devices=jax.devices()[: _count(sizes)])
    check_context_config(config, mesh, run.model_config)
    layout = config.sequence_layout
    runner = StepRunner(
        "jit", run.make_model, run.optimizer, run.schedule, run.task.loss, mesh=mesh, sequence_layout=layout
    )
    lower = make_train_step(
        runner.graphs,
        run.optimizer,
        run.schedule,
        run.task.loss,
        state_shardings=runner.state_shardings,
        batch_sharding=sharding.batch_sharding(mesh),
        sequence_layout=layout,
    ).lower
    batches = enumerate(pipeline.iterator(run.task.train_data()))
    batches = (batch for _, batch in batches) if "plain" in options else map(packed, batches)
    return runner, mesh, layout, lower, batches


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


def run(corpus: str, run_arg: str, steps: int = 6) -> dict:
    runner, mesh, layout, lower, batches = setup(corpus, run_arg)
    state = runner.to_devices(runner.initial_state)
    losses, grad_norms, balance, segments = [], [], [], 0
    for _ in range(steps):
        batch = next(batches)
        segments = max(segments, int(batch["segment_ids"].max()) if "segment_ids" in batch else 1)
        state, metrics = runner.train_step(state, batch)
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
        balance.append(float(metrics.get("moe_balance_loss", 0.0)))
    eval_batch = next(batches)
    eval_loss = float(runner.eval_step(runner.to_host(state), eval_batch)["loss"])
    placed = sharding.shard_batch(eval_batch, mesh, sequence_layout=layout)
    with sharding.use_mesh(mesh):
        hlo = lower(state, placed).as_text()
    return {
        "losses": losses,
        "grad_norms": grad_norms,
        "eval_loss": eval_loss,
        "balance_losses": balance,
        "layout": layout,
        # the first row of tokens as device 0 holds them (zigzag: chunks 0 and 2c - 1 of the sequence)
        "device0_inputs": np.asarray(placed["inputs"].addressable_shards[0].data)[0].tolist(),
        "inputs": np.asarray(eval_batch["inputs"])[0].tolist(),
        "devices": mesh.devices.size,
        # ring attention's ppermute (collective_permute) in the compiled step
        "ring": "collective_permute" in hlo,
        "batch_spec": [list(a) if isinstance(a, tuple) else a for a in placed["inputs"].sharding.spec],
        "max_segments": segments,
    }


if __name__ == "__main__":
    corpus, *meshes = sys.argv[1:]
    print(json.dumps({m: run(corpus, m) for m in meshes}))
