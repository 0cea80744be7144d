"""Screening many structures into a results database, on any executor.

``screen(structures, "relax", model, "results.db", executor=...)`` cuts the
structures into chunks (:func:`~mlff_calc.executors.chunks.make_chunks`: by atom
count, independent of the executor), skips the structures the database already
holds as ``done`` for this job, runs the rest and writes each chunk's rows in one
transaction as it finishes. Run it again after a crash and it finishes the job
without repeating or duplicating anything.

Several drivers may run the same job at once (on one machine or several sharing
the database file): each claims a few chunks at a time in the database, computes
only what it holds, renews its claims while it works, and when nothing is left
to claim waits for the structures others hold, taking over those of a driver
that died. Every structure is computed once and every driver returns when the
job is complete.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ase import Atoms

from ..artifacts import new_owner
from ..errors import ConfigurationError
from ..executors.choose import get_executor
from ..executors.chunks import Job, make_chunks
from ..executors.store import ResultsDB
from .tasks import UNITS, params_for, screen_chunk


@dataclass
class ScreenReport:
    """What one call of :func:`screen` did. ``failed`` lists (index, first line of the error).

    ``skipped``: done before this call; ``done``/``failed``: computed by this call;
    ``by_others``: finished meanwhile by another driver of the same job.
    """

    job: str
    task: str
    n_structures: int
    skipped: int
    done: int
    failed: list[tuple[int, str]] = field(default_factory=list)
    by_others: int = 0
    retried_chunks: int = 0
    wall_s: float = 0.0
    executor: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "job": self.job,
            "task": self.task,
            "n_structures": self.n_structures,
            "skipped": self.skipped,
            "done": self.done,
            "failed": [list(f) for f in self.failed],
            "by_others": self.by_others,
            "retried_chunks": self.retried_chunks,
            "wall_s": round(self.wall_s, 3),
            "executor": self.executor,
            "model": self.model,
            "units": UNITS,
        }


def job_id(task: str, params: dict, model: dict, structures: Sequence[Atoms]) -> str:
    """A short hash of everything that determines the results."""
    from ..data.structures import pack_structures, structures_sha256

    text = json.dumps({"task": task, "params": params, "model": model, "structures": structures_sha256(pack_structures(structures))}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def screen(
    structures: Sequence[Atoms],
    task: str,
    model,
    db,
    *,
    executor=None,
    params: dict | None = None,
    max_atoms: int = 512,
    max_structures: int = 64,
    progress: bool | None = None,
    lease_s: float = 60.0,
    poll_s: float = 0.5,
) -> ScreenReport:
    """Run ``task`` (``singlepoint``, ``relax``, ``phonons``, ``softening``) on every structure into ``db``.

    ``model``: a :class:`~mlff_calc.executors.worker.ModelRecipe` (any executor) or an
    mlff_calc calculator (local executor; the Ray executor rebuilds it from its
    source when it has no layers). ``db``: a path or :class:`ResultsDB`.
    ``executor``: ``None``/``"local"``, ``"ray"`` or an executor object (kept warm
    for the caller to reuse and close). ``lease_s``: how long a claim outlives a
    driver on another host that stopped renewing it; ``poll_s``: how often a driver
    waiting for another one looks at the database.
    """
    from .._runtime import progress_bar

    structures = [structures] if isinstance(structures, Atoms) else list(structures)
    if not structures:
        raise ConfigurationError("no structures to screen")
    if not lease_s > 0 or not poll_s > 0:
        raise ConfigurationError(f"lease_s and poll_s must be positive; got {lease_s} and {poll_s}")
    params = params_for(task, params)
    db = db if isinstance(db, ResultsDB) else ResultsDB(db)
    own = not hasattr(executor, "run")
    ex = get_executor(executor)
    started = time.perf_counter()
    owner, since = new_owner(), time.time()
    heartbeat = None
    try:
        ident = ex.start(model)
        job = job_id(task, params, ident, structures)
        db.register_job(job, {"task": task, "params": params, "model": ident, "n_structures": len(structures)})
        finished = db.finished(job)
        todo = [i for i in range(len(structures)) if i not in finished]
        waiting = [c for c in ([i for i in chunk if i not in finished] for chunk in make_chunks([len(a) for a in structures], max_atoms=max_atoms, max_structures=max_structures)) if c]
        info = ex.describe()
        per_round = max(1, int(info.get("workers", 1)) * int(info.get("depth", 1)))
        report = ScreenReport(job, task, len(structures), len(finished), 0, executor=info, model=ident)
        heartbeat = _Heartbeat(db, owner, lease_s)

        payloads: dict = {}

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
            bar.update(len(items))

        with progress_bar(total=len(todo), desc=f"screen {task}", enabled=progress) as bar:
            while True:
                claimed, rest = _claim_round(db, job, waiting, owner=owner, since=since, lease_s=lease_s, n=per_round)
                if claimed:
                    jobs = [Job(f"{job}:chunk{c[0]:07d}", {"task": task, "params": params, "indices": c, "structures": [structures[i] for i in c]}, len(c)) for c in claimed]
                    payloads = {j.key: j.payload for j in jobs}
                    run = ex.run(screen_chunk, jobs, model, write, progress=False, desc=f"screen {task}")
                    report.retried_chunks += run["retried"]
                    waiting = rest
                    continue
                open_items = db.open_items(job, todo, since=since)
                if not open_items:
                    break
                waiting = _regroup(waiting, open_items)  # held by other live drivers: wait, then take over if they die
                time.sleep(poll_s)
        report.by_others = len(todo) - report.done - len(report.failed)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
            db.release(owner)
        if own:
            ex.close()
    report.wall_s = time.perf_counter() - started
    return report


def _claim_round(db, job, waiting, *, owner, since, lease_s, n):
    """Claim up to ``n`` of the ``waiting`` chunks (the parts nobody else holds); the chunks not claimed stay waiting."""
    claimed, rest = [], []
    for chunk in waiting:
        got = db.claim(job, chunk, owner=owner, since=since, lease_s=lease_s) if len(claimed) < n else []
        if got:
            claimed.append(got)
        left = [i for i in chunk if i not in got]
        if left:
            rest.append(left)
    return claimed, rest


def _regroup(waiting, open_items):
    """The waiting chunks cut down to the structures still open."""
    keep = set(open_items)
    return [c for c in ([i for i in chunk if i in keep] for chunk in waiting) if c]


class _Heartbeat:
    """Renews a driver's claims every ``lease_s / 4`` seconds from a background thread."""

    def __init__(self, db: ResultsDB, owner: str, lease_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(ResultsDB(db.path), owner, lease_s), daemon=True, name="screen-claims")
        self._thread.start()

    def _beat(self, db, owner, lease_s):
        import sqlite3

        while not self._stop.wait(lease_s / 4):
            try:
                db.renew(owner, lease_s)
            except sqlite3.OperationalError:  # busy for a minute: try again at the next beat
                continue

    def stop(self):
        self._stop.set()
        self._thread.join()
