"""Orbax checkpoints of a training run: TrainState + input-iterator state + config, the last N kept, verified.
(A LoRA run's TrainState without its frozen base weights: `saved_part`.)

Layout: `<directory>/<step>/{state, data, config, checksums.json}`; `data` is written by grain's orbax handler,
one `process_<i>-of-<n>.json` per process (each process's position in its own rows of the input).

Orbax is the storage; this module is the policy around it:
  - Atomic saves. Orbax writes each checkpoint into a temporary directory and renames it only once every item is
    complete, so a crash mid-save leaves the previous checkpoints alone and a temporary directory that is never
    picked up.
  - Integrity. After orbax has finished, `checksums.json` records the size and sha256 of every file of the step
    (written atomically, last: a checkpoint without it is unfinished). Every restore verifies it first, so a
    truncated file, garbage metadata, bytes flipped in place or a missing item is found before any value reaches
    training.
  - Fallback. `latest_intact_step` walks from the newest checkpoint down: a damaged one is reported (step, file,
    what is wrong) and moved aside to `<directory>.damaged/` (never deleted), and the newest intact one is used.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxformer import checks
from jaxformer.training.state import TrainState

CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "jaxformer.checkpoint-checksums/1"


class DamagedCheckpointError(ValueError):
    """A checkpoint's files do not match the checksums recorded when it was saved (or it has none)."""


class UnfinishedCheckpointError(DamagedCheckpointError):
    """A checkpoint without checksums: its save was cut short (a kill between orbax's rename and the checksums),
    so it never was a checkpoint; unlike damage, it loses nothing that had been saved."""


UNFINISHED_SUFFIX = ".unfinished"


