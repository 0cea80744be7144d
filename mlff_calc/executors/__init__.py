"""Executors for many-structure jobs: teacher labelling and screening, in-process or on Ray.

One interface (:class:`~mlff_calc.executors.base.Executor`), two engines:

- ``local`` (default): in this process, chunk after chunk on one device;
- ``ray``: warm model workers (Ray actors) on a local cluster started on the fly
  or an existing one (``address=``), GPU workers declaring ``num_gpus``; a dead
  worker's chunks are retried elsewhere (``max_retries``), then reported failed.

Work is cut into chunks by structure size, independently of the engine, so both
give bitwise-identical results on the same device. Results go to an embedded
SQLite results database (:class:`ResultsDB`, ASE's ``ase.db``) or the teacher
label store, chunk by chunk with atomic writes, so a restarted job skips what
is finished and never duplicates an item. Screening itself (:mod:`mlff_calc.screening`)
sits on top of the executors and the methods; ``screen`` is re-exported here::

    from mlff_calc.executors import ModelRecipe, screen
    report = screen(structures, "relax", ModelRecipe("chgnet", device="cpu"), "results.db", executor="ray")
"""

from .base import Executor
from .choose import get_executor
from .chunks import Job, Outcome, make_chunks
from .local import LocalExecutor
from .store import ResultsDB
from .worker import ModelRecipe, Worker

__all__ = ["Executor", "Job", "LocalExecutor", "ModelRecipe", "Outcome", "ResultsDB", "ScreenReport", "Worker", "get_executor", "job_id", "make_chunks", "screen"]


def __getattr__(name):
    if name == "RayExecutor":
        from .ray import RayExecutor

        return RayExecutor
    # screening lives above the executors (mlff_calc.screening); these are its old paths
    if name in ("screen", "ScreenReport", "job_id"):
        from .. import screening

        return getattr(screening, name)
    if name == "tasks":
        from ..screening import tasks

        return tasks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
