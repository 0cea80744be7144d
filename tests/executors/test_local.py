"""The local executor, chunking, the results database, restarts and the CLI verbs (no Ray needed)."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from executors_helpers import rattled_cells

from mlff_calc.executors import ResultsDB, make_chunks, screen
from mlff_calc.executors import tasks as task_module


def rows_by_index(path):
    rows = ResultsDB(path).rows()
    return {row.index: row for row in rows}


def test_chunks_cut_by_atoms_and_count():
    assert make_chunks([8] * 5, max_atoms=16, max_structures=64) == [[0, 1], [2, 3], [4]]
    assert make_chunks([8] * 5, max_atoms=1000, max_structures=3) == [[0, 1, 2], [3, 4]]
    # a structure bigger than the budget gets a chunk of its own; order is kept
    assert make_chunks([4, 100, 4, 4], max_atoms=10) == [[0], [1], [2, 3]]
    with pytest.raises(ValueError):
        make_chunks([1], max_atoms=0)


def test_singlepoint_matches_batched_evaluate_bitwise(mace_calc, mace_adapter, tmp_path):
    cells = rattled_cells(7)
    report = screen(cells, "singlepoint", mace_calc, tmp_path / "r.db", max_atoms=24, progress=False)
    assert (report.done, report.skipped, report.failed) == (7, 0, [])
    rows = rows_by_index(tmp_path / "r.db")
    assert sorted(rows) == list(range(7))
    for chunk in make_chunks([8] * 7, max_atoms=24):
        direct = mace_adapter.evaluate([cells[i] for i in chunk], ("energy", "forces", "stress"))
        for i, ref in zip(chunk, direct):
            assert rows[i].energy == ref["energy"]
            assert np.array_equal(rows[i].forces, ref["forces"]) and np.array_equal(rows[i].stress, ref["stress"])
            assert rows[i].status == "done" and rows[i].attempts == 1 and rows[i].model.startswith("mace:")
    single = mace_adapter.evaluate([cells[3]], ("energy", "forces"))[0]
    np.testing.assert_allclose(rows[3].forces, single["forces"], atol=1e-10)


def test_restart_after_crash_skips_finished_and_never_duplicates(mace_calc, tmp_path, monkeypatch):
    cells = rattled_cells(6, seed=10)
    db = tmp_path / "r.db"
    real = task_module._singlepoint
    calls = []

    def crash_on_third(calc, structures, indices):
        calls.append(list(indices))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies mid-job
        return real(calc, structures, indices)

    monkeypatch.setattr(task_module, "_singlepoint", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        screen(cells, "singlepoint", mace_calc, db, max_structures=2, progress=False)
    assert sorted(rows_by_index(db)) == [0, 1, 2, 3]  # two whole chunks written
    monkeypatch.setattr(task_module, "_singlepoint", real)
    report = screen(cells, "singlepoint", mace_calc, db, max_structures=2, progress=False)
    assert (report.skipped, report.done) == (4, 2)
    keys = [row.key for row in ResultsDB(db).rows()]
    assert len(keys) == len(set(keys)) == 6
    again = screen(cells, "singlepoint", mace_calc, db, max_structures=2, progress=False)
    assert (again.skipped, again.done) == (6, 0) and ResultsDB(db).count() == 6


def test_bad_structure_fails_alone_with_its_error(mace_calc, mace_adapter, tmp_path):
    cells = rattled_cells(3, seed=20)
    cells[1].positions[1] = cells[1].positions[0] + [0.1, 0, 0]  # overlapping atoms
    report = screen(cells, "singlepoint", mace_calc, tmp_path / "r.db", progress=False)
    assert report.done == 2 and [i for i, _ in report.failed] == [1]
    rows = rows_by_index(tmp_path / "r.db")
    assert rows[1].status == "failed" and "InvalidStructureError" in rows[1].data["error"]
    ref = mace_adapter.evaluate([cells[2]], ("energy", "forces", "stress"))[0]
    assert rows[2].energy == pytest.approx(ref["energy"], abs=1e-12)
    # a rerun tries the failed structure again and replaces its row rather than adding one
    again = screen(cells, "singlepoint", mace_calc, tmp_path / "r.db", progress=False)
    assert again.skipped == 2 and len(again.failed) == 1 and ResultsDB(tmp_path / "r.db").count() == 3


def test_relax_and_softening_tasks(mace_calc, mace_adapter, tmp_path):
    cells = rattled_cells(2, seed=30)
    report = screen(cells, "relax", mace_calc, tmp_path / "r.db", params={"fmax_eV_per_A": 0.05, "max_steps": 300, "relax_cell": False}, progress=False)
    assert report.done == 2
    for i, row in rows_by_index(tmp_path / "r.db").items():
        assert row.converged and row.max_force < 0.05
        assert row.energy < mace_adapter.evaluate([cells[i]], ("energy",))[0]["energy"]
        assert np.abs(row.toatoms().positions - cells[i].positions).max() > 1e-3  # the relaxed structure is stored
    # DFT forces 0.8x the model's: the model looks 1/0.8 = 1.25x too stiff
    for atoms in cells:
        atoms.arrays["dft_forces"] = 0.8 * mace_adapter.evaluate([atoms], ("forces",))[0]["forces"]
    screen(cells, "softening", mace_calc, tmp_path / "s.db", progress=False)
    for row in rows_by_index(tmp_path / "s.db").values():
        assert row.softening == pytest.approx(1.25, rel=1e-9) and row.cmae == pytest.approx(0.0, abs=1e-9)


def test_label_through_local_executor_is_bitwise_identical(mace_calc, tmp_path):
    from mlff_calc.distill import label

    cells = rattled_cells(5, seed=40)
    plain = label(cells, mace_calc, tmp_path / "a", chunk_size=2, hessian_splits=(), progress=False)
    local = label(cells, mace_calc, tmp_path / "b", chunk_size=2, hessian_splits=(), executor="local", progress=False)
    assert plain.manifest["chunks"] == local.manifest["chunks"]  # same chunk bytes, same hashes


@pytest.fixture
def cli_logger():
    """main() attaches a handler to pytest's captured stderr; take it off afterwards."""
    import logging

    logger = logging.getLogger("mlff_calc")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_cli_screen_and_db_query(mace_small_path, tmp_path, capsys, cli_logger):
    from mlff_calc.cli.main import main

    frames = tmp_path / "frames.extxyz"
    ase.io.write(frames, rattled_cells(3, seed=50))
    db = tmp_path / "out.db"
    args = ["screen", "singlepoint", str(frames), "--model", str(mace_small_path), "--device", "cpu", "--dtype", "float64", "--threads", "1", "--db", str(db), "--out-dir", str(tmp_path / "o")]
    assert main(args) == 0
    assert "3 done" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 done, 3 already done" in capsys.readouterr().out
    assert main(["db", "query", str(db), "status=done", "--json", "--columns", "index,status,energy"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and all(isinstance(r["energy"], float) for r in rows)
    assert main(["db", "jobs", str(db)]) == 0
    assert "3 done" in capsys.readouterr().out
    assert main(["db", "query", str(tmp_path / "none.db")]) == 2
    summary = json.loads((tmp_path / "o" / "screen-singlepoint-summary.json").read_text())
    assert summary["results"]["n_structures"] == 3


def test_phonons_task_matches_the_workflow(chgnet_calc, tmp_path):
    from helpers import si8

    from mlff_calc.workflows import Phonons

    cell = si8()
    params = {"supercell": [1, 1, 1], "displacement": 0.01, "mesh": [4, 4, 4]}
    report = screen([cell], "phonons", chgnet_calc, tmp_path / "p.db", params=params, progress=False)
    assert report.done == 1
    row = rows_by_index(tmp_path / "p.db")[0]
    ref = Phonons(cell, chgnet_calc, supercell_matrix=[1, 1, 1], displacement=0.01, mesh=[4, 4, 4], band_npoints=11, progress=False).run()
    assert row.max_frequency == pytest.approx(ref.max_frequency_THz, rel=1e-9) and 10.0 < row.max_frequency < 20.0  # Si optical mode ~15 THz
    assert row.n_displacements == ref.n_displacements and row.data["dos"].shape == ref.dos_states_per_THz.shape


def test_unknown_task_and_parameters_are_refused(mace_calc, tmp_path):
    from mlff_calc.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown screening task"):
        screen(rattled_cells(1), "anneal", mace_calc, tmp_path / "r.db")
    with pytest.raises(ConfigurationError, match="takes no parameter"):
        screen(rattled_cells(1), "relax", mace_calc, tmp_path / "r.db", params={"fmax": 0.1})
    with pytest.raises(ConfigurationError, match="must end in .db"):
        screen(rattled_cells(1), "singlepoint", mace_calc, tmp_path / "r.sqlite")