class Checkpointer:
    """Saves and restores `(TrainState, input iterator, config)` under `directory`, keeping the newest `max_to_keep`.

    The input iterator is grain's (`data.pipeline.iterator`); `config` is a JSON-able dict (the run's ConfigDict).
    Saving is synchronous: the jitted step donates its input state, so nothing may read old buffers later.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
        max_to_keep = checks.check_positive_int("max_to_keep", max_to_keep)
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    @property
    def damaged_directory(self) -> str:
        """Where damaged checkpoints are moved: `<directory>.damaged/`."""
        return self.directory + ".damaged"

    def step_directory(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None (not verified: see `latest_intact_step`)."""
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, *, data_iterator: grain.DatasetIterator, config: dict) -> None:
        """Writes checkpoint `step` and then its checksums (replacing nothing: a step that exists already is an
        error)."""
        if step in self.all_steps():
            raise ValueError(f"A checkpoint for step {step} already exists in {self.directory}.")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(saved_part(state)),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()
        _sync("jaxformer: checkpoint written")  # every process's files are in place
        if jax.process_index() == 0:
            write_checksums(self.step_directory(step), step)
        _sync("jaxformer: checksums written")

    def verify(self, step: int) -> None:
        """Raises DamagedCheckpointError naming the file and what is wrong unless checkpoint `step` is intact."""
        verify_checksums(self.step_directory(step))

    def latest_intact_step(self, *, log: Callable[[str], None] | None = None) -> int | None:
        """The newest checkpoint that passes `verify`, or None. Damaged newer ones are reported through `log`
        (default: stderr) and moved to `damaged_directory` (by process 0; never deleted)."""
        log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.verify(step)
                return step
            except DamagedCheckpointError as problem:
                moved = self._move_aside(step, unfinished=isinstance(problem, UnfinishedCheckpointError))
                log(f"Checkpoint {step} is damaged: {problem} Moved it to {moved}; trying the next older one.")
        return None

    def has_damaged(self) -> bool:
        """Whether a checkpoint that had been completely saved was found damaged and moved aside (unfinished
        saves, also kept there, do not count: nothing saved was lost with them)."""
        if not os.path.isdir(self.damaged_directory):
            return False
        return any(not name.endswith(UNFINISHED_SUFFIX) for name in os.listdir(self.damaged_directory))

    def _move_aside(self, step: int, *, unfinished: bool = False) -> str:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{step}.{stamp}{UNFINISHED_SUFFIX if unfinished else ''}"
        target = os.path.join(self.damaged_directory, name)
        _sync("jaxformer: before moving a damaged checkpoint")  # every process has verified it
        if jax.process_index() == 0:
            os.makedirs(self.damaged_directory, exist_ok=True)
            shutil.move(self.step_directory(step), target)
        _sync("jaxformer: damaged checkpoint moved")
        self.manager.reload()
        return target

    def _intact(self, step: int | None) -> int:
        """`step` after verifying it, or (None) the newest intact step; FileNotFoundError if there is none."""
        if step is None:
            step = self.latest_intact_step()
            if step is None:
                raise FileNotFoundError(
                    f"No intact checkpoint in {self.directory} (damaged ones, if any, were moved to "
                    f"{self.damaged_directory})."
                )
            return step
        if step not in self.all_steps():
            raise FileNotFoundError(f"No complete checkpoint for step {step} in {self.directory}.")
        self.verify(step)
        return step

    def restore(
        self, template: TrainState, step: int | None = None, *, data_iterator: grain.DatasetIterator | None = None
    ) -> tuple[TrainState, dict]:
        """(state, config) of checkpoint `step` (default: the newest intact one), and `data_iterator` (if given)
        moved to the saved position. The checkpoint is verified first (DamagedCheckpointError if `step` was given
        and is damaged). `template` is a TrainState of the same structure (e.g. a freshly created one) that
        supplies shapes, dtypes and shardings; a LoRA state's frozen base is not in the checkpoint and comes back
        as the template has it."""
        step = self._intact(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, saved_part(template))
        items = {"state": ocp.args.StandardRestore(abstract), "config": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        fields = {name: getattr(restored.state, name) for name in _SAVED_FIELDS}
        return template.replace(**fields), restored.config

    def restore_config(self, step: int | None = None) -> dict:
        """Only the config stored with checkpoint `step` (default: the newest intact one), verified first."""
        step = self._intact(step)
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_SAVED_FIELDS = ("step", "params", "opt_state", "model_state")


def saved_part(state: TrainState) -> TrainState:
    """What a checkpoint holds of `state`: its step, trained params, optimizer state and model state, as a plain
    TrainState (so full fine-tuning and LoRA checkpoints have one layout). A LoRA state's frozen base weights are
    left out: they are the base checkpoint's (config.init_from, read again on resume), or the seed's."""
    return TrainState(**{name: getattr(state, name) for name in _SAVED_FIELDS})


def _sync(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _files(directory: str) -> list[str]:
    """Every file under `directory` but the checksums file, as sorted relative paths."""
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel != CHECKSUMS_FILE:
                found.append(rel)
    return sorted(found)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(directory: str, step: int) -> None:
    """`directory/checksums.json`: the size and sha256 of every file under `directory`, written atomically."""
    files = {rel: {"bytes": os.path.getsize(os.path.join(directory, rel))} for rel in _files(directory)}
    for rel, entry in files.items():
        entry["sha256"] = _sha256(os.path.join(directory, rel))
    path = os.path.join(directory, CHECKSUMS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"format": CHECKSUMS_FORMAT, "step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def verify_checksums(directory: str) -> None:
    """Raises DamagedCheckpointError unless every file recorded in `directory/checksums.json` is present with its
    recorded size and sha256 (sizes first: a truncated file is found without hashing)."""
    path = os.path.join(directory, CHECKSUMS_FILE)
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("format") != CHECKSUMS_FORMAT or not isinstance(files, dict) or not files:
            raise ValueError("not a checksums file of this format")
    except FileNotFoundError:
        raise UnfinishedCheckpointError(
            f"{path} is missing: the save did not finish (or the checkpoint predates checksums)."
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(f"{path} is unreadable ({e}).") from None
    for rel, entry in files.items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            raise DamagedCheckpointError(f"{full} is missing.")
        size = os.path.getsize(full)
        if size != entry["bytes"]:
            raise DamagedCheckpointError(f"{full} has {size} bytes; {entry['bytes']} were saved (truncated?).")
    for rel, entry in files.items():
        full = os.path.join(directory, rel)
        digest = _sha256(full)
        if digest != entry["sha256"]:
            raise DamagedCheckpointError(
                f"{full} has sha256 {digest}; {entry['sha256']} was saved (its bytes changed after the save)."
            )
