"""Orbax checkpoints of a training run: TrainState + input-iterator state + config, the last N kept, resumable.

Layout: `<directory>/<step>/{state, data, config}`; `data` is written by grain's orbax handler, one
`process_<i>-of-<n>.json` per process (each process's position in its own rows of the input). Orbax writes each
checkpoint into a temporary directory and renames it only once every item is complete, so a crash mid-save leaves
either the previous checkpoints alone or a temporary directory that `latest_step` / `restore` never pick up.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxformer.training.state import TrainState


class Checkpointer:
    """Saves and restores `(TrainState, input iterator, config)` under `directory`, keeping the newest `max_to_keep`.

    The input iterator is grain's (`data.pipeline.iterator`); `config` is a JSON-able dict (the run's ConfigDict).
    Saving is synchronous: the jitted step donates its input state, so nothing may read old buffers later.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be a positive int; got {max_to_keep!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, *, data_iterator: grain.DatasetIterator, config: dict) -> None:
        """Writes checkpoint `step` (replacing nothing: a step that exists already is an error)."""
        if step in self.all_steps():
            raise ValueError(f"A checkpoint for step {step} already exists in {self.directory}.")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(
        self, template: TrainState, step: int | None = None, *, data_iterator: grain.DatasetIterator | None = None
    ) -> tuple[TrainState, dict]:
        """(state, config) of checkpoint `step` (default: the latest), and `data_iterator` (if given) moved to the
        saved position. `template` is a TrainState of the same structure (e.g. a freshly created one) that
        supplies shapes, dtypes and shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        items = {"state": ocp.args.StandardRestore(abstract), "config": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state, restored.config

    def restore_config(self, step: int | None = None) -> dict:
        """Only the config stored with checkpoint `step` (default: the latest), e.g. to rebuild the model."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
