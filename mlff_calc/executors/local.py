"""The default executor: everything in this process, one chunk after another on one device.

The model is loaded once (or the calculator given is used as is) and every chunk
goes through the same task function as on a Ray worker, so results are the same.
There is nothing to retry in-process: a task function's exception fails its job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .base import Executor, error_text
from .chunks import Job, Outcome
from .worker import ModelRecipe, Worker


class LocalExecutor(Executor):
    """Runs jobs in-process. ``threads`` (optional) sets torch's and BLAS threads while it runs."""

    name = "local"

    def __init__(self, *, threads: int | None = None):
        self.threads = threads
        self._workers: dict = {}

    def _worker(self, model) -> Worker:
        key = model if isinstance(model, ModelRecipe) else id(model)
        if key not in self._workers:
            self._workers[key] = Worker(model)
        return self._workers[key]

    def start(self, model) -> dict:
        """Load the model (once) and return its identity."""
        return self._worker(model).identity()

    def run(self, fn: Callable, jobs: Iterable[Job], model, on_outcome: Callable[[Outcome], None], *, progress: bool | None = None, desc: str = "jobs") -> dict:
        from .._runtime import progress_bar, restore_threads, set_threads

        jobs = list(jobs)
        worker = self._worker(model)
        started = time.perf_counter()
        report = {"executor": self.name, "jobs": len(jobs), "failed": 0, "retried": 0, "workers": 1, "restarted_workers": 0}
        previous = set_threads(self.threads)
        try:
            with progress_bar(total=sum(j.n_items for j in jobs), desc=desc, enabled=progress) as bar:
                for job in jobs:
                    t0 = time.perf_counter()
                    try:
                        result, wall, name = worker.run(fn, job.payload)
                        outcome = Outcome(job.key, result=result, worker=name, wall_s=wall)
                    except Exception as exc:  # noqa: BLE001 - the job fails, the run goes on
                        outcome = Outcome(job.key, error=error_text(exc), worker=worker.name, wall_s=time.perf_counter() - t0)
                        report["failed"] += 1
                    on_outcome(outcome)
                    bar.update(job.n_items)
        finally:
            restore_threads(previous)
        report["wall_s"] = time.perf_counter() - started
        return report

    def close(self) -> None:
        self._workers.clear()
