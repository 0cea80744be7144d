"""The Ray executor on a local 2-worker cluster: equivalence with local, worker death and retries, restart.

One cluster and one pair of warm workers (module scope) serve every test; starting
them takes ~30 s on 2 busy cores, each replacement worker ~15 s. Skipped, with
the reason, when Ray is missing or cannot start here.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from executors_helpers import rattled_cells

from mlff_calc.executors import Job, ResultsDB, screen

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mlff_calc[ray]')")
pytestmark = pytest.mark.slow  # ~80 s in all, most of it starting the cluster and the workers


@pytest.fixture(scope="module")
def ray_ex(mace_recipe):
    from mlff_calc.executors.ray import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - no shared memory, no free ports, ...
        pytest.skip(f"a local Ray cluster cannot start here: {exc}")
    ex = RayExecutor(workers=2, threads=1, max_retries=2)
    ex.start(mace_recipe)
    yield ex
    ex.close()
    ray.shutdown()


def table(path):
    return {row.index: row for row in ResultsDB(path).rows()}


def assert_bitwise(a, b):
    assert sorted(a) == sorted(b)
    for i in a:
        assert a[i].energy == b[i].energy, i
        assert np.array_equal(a[i].forces, b[i].forces) and np.array_equal(a[i].stress, b[i].stress), i


def test_ray_equals_local_and_direct_bitwise(ray_ex, mace_recipe, mace_adapter, tmp_path):
    cells = rattled_cells(12)
    local = screen(cells, "singlepoint", mace_recipe, tmp_path / "local.db", max_structures=3, progress=False)
    remote = screen(cells, "singlepoint", mace_recipe, tmp_path / "ray.db", executor=ray_ex, max_structures=3, progress=False)
    assert local.job == remote.job and remote.done == 12 and not remote.failed
    rows = table(tmp_path / "ray.db")
    assert_bitwise(table(tmp_path / "local.db"), rows)
    assert len({row.worker for row in rows.values()}) == 2  # both workers took chunks
    direct = mace_adapter.evaluate(cells[3:6], ("energy", "forces", "stress"))
    for i, ref in zip(range(3, 6), direct):
        assert rows[i].energy == ref["energy"] and np.array_equal(rows[i].forces, ref["forces"])


def test_killed_worker_items_are_retried_and_stored_once(ray_ex, mace_recipe, tmp_path, monkeypatch):
    cells = rattled_cells(16, seed=100)
    run, killed = ray_ex.run, []

    def run_and_kill(fn, jobs, model, on_outcome, **kw):
        def hook(outcome):
            on_outcome(outcome)
            if not killed:  # after the first finished chunk, SIGKILL a worker that holds queued chunks
                killed.append(ray_ex.pids[0])
                os.kill(ray_ex.pids[0], signal.SIGKILL)

        return run(fn, jobs, model, hook, **kw)

    monkeypatch.setattr(ray_ex, "run", run_and_kill)
    report = screen(cells, "singlepoint", mace_recipe, tmp_path / "r.db", executor=ray_ex, max_structures=2, progress=False)
    monkeypatch.undo()
    assert report.done == 16 and not report.failed and report.retried_chunks >= 1
    rows = table(tmp_path / "r.db")
    keys = [row.key for row in ResultsDB(tmp_path / "r.db").rows()]
    assert len(keys) == len(set(keys)) == 16
    assert max(row.attempts for row in rows.values()) == 2
    ray_ex.start(mace_recipe)  # waits for a replacement still loading its model
    assert killed[0] not in ray_ex.pids and len(set(ray_ex.pids)) == 2  # the dead worker was replaced
    screen(cells, "singlepoint", mace_recipe, tmp_path / "local.db", max_structures=2, progress=False)
    assert_bitwise(table(tmp_path / "local.db"), rows)


def test_driver_interrupt_then_restart_completes_once(ray_ex, mace_recipe, tmp_path, monkeypatch):
    cells = rattled_cells(10, seed=200)
    run, seen = ray_ex.run, []

    def run_then_die(fn, jobs, model, on_outcome, **kw):
        def hook(outcome):
            on_outcome(outcome)
            seen.append(outcome.key)
            if len(seen) == 2:
                raise KeyboardInterrupt  # the driver dies after writing two chunks

        return run(fn, jobs, model, hook, **kw)

    monkeypatch.setattr(ray_ex, "run", run_then_die)
    with pytest.raises(KeyboardInterrupt):
        screen(cells, "singlepoint", mace_recipe, tmp_path / "r.db", executor=ray_ex, max_structures=2, progress=False)
    monkeypatch.undo()
    assert ResultsDB(tmp_path / "r.db").count() == 4
    report = screen(cells, "singlepoint", mace_recipe, tmp_path / "r.db", executor=ray_ex, max_structures=2, progress=False)
    assert (report.skipped, report.done) == (4, 6)
    keys = [row.key for row in ResultsDB(tmp_path / "r.db").rows()]
    assert len(keys) == len(set(keys)) == 10


def test_task_error_is_not_retried(ray_ex, mace_recipe):
    outcomes = []
    report = ray_ex.run(len, [Job("bad", None)], mace_recipe, outcomes.append, progress=False)  # len(calc, None): TypeError
    assert report["failed"] == 1 and report["retried"] == 0 and outcomes[0].attempts == 1 and "TypeError" in outcomes[0].error


def test_label_store_on_ray_is_bitwise_identical(ray_ex, mace_calc, mace_recipe, tmp_path):
    from mlff_calc.distill import label

    cells = rattled_cells(6, seed=300)
    local = label(cells, mace_calc, tmp_path / "local", chunk_size=2, full_hessian_max_dof=0, n_rows=2, progress=False)
    remote = label(cells, mace_calc, tmp_path / "ray", chunk_size=2, full_hessian_max_dof=0, n_rows=2, executor=ray_ex, model=mace_recipe, progress=False)
    assert remote.complete and len(remote.manifest["chunks"]) == 3
    assert sorted(remote.manifest["chunks"]) == sorted(local.manifest["chunks"])
    mine, theirs = local.records(), remote.records()
    assert len(mine) == len(theirs) == 6 and theirs[4].hessian.shape == (2, 24)
    for a, b in zip(mine, theirs):
        assert a.index == b.index and a.split == b.split and a.energy == b.energy, a.index
        assert np.array_equal(a.forces, b.forces) and np.array_equal(a.stress, b.stress), a.index
        assert np.array_equal(a.hessian_rows, b.hessian_rows) and np.array_equal(a.fixed, b.fixed), a.index
        # Hessian rows: equal to float64 round-off, not bitwise. They come from a double backward
        # pass whose summation order can differ between processes (the rows differed by ~2e-19 on
        # entries of ~1e-1, i.e. ~1e-18 relative, depending on the first model call of the process);
        # rtol 1e-12 is 10^4 above that and 10^6 below any real change of the model or the graph.
        np.testing.assert_allclose(b.hessian, a.hessian, rtol=1e-12, atol=1e-14)


def test_worker_that_always_dies_is_reported_failed(ray_ex, mace_recipe, monkeypatch):
    """Last in the module: its replacement worker need not finish loading."""
    monkeypatch.setattr(ray_ex, "max_retries", 0)
    outcomes = []
    die = lambda calc, payload: os._exit(3)  # pickled by value, so the worker can run it
    report = ray_ex.run(die, [Job("doomed", None)], mace_recipe, outcomes.append, progress=False)
    assert report["failed"] == 1 and report["restarted_workers"] == 1
    [outcome] = outcomes
    assert not outcome.ok and outcome.attempts == 1 and "worker failed 1 time(s)" in outcome.error
