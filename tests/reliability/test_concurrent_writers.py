"""Two processes writing one results database at once: one row per (job, structure), both finish.

The drivers are real processes (``python -c`` children) started together on a
database that does not exist yet, so they also race to create its schema. They
screen with the small float64 MACE on one thread each.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from helpers import si8

import mlff_calc
from mlff_calc.errors import ArtifactError
from mlff_calc.executors import ResultsDB, screen
from mlff_calc.executors.store import item_key

from .helpers import alarm

ROOT = Path(mlff_calc.__file__).resolve().parents[1]

#: a driver: load the model, say it is ready, wait for "go", screen, print the report
DRIVER = """
import json, pathlib, sys, time
import torch
torch.set_num_threads(1)
import ase.io, mlff_calc
from mlff_calc.executors import screen
folder, name, model = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
calc = mlff_calc.load(model, device="cpu", dtype="float64")
cells = ase.io.read(folder / "cells.extxyz", ":")
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
report = screen(cells, "singlepoint", calc, folder / "r.db", max_structures=1, progress=False)
print("REPORT " + json.dumps(report.to_dict()))
"""


def cells(n: int, seed: int = 40):
    out = []
    for k in range(n):
        atoms = si8(5.43 + 0.01 * (k % 4))
        atoms.rattle(0.05, seed=seed + k)
        out.append(atoms)
    return out


def start_drivers(folder: Path, model: Path, n: int) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(k), str(model)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(n)]
    deadline = time.time() + 240
    while not all((folder / f"ready-{k}").exists() for k in range(n)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (folder / "go").touch()
    return procs


def reports(procs) -> list[dict]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(next(line for line in stdout.splitlines() if line.startswith("REPORT "))[7:]))
    return out


@pytest.mark.slow
def test_two_drivers_of_one_job_store_one_row_per_structure_and_both_finish(tmp_path, mace_small_path, mace_adapter):
    structures = cells(16)
    ase.io.write(tmp_path / "cells.extxyz", structures)
    done = reports(start_drivers(tmp_path, mace_small_path, 2))
    rows = ResultsDB(tmp_path / "r.db").rows()
    keys = [row.key for row in rows]
    assert len(keys) == len(set(keys)) == 16 and {row.status for row in rows} == {"done"}
    # each structure computed by exactly one driver; each driver saw the other's share
    assert done[0]["job"] == done[1]["job"] and done[0]["done"] + done[1]["done"] == 16
    assert (done[0].get("by_others"), done[1].get("by_others")) == (done[1]["done"], done[0]["done"])
    assert done[0]["failed"] == done[1]["failed"] == []
    assert len({row.worker for row in rows}) >= 1
    read_back = ase.io.read(tmp_path / "cells.extxyz", ":")
    reference = mace_adapter.evaluate(read_back, ("energy", "forces"))
    for row in rows:
        assert row.energy == pytest.approx(reference[row.index]["energy"], rel=1e-10)
        np.testing.assert_allclose(row.forces, reference[row.index]["forces"], atol=1e-9)
    # a third run finds the job complete
    again = screen(read_back, "singlepoint", mace_adapter_calc(mace_adapter), tmp_path / "r.db", max_structures=1, progress=False)
    assert (again.skipped, again.done, again.by_others) == (16, 0, 0)


def mace_adapter_calc(adapter):
    from mlff_calc.calculator import MLFFCalculator

    return MLFFCalculator(adapter)


def test_the_database_refuses_a_second_row_for_one_key(tmp_path, mace_adapter):
    path = tmp_path / "r.db"
    screen(cells(2), "singlepoint", mace_adapter_calc(mace_adapter), path, progress=False)
    row = ResultsDB(path).rows()[0]
    with pytest.raises(sqlite3.IntegrityError):
        ase.db.connect(str(path)).write(row.toatoms(), key_value_pairs={"key": row.key, "job": row.job, "index": row.index, "status": "done"})
    assert ResultsDB(path).count() == 2


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim_all(path: Path, job: str, n: int, owner: str, expires: float) -> None:
    con = sqlite3.connect(path)
    with con:
        con.executemany("INSERT OR REPLACE INTO mlff_claims VALUES (?, ?, ?, NULL)", [(item_key(job, i), owner, expires) for i in range(n)])
    con.close()


@pytest.mark.parametrize("holder", ["dead process here", "expired lease elsewhere"])
def test_claims_of_a_driver_that_died_are_taken_over(tmp_path, mace_adapter, holder):
    structures, path = cells(3, seed=60), tmp_path / "r.db"
    calc = mace_adapter_calc(mace_adapter)
    first = screen(structures[:1], "singlepoint", calc, path, progress=False)  # creates the schema
    from mlff_calc.screening.screen import job_id
    from mlff_calc.screening.tasks import params_for

    job = job_id("singlepoint", params_for("singlepoint", None), first.model, structures)
    if holder == "dead process here":
        claim_all(path, job, 3, f"{socket.gethostname()}:{dead_pid()}:dead", time.time() + 3600)
    else:
        claim_all(path, job, 3, "another-host:1:gone", time.time() + 1.0)
    started = time.perf_counter()
    report = screen(structures, "singlepoint", calc, path, progress=False, poll_s=0.05)
    assert (report.done, report.by_others, report.failed) == (3, 0, [])
    if holder == "expired lease elsewhere":
        assert time.perf_counter() - started > 0.5  # it waited for the lease to run out
    assert ResultsDB(path).count(job=job, status="done") == 3


def test_a_live_driver_elsewhere_is_waited_for(tmp_path, mace_adapter):
    """A claim renewed by another host's driver is not taken: this driver waits for its rows."""
    import threading

    structures, path = cells(2, seed=70), tmp_path / "r.db"
    calc = mace_adapter_calc(mace_adapter)
    first = screen(structures[:1], "singlepoint", calc, path, progress=False)
    from mlff_calc.screening.screen import job_id
    from mlff_calc.screening.tasks import params_for

    job = job_id("singlepoint", params_for("singlepoint", None), first.model, structures)
    claim_all(path, job, 2, "another-host:1:alive", time.time() + 3600)

    results = mace_adapter.evaluate(structures, ("energy", "forces"))
    items = [{"index": i, "ok": True, "results": {"energy": r["energy"], "forces": r["forces"]}, "atoms": None, "wall_s": 0.0} for i, r in enumerate(results)]
    errors = []

    def other_driver_finishes():
        time.sleep(1.0)
        try:
            ResultsDB(path).write_items(job, "singlepoint", items, model=first.model, structures=structures, attempts=1, worker="another-host:1")
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=other_driver_finishes)
    thread.start()
    with alarm(60):
        report = screen(structures, "singlepoint", calc, path, progress=False, poll_s=0.05)
    thread.join()
    assert errors == []
    assert (report.done, report.by_others) == (0, 2)
    assert {row.worker for row in ResultsDB(path).rows(job=job)} == {"another-host:1"}


def test_reading_never_writes_a_schema(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    db = ResultsDB(empty)
    assert (db.rows(), db.jobs(), db.count(), db.finished("x")) == ([], {}, 0, set())
    assert empty.stat().st_size == 0
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE customers (name TEXT)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    with pytest.raises(ArtifactError, match="something else"):
        ResultsDB(foreign).rows()
    with pytest.raises(ArtifactError, match="something else"):
        ResultsDB(foreign).register_job("j", {})
    assert foreign.read_bytes() == before
