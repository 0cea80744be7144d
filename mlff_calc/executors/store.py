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
leaves whole chunks or none. The database enforces the one row per key (a
unique index on ``key``) and drivers of one job cooperate through claims (table
``mlff_claims``): a driver claims structures before it computes them, skips those
another live driver holds, and takes over the claims of a driver that died (its
process is gone, or it stopped renewing its lease). Query it from Python (``ResultsDB(path).rows(task="relax")``,
or ``ase.db.connect(path).select("status=failed")``) or the command line
(``mlff-calc db query results.db status=failed``, or ASE's own ``ase db results.db``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

from ..artifacts import owner_alive
from ..errors import ArtifactError, ConfigurationError

DONE, FAILED = "done", "failed"
#: results that go to ASE's standard columns (through a SinglePointCalculator)
_STANDARD = ("energy", "forces", "stress")
#: what this module adds to ASE's schema: claims, and one row per key
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS mlff_claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL, finished REAL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS mlff_unique_key ON text_key_values(value) WHERE key = 'key'",
)


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
        # no ASE lock file: SQLite's own lock (released when a process dies) orders the writers,
        # while a driver killed inside ASE's lock would leave a results.db.lock that blocks every later one
        self.db = ase.db.connect(str(self.path), type="db", append=True, use_lock_file=False)
        self._ready = False

    # schema ------------------------------------------------------------------------------

    def _tables(self) -> set[str]:
        """Tables of the file, read without creating or changing anything."""
        if not self.path.is_file() or not self.path.stat().st_size:
            return set()
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
        try:
            return {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"{self.path} cannot be read as an SQLite results database ({exc})") from exc
        finally:
            con.close()

    def _readable(self) -> bool:
        """Whether the file holds a results database yet (reading never writes a schema)."""
        tables = self._tables()
        if tables and "systems" not in tables:
            raise ArtifactError(f"{self.path} is an SQLite file of something else (tables {sorted(tables)[:5]}); use another file name")
        return "systems" in tables

    def _ensure_schema(self) -> None:
        """Create ASE's tables and ours once, under an exclusive lock, so two new drivers never both create them."""
        if self._ready:
            return
        from ase.db.sqlite import index_statements, init_statements

        self._readable()  # refuses a foreign SQLite file before writing into it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("BEGIN EXCLUSIVE")
            if not con.execute("SELECT 1 FROM sqlite_master WHERE name='systems'").fetchone():
                for statement in (*init_statements, *index_statements):
                    con.execute(statement)
            for statement in _SCHEMA:
                con.execute(statement)
            con.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            con.execute("ROLLBACK")
            raise ArtifactError(f"{self.path} holds several rows for one (job, structure) key (written by an older mlff_calc); copy the rows you keep into a new database") from exc
        finally:
            con.close()
        self._ready = True

    def _transaction(self):
        """ASE's connection in a write transaction taken at once (``BEGIN IMMEDIATE``), committed on exit."""
        self._ensure_schema()
        return _Immediate(self.db)

    # jobs --------------------------------------------------------------------------------

    def register_job(self, job: str, info: dict) -> None:
        """Record what ``job`` is (task, parameters, model, inputs) in the database's metadata."""
        with self._transaction() as con:
            meta = _metadata(con)
            if job not in meta.setdefault("jobs", {}):
                meta["jobs"][job] = info
                text = json.dumps(meta)
                if con.execute("UPDATE information SET value=? WHERE name='metadata'", (text,)).rowcount == 0:
                    con.execute("INSERT INTO information VALUES ('metadata', ?)", (text,))
        self.db._metadata = None  # ASE reads it again when asked

    def jobs(self) -> dict:
        if not self._readable():
            return {}
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
        try:
            return dict(_metadata(con).get("jobs", {}))
        finally:
            con.close()

    def finished(self, job: str) -> set[int]:
        """Indices of ``job`` with a ``done`` row (failed rows are tried again on a rerun)."""
        if not self._readable():
            return set()
        return {row.index for row in self.db.select(job=job, status=DONE)}

    # claims ------------------------------------------------------------------------------

    def claim(self, job: str, indices, *, owner: str, since: float, lease_s: float) -> list[int]:
        """Claim the ``indices`` of ``job`` nobody else works on; return those now held by ``owner``.

        Not claimable: a ``done`` row, a live claim of another owner, or a structure
        another driver finished (failed) after ``since`` (this driver's start).
        """
        now = time.time()
        got = []
        with self._transaction() as con:
            status = _status(con, [item_key(job, i) for i in indices])
            claims = {k: (o, e, f) for k, o, e, f in con.execute("SELECT key, owner, expires, finished FROM mlff_claims WHERE key LIKE ?", (f"{job}:%",))}
            for i in indices:
                key = item_key(job, i)
                if status.get(key) == DONE:
                    continue
                if key in claims:
                    other, expires, finished = claims[key]
                    if finished is not None and finished >= since:
                        continue  # tried (and failed) since this driver started
                    if finished is None and other != owner and expires > now and owner_alive(other):
                        continue
                con.execute("INSERT OR REPLACE INTO mlff_claims VALUES (?, ?, ?, NULL)", (key, owner, now + lease_s))
                got.append(int(i))
        return got

    def open_items(self, job: str, indices, *, since: float) -> list[int]:
        """The ``indices`` still being worked on or waiting: not done, not finished by anyone since ``since``."""
        if not self._readable():
            return list(indices)
        with self._transaction() as con:
            status = _status(con, [item_key(job, i) for i in indices])
            finished = {k: f for k, f in con.execute("SELECT key, finished FROM mlff_claims WHERE key LIKE ? AND finished IS NOT NULL", (f"{job}:%",))}
        return [int(i) for i in indices if status.get(item_key(job, i)) != DONE and finished.get(item_key(job, i), -1.0) < since]

    def renew(self, owner: str, lease_s: float) -> None:
        """Extend the lease of ``owner``'s open claims (called by the driver's heartbeat)."""
        with self._transaction() as con:
            con.execute("UPDATE mlff_claims SET expires=? WHERE owner=? AND finished IS NULL", (time.time() + lease_s, owner))

    def release(self, owner: str) -> None:
        """Drop ``owner``'s open claims (a driver that stops early hands its structures back)."""
        with self._transaction() as con:
            con.execute("DELETE FROM mlff_claims WHERE owner=? AND finished IS NULL", (owner,))

    # writing -----------------------------------------------------------------------------

    def write_items(self, job: str, task: str, items: list[dict], *, model: dict, structures, attempts: int, worker: str) -> int:
        """Write the items of one chunk in one transaction; return how many rows it stored.

        A ``failed`` row is replaced; a ``done`` row is kept (another driver stored it
        first), so a key never has two rows (the unique index enforces it).
        """
        from ase.calculators.singlepoint import SinglePointCalculator

        stored = 0
        with self._transaction() as con:
            keys = [item_key(job, item["index"]) for item in items]
            status, ids = _status(con, keys, with_ids=True)
            now = time.time()
            for key, item in zip(keys, items):
                con.execute("UPDATE mlff_claims SET finished=? WHERE key=?", (now, key))
                if status.get(key) == DONE:
                    continue
                atoms = (item.get("atoms") or structures[item["index"]]).copy()
                atoms.calc = None
                results = item.get("results") or {}
                standard = {k: results[k] for k in _STANDARD if k in results}
                if standard:
                    atoms.calc = SinglePointCalculator(atoms, **standard)
                kvp = {
                    "key": key,
                    "job": job,
                    "task": task,
                    "index": int(item["index"]),
                    "model": model.get("model_id", ""),
                    "status": DONE if item["ok"] else FAILED,
                    "attempts": int(attempts),
                    "worker": worker or "",
                    "wall_s": float(item.get("wall_s", 0.0)),
                }
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
                self.db.write(atoms, key_value_pairs=kvp, data=data, id=ids.get(key))
                stored += 1
        return stored

    # reading -----------------------------------------------------------------------------

    def rows(self, selection=None, **kwargs) -> list:
        """ASE rows matching ``selection`` (ASE query syntax, e.g. ``"status=failed"``) and ``kwargs``, by job then index."""
        if not self._readable():
            return []
        try:
            rows = list(self.db.select(selection, **kwargs))
        except (ValueError, KeyError) as exc:
            raise ConfigurationError(f"bad query {selection!r} on {self.path}: {exc}") from exc
        return sorted(rows, key=lambda r: (r.get("job", ""), r.get("index", -1)))

    def count(self, selection=None, **kwargs) -> int:
        return self.db.count(selection, **kwargs) if self._readable() else 0


class _Immediate:
    """``with self.db:`` (ASE's one connection for the block) that begins with ``BEGIN IMMEDIATE``.

    Taking the write lock first means two drivers never both read, then both try to
    write (which SQLite resolves by failing one of them with "database is locked").
    """

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.__enter__()
        try:
            self.db.connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.db.__exit__(*sys.exc_info())
            raise
        return self.db.connection

    def __exit__(self, *exc):
        self.db.__exit__(*exc)


def _metadata(con) -> dict:
    row = con.execute("SELECT value FROM information WHERE name='metadata'").fetchone()
    return json.loads(row[0]) if row else {}


def _status(con, keys, *, with_ids: bool = False):
    """``{key: status}`` (and ``{key: row id}``) of the rows that exist for ``keys``."""
    status, ids = {}, {}
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        query = f"SELECT k.value, k.id, s.value FROM text_key_values k LEFT JOIN text_key_values s ON s.id = k.id AND s.key = 'status' WHERE k.key = 'key' AND k.value IN ({','.join('?' * len(part))})"
        for key, row_id, state in con.execute(query, part):
            status[key], ids[key] = state, row_id
    return (status, ids) if with_ids else status
