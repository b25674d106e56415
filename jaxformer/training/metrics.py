"""MetricsLog: a training run's metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files.

Each row is one log line of the loop: `step`, `train_loss`, `learning_rate`, `step_ms`, `tokens_per_s`, ... and
on evaluation steps the task's `val_*` metrics. A resumed run first forgets the rows after its checkpoint's step
(it logs them again, identically): `metrics.jsonl` is rewritten without them (and without a partial last line
left by a kill) and TensorBoard is told to purge them, so neither holds two values for a step.
"""

from __future__ import annotations

import json
import math
import os
import sys


def perplexity(nll: float) -> float:
    """exp(mean negative log-likelihood); inf where that overflows a float (a diverged run)."""
    return math.exp(nll) if nll < 709.0 else math.inf


def _json_value(value):
    """Non-finite floats become null: `metrics.jsonl` stays strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX tries `import torch` only to convert
    torch tensors, which jaxformer never logs, and that import costs ~180 MiB and ~1.5 s where torch is installed."""
    if "torch" in sys.modules:  # already paid for
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def read_rows(path: str) -> list[dict]:
    """The complete rows of a metrics.jsonl. A line that is not a JSON object with a `step` (what a kill in the
    middle of a write leaves as the last line) is dropped, with a warning naming it."""
    rows = []
    with open(path, errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("not a row with a step")
            except ValueError:
                print(f"{path}: dropped line {number}, not a complete row: {line.strip()[:80]!r}", file=sys.stderr)
                continue
            rows.append(row)
    return rows


class MetricsLog:
    """`workdir/metrics.jsonl` plus `workdir/tensorboard/events.out.tfevents.*` (scalars tagged by row key).

    With `writes=False` (every process but the first of a multi-host run) rows are kept in `history` only.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, writes: bool = True):
        SummaryWriter = _summary_writer()

        self.path = os.path.join(workdir, "metrics.jsonl")
        self.history: list[dict] = []
        self.tensorboard = None
        if not writes:
            return
        if os.path.exists(self.path):
            self.history = [row for row in read_rows(self.path) if row["step"] <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.history)
        board = os.path.join(workdir, "tensorboard")
        if not resume_step and os.path.isdir(board):  # a fresh start: events of an earlier attempt are stale
            for name in os.listdir(board):
                if name.startswith("events.out.tfevents."):
                    os.remove(os.path.join(board, name))
        # purge_step: TensorBoard drops the events of a previous process from this step on.
        self.tensorboard = SummaryWriter(board, purge_step=resume_step + 1 if resume_step else None)

    def write(self, row: dict) -> None:
        self.history.append(row)
        if self.tensorboard is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, global_step=row["step"])
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
