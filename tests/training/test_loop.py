"""The main job end to end through the CLI: outputs in the workdir, exact resume after SIGKILL, the tfds pipeline."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jaxformer.training.checkpoints import CHECKSUMS_FILE
from jaxformer.training.trained import load_trained

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "shakespeare_char_cpu"  # a recipe of jaxformer.configs
TFDS_DIR = pathlib.Path(os.environ.get("TFDS_DATA_DIR", ROOT.parent / "shared" / "tensorflow_datasets"))


def tiny_args(workdir, corpus, num_steps, every):
    return [
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        "--config.data.source=text_file",
        f"--config.data.path={corpus}",
        f"--config.num_steps={num_steps}",
        f"--config.checkpoint_every={every}",
        f"--config.eval_every={every}",
        "--config.log_every=50",
        "--config.warmup_steps=10",
        "--config.batch_size=4",
        "--config.data.seq_len=16",
        "--config.model.num_layers=1",
        "--config.model.num_heads=2",
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.model.dropout_rate=0.1",  # so that resuming must restore the dropout RNG counters too
        "--config.sample.num_tokens=40",
    ]


def train(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "jaxformer.train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def rows_without_timing(workdir):
    with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if k not in ("step_ms", "tokens_per_s")} for row in rows]


def params(workdir):
    model, _, _ = load_trained(str(workdir))
    return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.slow  # three CLI runs (~22 s); the exact resume is in the default run too (test_recovery.py)
def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path, corpus):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run = train(tiny_args(straight, corpus, 600, 200))
    out = run.communicate(timeout=300)[0]
    assert run.returncode == 0, out
    for name in ("metrics.jsonl", "loss.png", "samples.txt", "tokenizer.json"):
        assert (straight / name).exists(), name
    assert (straight / "samples.txt").read_text().strip()
    rows = rows_without_timing(straight)
    assert [r["step"] for r in rows] == [50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600]
    assert all("val_loss" in r for r in rows if r["step"] % 200 == 0)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    child = train(tiny_args(killed, corpus, 600, 200))
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "200" / CHECKSUMS_FILE).exists():  # the save is complete
        assert child.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    resumed_from = max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert resumed_from < 600, "the run finished before it was killed: nothing was tested"

    resume = train(tiny_args(killed, corpus, 600, 200))
    out = resume.communicate(timeout=300)[0]
    assert resume.returncode == 0, out
    assert f"Resumed from the checkpoint at step {resumed_from}" in out
    assert rows_without_timing(killed) == rows
    for a, b in zip(params(straight), params(killed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # ~20 s: the recipe through the CLI on the real data (the loop itself runs in many default tests)
@pytest.mark.skipif(not (TFDS_DIR / "tiny_shakespeare").exists(), reason=f"tiny_shakespeare not prepared in {TFDS_DIR}")
def test_shakespeare_char_pipeline_on_tfds(tmp_path):
    args = [
        f"--config={CONFIG}",
        f"--workdir={tmp_path}",
        "--config.num_steps=20",
        "--config.eval_every=20",
        "--config.log_every=10",
        "--config.warmup_steps=5",
        "--config.sample.num_tokens=20",
    ]
    run = train(args, env={**os.environ, "TFDS_DATA_DIR": str(TFDS_DIR)})
    out = run.communicate(timeout=300)[0]
    assert run.returncode == 0, out
    rows = rows_without_timing(tmp_path)
    tokenizer = json.loads((tmp_path / "tokenizer.json").read_text())
    assert len(tokenizer["chars"]) == 65  # tiny Shakespeare's 65 characters
    assert rows[-1]["step"] == 20 and 2.0 < rows[-1]["val_loss"] < np.log(65) + 0.5
