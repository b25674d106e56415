"""`jaxformer train` end to end in a subprocess on fake CPU devices, for tests that compare whole runs' metrics."""

import json
import os
import subprocess
import sys


def train_metrics(workdir, corpus, args, *, devices: int = 8, seq_len: int = 16) -> list[dict]:
    """The metrics rows (without timings) of 8 steps of a one-layer char GPT on `corpus` (log every 4, evaluated
    and checkpointed at 8, 8 sampled tokens) with the extra `args`, on `devices` CPU devices."""
    args = [
        "--config=shakespeare_char_cpu",
        f"--workdir={workdir}",
        "--config.data.source=text_file",
        f"--config.data.path={corpus}",
        "--config.num_steps=8",
        "--config.log_every=4",
        "--config.eval_every=8",
        "--config.checkpoint_every=8",
        "--config.warmup_steps=2",
        "--config.batch_size=8",
        f"--config.data.seq_len={seq_len}",
        "--config.model.num_layers=1",
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.sample.num_tokens=8",
        *args,
    ]
    # Added to this run's flags (tests/conftest.py's optimisation level: compiles ~2x faster, same numerics).
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env = {**os.environ, "XLA_FLAGS": flags}
    out = subprocess.run([sys.executable, "-m", "jaxformer.train", *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("step_ms", "tokens_per_s")} for line in lines]
