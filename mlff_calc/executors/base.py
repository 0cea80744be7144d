"""The executor interface shared by the local and the Ray executors.

``executor.run(fn, jobs, model, on_outcome)`` runs the task function
``fn(calc, payload)`` on every job's payload with a calculator loaded from
``model`` (a :class:`~mlff_calc.executors.worker.ModelRecipe`, or a calculator
for the local executor) and calls ``on_outcome(outcome)`` in the calling process
as each job finishes, in completion order. The caller writes results there (the
store or results database), so every finished job is on disk before the next
one is reported. ``fn`` must be a module-level function (Ray pickles it by name).

An exception raised by ``fn`` is a deterministic failure of that job: it is
reported once (``outcome.error``), not retried. A worker that dies (process
killed, node lost) has its jobs retried on another worker up to ``max_retries``
times; after that they are reported as failed with the last error.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable

from .chunks import Job, Outcome


class Executor:
    """Base class: a name, ``run`` and ``close`` (also as a context manager)."""

    name = "base"

    def start(self, model) -> dict:
        """Load the model on the workers (kept warm) and return its identity (model id, sha256, layers, dtype)."""
        raise NotImplementedError

    def run(self, fn: Callable, jobs: Iterable[Job], model, on_outcome: Callable[[Outcome], None], *, progress: bool | None = None, desc: str = "jobs") -> dict:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (and a cluster this executor started)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> dict:
        return {"executor": self.name}


def error_text(exc: BaseException) -> str:
    """``Type: message`` and the last lines of the traceback, for the results database."""
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"
