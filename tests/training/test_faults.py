"""Faults: a non-finite loss stops the run with the last good checkpoint intact; Ctrl-C saves and exits."""

import json
import math
import re
import signal
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jaxformer.configs import load_config
from jaxformer.training.checkpoints import CHECKSUMS_FILE, Checkpointer
from jaxformer.training.loop import NonFiniteLossError, train_and_evaluate
from jaxformer.training.trained import load_trained
from tests.training.test_loop import CONFIG, tiny_args, train


def tiny_config(corpus_path, **changes):
    config = load_config(CONFIG)
    config.data.source, config.data.path, config.data.seq_len, config.batch_size = "text_file", str(corpus_path), 16, 4
    config.model.update(num_layers=1, num_heads=2, d_model=32, d_ff=64)
    config.update(warmup_steps=0, log_every=1, eval_every=1000, checkpoint_every=1, num_steps=200, **changes)
    return config


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    # No clipping and an absurd learning rate: Adam moves every weight by ~1e4 per step until the loss overflows.
    config = tiny_config(corpus, learning_rate=1e4, schedule="constant")
    config.optimizer.clip_norm = 0.0
    pattern = r"(Training loss is|Gradient norm is|Parameters are not finite).* at step (\d+)"
    with pytest.raises(NonFiniteLossError, match=pattern) as error:
        train_and_evaluate(config, str(tmp_path))
    bad_step = int(str(error.value).split(" at step ")[1].split(".")[0])
    with Checkpointer(tmp_path / "checkpoints") as checkpoints:
        assert checkpoints.latest_step() == bad_step - 1
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    model, _, _ = load_trained(str(tmp_path))  # the newest checkpoint: finite parameters
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow  # two CLI runs (~18 s); SIGTERM takes the same path in the default run (test_recovery.py)
def test_ctrl_c_saves_the_current_step_and_the_run_resumes(tmp_path, corpus):
    args = tiny_args(tmp_path, corpus, 100000, 50)
    child = train(args)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "50" / CHECKSUMS_FILE).exists():  # the save is complete
        assert child.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # well past step 50
    child.send_signal(signal.SIGINT)
    out = child.communicate(timeout=120)[0]
    assert child.returncode == 130, out
    stopped_at = int(re.search(r"Interrupted: saved step (\d+)", out).group(1))
    newest = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert newest == stopped_at > 50, out[-2000:]  # the step it stopped at (which may coincide with a periodic save)
    resume = train(tiny_args(tmp_path, corpus, stopped_at + 5, 50))
    out = resume.communicate(timeout=120)[0]
    assert resume.returncode == 0 and f"Resumed from the checkpoint at step {stopped_at}" in out, out
