"""Multi-host training, for real: two processes of 4 CPU devices each (jax.distributed over gloo) train the same
run as one process of 8 devices, with the same mesh, and must log the same metrics."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxformer import sharding
from jaxformer.training import multihost
from jaxformer.training.metrics import MetricsLog

HERE = Path(__file__).resolve().parent
CONFIG = "shakespeare_char_cpu"  # a recipe of jaxformer.configs


def train_args(workdir, corpus) -> list[str]:
    return [
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        "--config.data.source=text_file",
        f"--config.data.path={corpus}",
        "--config.num_steps=6",
        "--config.log_every=3",
        "--config.eval_every=6",
        "--config.checkpoint_every=3",
        "--config.warmup_steps=2",
        "--config.batch_size=8",
        "--config.data.seq_len=16",
        "--config.model.num_layers=1",
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.sample.num_tokens=8",
        "--config.mesh.data=2",
        "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def metrics_rows(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("step_ms", "tokens_per_s")} for line in lines]


@pytest.mark.slow  # two CLI runs, one of them in two processes (~1-2 minutes on 2 cores)
def test_two_processes_train_like_one_process_with_the_same_mesh(tmp_path, corpus):
    single = tmp_path / "single"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run(
        [sys.executable, "-m", "jaxformer.train", *train_args(single, corpus)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]

    multi = tmp_path / "multi"
    port = free_port()
    procs = []
    for process_id in range(2):
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",  # CPU devices of different processes talk over gloo
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(process_id),
        }
        args = [*train_args(multi, corpus), "--config.distributed=True"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "jaxformer.train", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]

    want, got = metrics_rows(single), metrics_rows(multi)
    assert [r["step"] for r in want] == [3, 6] and "val_loss" in want[-1]
    for w, g in zip(want, got, strict=True):  # one writer: exactly one row per step
        assert g == pytest.approx(w, rel=1e-5)
    # Both processes took part in every checkpoint, and the leader alone wrote the run's other files.
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    assert (multi / "samples.txt").read_text() == (single / "samples.txt").read_text()
    assert "Resumed" not in outputs[0][0] + outputs[1][0]
    # Each process read only its own half of every global batch (and together they fed what one process did).
    assert "Process 0 of 2 reads rows 0:4 of every batch of 8." in outputs[0][0]
    assert "Process 1 of 2 reads rows 4:8 of every batch of 8." in outputs[1][0]


def test_one_process_feeds_every_row_of_the_batch():
    mesh = sharding.make_mesh(1, 1, 1, devices=__import__("jax").devices()[:1])
    assert sharding.process_rows(mesh, 8) == slice(0, 8)
    batch = {"inputs": np.arange(24).reshape(8, 3)}
    placed = sharding.shard_batch(batch, mesh)
    np.testing.assert_array_equal(np.asarray(placed["inputs"]), batch["inputs"])


def test_multihost_is_off_unless_the_config_or_the_environment_asks(monkeypatch):
    import ml_collections

    monkeypatch.delenv(multihost.ENV_FLAG, raising=False)
    off = ml_collections.ConfigDict({"distributed": False})
    assert not multihost.requested(off) and not multihost.initialize(off)
    assert multihost.requested(ml_collections.ConfigDict({"distributed": True}))
    monkeypatch.setenv(multihost.ENV_FLAG, "1")
    assert multihost.requested(off)
    monkeypatch.setenv(multihost.ENV_FLAG, "0")
    assert not multihost.requested(off)
    assert multihost.is_leader()  # a single process is process 0


def test_a_log_that_does_not_write_keeps_its_rows_in_memory_only(tmp_path):
    log = MetricsLog(str(tmp_path), writes=False)
    log.write({"step": 1, "train_loss": 2.0})
    log.close()
    assert log.history == [{"step": 1, "train_loss": 2.0}] and list(tmp_path.iterdir()) == []


def test_a_malformed_process_count_is_named(monkeypatch):
    import ml_collections

    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    monkeypatch.setattr(multihost.jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='two' must be a non-negative integer"):
        multihost.initialize(ml_collections.ConfigDict({"distributed": True}))
