"""``mlff-calc db``: read a screening results database (SQLite, ASE's ``ase.db`` format).

    mlff-calc db jobs results.db                      # jobs: task, model, done / failed counts
    mlff-calc db query results.db                     # every row: key, task, index, status, energy, ...
    mlff-calc db query results.db status=failed --columns index,error
    mlff-calc db query results.db task=relax,converged=False --json

The selection is ASE's query syntax (``key=value`` pairs joined by commas,
``<``, ``>``, ...). ASE's own ``ase db results.db`` works on the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .types import COUNT

HELP = "list jobs and query rows of a screening results database"

DEFAULT_COLUMNS = ["job", "index", "task", "status", "formula", "energy", "attempts", "worker", "wall_s"]


def add_arguments(p) -> None:
    steps = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = steps.add_parser("query", help="rows matching a selection")
    q.add_argument("db", type=Path)
    q.add_argument("selection", nargs="?", default=None, help="ASE selection, e.g. 'status=failed' or 'task=relax,converged=False'")
    q.add_argument("--columns", default=",".join(DEFAULT_COLUMNS), help="comma-separated columns (any key, 'formula', 'energy', 'fmax', 'error')")
    q.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    q.add_argument("--limit", type=COUNT, default=None)
    j = steps.add_parser("jobs", help="the jobs in the database with their counts")
    j.add_argument("db", type=Path)


def _value(row, column):
    if column == "formula":
        return row.formula
    if column == "error":
        return (row.data.get("error") or "").splitlines()[0] if row.data.get("error") else ""
    if column == "fmax":
        return row.get("fmax")
    return row.get(column)


def check_database(path, *, new_ok: bool) -> None:
    """Raise ConfigurationError unless ``path`` is an intact ASE SQLite database; opens it read-only, writes nothing.

    ``new_ok``: a missing or empty file is fine (a database about to be created).
    """
    import sqlite3

    from ..errors import ConfigurationError

    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        if new_ok:
            return
        raise ConfigurationError(f"results database {path} {'is empty' if path.exists() else 'does not exist'}")
    if not path.is_file():
        raise ConfigurationError(f"results database {path} is not a file")
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            check = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigurationError(f"results database {path} is not a readable SQLite file ({exc})") from None
    if check != "ok":
        raise ConfigurationError(f"results database {path} is damaged (SQLite quick_check: {check})")
    if "systems" not in tables:
        raise ConfigurationError(f"{path} is an SQLite file but not an ASE database (no 'systems' table)")


def _open(path):
    from ..executors import ResultsDB

    check_database(path, new_ok=False)
    return ResultsDB(path)


def run(args) -> int:
    import sqlite3

    from ..errors import ConfigurationError

    try:
        return _query(args)
    except sqlite3.DatabaseError as exc:
        raise ConfigurationError(f"results database {args.db}: {exc}") from None


def _query(args) -> int:
    db = _open(args.db)
    if args.action == "jobs":
        for job, info in sorted(db.jobs().items()):
            done, failed = db.count(job=job, status="done"), db.count(job=job, status="failed")
            print(f"{job}  {info.get('task', '?'):<12} {info.get('model', {}).get('model_id', '?'):<30} {done:>6} done {failed:>5} failed of {info.get('n_structures', '?')}")
        return 0
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    rows = db.rows(args.selection)[: args.limit]
    if args.json:
        for row in rows:
            print(json.dumps({c: _value(row, c) for c in columns}, default=str))
        return 0
    table = [[("" if _value(r, c) is None else (f"{_value(r, c):.6f}" if isinstance(_value(r, c), float) else str(_value(r, c)))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(t[k]) for t in table)]) for k, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    print(f"{len(rows)} row(s)")
    return 0
