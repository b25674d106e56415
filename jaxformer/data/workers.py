"""The worker processes of `jaxformer prepare`: jobs run in a process pool, and their progress bars.

    with WorkerPool(workers) as pool:
        for i, result in pool.run(fn, jobs):        # fn(*jobs[i]), yielded as each finishes
            ...

The pool is started with "spawn", never fork: the parent may have imported jax, whose threads a forked child would
inherit in an unknown state. So a script that prepares a corpus needs the usual `if __name__ == "__main__":`
guard, and `fn` must be a module-level function (or a method of a picklable object) that the workers can import.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which lets the jobs in flight finish and cancels the rest."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerPool:
    """Runs jobs in a process pool ("spawn"), or in this process when `workers` is 1 (or there is a single job).
    The pool starts on first use and serves every pass until `close()` (or the end of a `with` block)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def run(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """Yields (job index, fn(*job)) as the jobs finish. On an error or Ctrl-C the jobs not started are cancelled
        and those in flight finish (a shard they write is kept for a rerun) before it is raised."""
        if self.workers == 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                yield i, fn(*job)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        futures = {self._pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)  # the shards in flight finish (and are kept for a rerun)
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "B", initial: int = 0):
    """A tqdm bar on stderr (bytes counted in KiB, MiB, ...), disabled unless `enabled`."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
        disable=not enabled, file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
