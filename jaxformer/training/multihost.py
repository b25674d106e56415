"""Multi-host runs: one Python process per host, each driving its own accelerators, all in one global mesh.

    jaxformer train --config ... --config.distributed=True        # or JAXFORMER_DISTRIBUTED=1 in the environment

Turned on, `initialize` calls `jax.distributed.initialize()` before anything touches a device. On a Cloud TPU pod
slice, under SLURM, Open MPI or GKE, jax finds the coordinator, the process count and this process's id itself;
elsewhere set `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` on
every host. After that `jax.devices()` lists every device of every host, and the mesh spans them all.

What each process does (training/loop.py, jaxformer/sharding.py):
  - it runs the same program: the same config, the same deterministic batch order;
  - it feeds only the rows of each global batch that its own devices hold (`sharding.process_rows`), assembled
    into one global array with `jax.make_array_from_process_local_data`;
  - every process takes part in checkpoints (orbax writes each array's shards from the process that holds them);
  - only process 0 (`is_leader`) writes metrics, TensorBoard events, plots, samples and the progress bar.
"""

from __future__ import annotations

import os

import jax

ENV_FLAG = "JAXFORMER_DISTRIBUTED"


def requested(config) -> bool:
    """Whether `config.distributed` or the JAXFORMER_DISTRIBUTED environment variable asks for multi-host."""
    return bool(config.get("distributed", False)) or os.environ.get(ENV_FLAG, "0").lower() not in ("", "0", "false")


def initialize(config) -> bool:
    """Connects this process to the others (`jax.distributed.initialize`) when `requested(config)`; idempotent.
    Returns whether the run is distributed."""
    if not requested(config):
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"),
            num_processes=_env_int("JAX_NUM_PROCESSES"),
            process_id=_env_int("JAX_PROCESS_ID"),
        )
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ValueError(f"${name}={value!r} must be a non-negative integer (or unset, for jax to detect it).")
    return int(value)


def is_leader() -> bool:
    """True in the process that writes logs and files other than checkpoints (process 0)."""
    return jax.process_index() == 0
