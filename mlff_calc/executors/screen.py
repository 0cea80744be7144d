"""Screening many structures into a results database, on any executor.

``screen(structures, "relax", model, "results.db", executor=...)`` cuts the
structures into chunks (:func:`~mlff_calc.executors.chunks.make_chunks`: by atom
count, independent of the executor), skips the structures the database already
holds as ``done`` for this job, runs the rest and writes each chunk's rows in one
transaction as it finishes. Run it again after a crash and it finishes the job
without repeating or duplicating anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ase import Atoms

from ..errors import ConfigurationError
from .chunks import Job, make_chunks
from .store import ResultsDB
from .tasks import UNITS, params_for, screen_chunk


@dataclass
class ScreenReport:
    """What one call of :func:`screen` did. ``failed`` lists (index, first line of the error)."""

    job: str
    task: str
    n_structures: int
    skipped: int
    done: int
    failed: list[tuple[int, str]] = field(default_factory=list)
    retried_chunks: int = 0
    wall_s: float = 0.0
    executor: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"job": self.job, "task": self.task, "n_structures": self.n_structures, "skipped": self.skipped, "done": self.done, "failed": [list(f) for f in self.failed], "retried_chunks": self.retried_chunks, "wall_s": round(self.wall_s, 3), "executor": self.executor, "model": self.model, "units": UNITS}


def job_id(task: str, params: dict, model: dict, structures: Sequence[Atoms]) -> str:
    """A short hash of everything that determines the results."""
    from ..data.structures import pack_structures, structures_sha256

    text = json.dumps({"task": task, "params": params, "model": model, "structures": structures_sha256(pack_structures(structures))}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_executor(executor=None, **kwargs):
    """An executor from a name (``"local"``, ``"ray"``) and its options, or the executor given."""
    from .base import Executor

    if executor is None or executor == "local":
        from .local import LocalExecutor

        return LocalExecutor(**{k: v for k, v in kwargs.items() if k == "threads"})
    if executor == "ray":
        from .ray import RayExecutor

        return RayExecutor(**kwargs)
    if isinstance(executor, Executor):
        return executor
    raise ConfigurationError(f"unknown executor {executor!r}; use 'local' or 'ray'")


def screen(structures: Sequence[Atoms], task: str, model, db, *, executor=None, params: dict | None = None, max_atoms: int = 512, max_structures: int = 64, progress: bool | None = None) -> ScreenReport:
    """Run ``task`` (``singlepoint``, ``relax``, ``phonons``, ``softening``) on every structure into ``db``.

    ``model``: a :class:`~mlff_calc.executors.worker.ModelRecipe` (any executor) or an
    mlff_calc calculator (local executor; the Ray executor rebuilds it from its
    source when it has no layers). ``db``: a path or :class:`ResultsDB`.
    ``executor``: ``None``/``"local"``, ``"ray"`` or an executor object (kept warm
    for the caller to reuse and close).
    """
    structures = [structures] if isinstance(structures, Atoms) else list(structures)
    if not structures:
        raise ConfigurationError("no structures to screen")
    params = params_for(task, params)
    db = db if isinstance(db, ResultsDB) else ResultsDB(db)
    own = not hasattr(executor, "run")
    ex = get_executor(executor)
    started = time.perf_counter()
    try:
        ident = ex.start(model)
        job = job_id(task, params, ident, structures)
        db.register_job(job, {"task": task, "params": params, "model": ident, "n_structures": len(structures)})
        finished = db.finished(job)
        todo = [i for i in range(len(structures)) if i not in finished]
        chunks = [[i for i in chunk if i not in finished] for chunk in make_chunks([len(a) for a in structures], max_atoms=max_atoms, max_structures=max_structures)]
        jobs = [Job(f"{job}:chunk{c[0]:07d}", {"task": task, "params": params, "indices": c, "structures": [structures[i] for i in c]}, len(c)) for c in chunks if c]
        payloads = {j.key: j.payload for j in jobs}
        report = ScreenReport(job, task, len(structures), len(finished), 0, executor=ex.describe(), model=ident)

        def write(outcome):
            payload = payloads[outcome.key]
            if outcome.ok:
                items = outcome.result
            else:  # the whole chunk failed (its worker died too often, or the task raised)
                items = [{"index": i, "ok": False, "results": {}, "atoms": None, "error": outcome.error, "wall_s": 0.0} for i in payload["indices"]]
            db.write_items(job, task, items, model=ident, structures=structures, attempts=outcome.attempts, worker=outcome.worker)
            for item in items:
                if item["ok"]:
                    report.done += 1
                else:
                    report.failed.append((item["index"], (item["error"] or "").splitlines()[0]))

        run = ex.run(screen_chunk, jobs, model, write, progress=progress, desc=f"screen {task}") if jobs else {"retried": 0}
        report.retried_chunks = run["retried"]
        assert report.done + len(report.failed) == len(todo), "every structure to do is written once"
    finally:
        if own:
            ex.close()
    report.wall_s = time.perf_counter() - started
    return report
