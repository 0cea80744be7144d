"""The results database: an embedded SQLite file (ASE's ``ase.db``), no server.

One row per (job, structure). ``key = "<job>:<index>"`` is unique: a job is
the hash of the task, its parameters, the model identity and the input
structures, so the same run started again finds its finished rows and skips
them, and another run never mixes with it. Every row holds

- the structure (the input, or the relaxed one for ``relax``) with energy,
  forces and stress as ASE's standard columns when the task gives them;
- key-value pairs: ``key``, ``job``, ``task``, ``index``, ``model``, ``status``
  (``done`` or ``failed``), ``attempts``, ``worker``, ``wall_s`` and the task's
  scalar results (``converged``, ``n_steps``, ``min_frequency``, ``softening``...);
- data: array results, ``error`` (for failed rows) and the model's sha256.

The rows of one chunk are written in one SQLite transaction, so a killed driver
leaves whole chunks or none. Query it from Python (``ResultsDB(path).rows(task="relax")``,
or ``ase.db.connect(path).select("status=failed")``) or the command line
(``mlff-calc db query results.db status=failed``, or ASE's own ``ase db results.db``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigurationError

DONE, FAILED = "done", "failed"
#: results that go to ASE's standard columns (through a SinglePointCalculator)
_STANDARD = ("energy", "forces", "stress")


def item_key(job: str, index: int) -> str:
    return f"{job}:{int(index):07d}"


class ResultsDB:
    """Results of screening jobs in one SQLite file (created on first write)."""

    def __init__(self, path):
        import ase.db

        self.path = Path(path)
        if self.path.suffix != ".db":
            raise ConfigurationError(f"results database {self.path} must end in .db (an SQLite file)")
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                if not fh.read(16).startswith(b"SQLite format 3"):
                    raise ArtifactError(f"{self.path} is not an SQLite results database; use another file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = ase.db.connect(str(self.path), type="db", append=True)
        self._ids: dict[str, dict[str, int]] = {}  # job -> {key: row id}

    # jobs --------------------------------------------------------------------------------

    def register_job(self, job: str, info: dict) -> None:
        """Record what ``job`` is (task, parameters, model, inputs) in the database's metadata."""
        meta = dict(self.db.metadata)
        jobs = dict(meta.get("jobs", {}))
        if job not in jobs:
            jobs[job] = info
            meta["jobs"] = jobs
            self.db.metadata = meta

    def jobs(self) -> dict:
        return dict(self.db.metadata.get("jobs", {}))

    def finished(self, job: str) -> set[int]:
        """Indices of ``job`` with a ``done`` row (failed rows are tried again on a rerun)."""
        return {row.index for row in self.db.select(job=job, status=DONE)}

    # writing -----------------------------------------------------------------------------

    def write_items(self, job: str, task: str, items: list[dict], *, model: dict, structures, attempts: int, worker: str) -> None:
        """Write the items of one chunk in one transaction, replacing earlier rows with the same key."""
        if job not in self._ids:  # one query per job; this process is the only writer
            self._ids[job] = {row.key: row.id for row in self.db.select(job=job)}
        ids = self._ids[job]
        try:
            self._write(job, task, items, ids, model, structures, attempts, worker)
        except BaseException:
            self._ids.pop(job, None)  # the transaction was rolled back: read the ids again next time
            raise

    def _write(self, job, task, items, ids, model, structures, attempts, worker) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator

        with self.db:
            for item in items:
                key = item_key(job, item["index"])
                if key in ids:
                    self.db.delete([ids.pop(key)])
                atoms = (item.get("atoms") or structures[item["index"]]).copy()
                atoms.calc = None
                results = item.get("results") or {}
                standard = {k: results[k] for k in _STANDARD if k in results}
                if standard:
                    atoms.calc = SinglePointCalculator(atoms, **standard)
                kvp = {"key": key, "job": job, "task": task, "index": int(item["index"]), "model": model.get("model_id", ""), "status": DONE if item["ok"] else FAILED, "attempts": int(attempts), "worker": worker or "", "wall_s": float(item.get("wall_s", 0.0))}
                data = {"model_sha256": model.get("sha256", "")}
                for name, value in results.items():
                    if name in _STANDARD:
                        continue
                    if np.ndim(value) == 0:
                        kvp[name] = value.item() if isinstance(value, np.generic) else value
                    else:
                        data[name] = np.asarray(value)
                if not item["ok"]:
                    data["error"] = item.get("error") or "unknown error"
                ids[key] = self.db.write(atoms, key_value_pairs=kvp, data=data)

    # reading -----------------------------------------------------------------------------

    def rows(self, selection=None, **kwargs) -> list:
        """ASE rows matching ``selection`` (ASE query syntax, e.g. ``"status=failed"``) and ``kwargs``, by job then index."""
        try:
            rows = list(self.db.select(selection, **kwargs))
        except (ValueError, KeyError) as exc:
            raise ConfigurationError(f"bad query {selection!r} on {self.path}: {exc}") from exc
        return sorted(rows, key=lambda r: (r.get("job", ""), r.get("index", -1)))

    def count(self, selection=None, **kwargs) -> int:
        return self.db.count(selection, **kwargs)
