"""``mlff-calc demo``: the summary's numbers, its tables and its PNGs (reduced sizes, and once full size)."""

from __future__ import annotations

import json
import math

import pytest
from ase.collections import dcdft
from helpers import SHARED, shared_path
from matplotlib.image import imread

from mlff_calc.cli.main import main
from mlff_calc.cli.options import restore_threads, set_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = set_threads(1)
    yield
    restore_threads(previous)


def run_demo(tmp_path, monkeypatch, *argv) -> dict:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--models", "chgnet", "--out-dir", "demo", *map(str, argv)]) == 0
    return json.loads((tmp_path / "demo" / "demo-summary.json").read_text())


def assert_png(path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def check_physics(results: dict) -> None:
    relax = results["relax"]
    assert relax["Si"]["a_A"] == pytest.approx(5.46, abs=0.02)
    assert relax["Si"]["converged"] and relax["NaCl"]["converged"]
    assert relax["Si"]["spacegroup"].startswith("Fd-3m") and relax["NaCl"]["spacegroup"].startswith("Fm-3m")
    assert 5.6 < relax["NaCl"]["a_A"] < 5.8

    eos = results["eos"]
    assert eos["Si"]["bulk_modulus_pbe_dcdft_GPa"] == dcdft.data["Si"]["wien2k_B"]
    assert eos["Si"]["bulk_modulus_GPa"] == pytest.approx(dcdft.data["Si"]["wien2k_B"], rel=0.2)
    assert eos["NaCl"]["bulk_modulus_pbe_dcdft_GPa"] is None
    assert 10 < eos["NaCl"]["bulk_modulus_GPa"] < 40
    assert eos["Si"]["a0_A"] == pytest.approx(relax["Si"]["a_A"], abs=0.02)

    for name in ("Si", "NaCl"):
        highest = results["phonons"][name]["highest_branch_THz"]
        assert set(highest) == {"Γ", "X", "L"}
        assert all(math.isfinite(v) and v > 0 for v in highest.values()), (name, highest)
        assert not results["phonons"][name]["has_imaginary_modes"]
    si = results["phonons"]["Si"]["highest_branch_THz"]
    assert 11 < si["Γ"] < 15 and 8 < si["X"] < 13  # softened against PBE's 15.1 / 13.4
    if (SHARED / "data" / "phonopy" / "NaCl").is_dir():  # the VASP bands are overlaid and compared
        nacl = results["phonons"]["NaCl"]
        assert nacl["reference"]["highest_branch_THz"]["Γ"] == pytest.approx(4.62, abs=0.02)  # VASP-PBE TO at Γ
        assert "far too soft" in nacl["caveat"] and nacl["highest_branch_THz"]["Γ"] < 2.0
        assert results["phonons"]["Si"]["reference"]["highest_branch_THz"]["X"] == pytest.approx(13.43, abs=0.05)
        assert "caveat" not in results["phonons"]["Si"]
    for name in ("Si", "NaCl"):  # the EOS grid is centred on the model's relaxed volume
        assert eos[name]["relaxed"] and abs(eos[name]["v0_offset_percent"]) < 0.5
        assert eos[name]["fit_rms_eV_per_atom"] < 1e-3
    assert any("B'" in w for w in eos["NaCl"]["warnings"])  # CHGNet's NaCl E(V) gives B' < 1 over ±6 %

    md = results["md"]
    assert len(md["log"]["step"]) == md["n_steps"] // results["sizes"]["md_log_interval"] + 1
    assert abs(md["drift_eV_per_atom_per_ps"]) < 0.01
    assert md["max_abs_drift_eV_per_atom"] < 1e-3
    assert 100 < md["mean_temperature_K"] < 600


def check_layers(tmp_path, data: dict) -> None:
    """The distilled student and the LTAU uncertainty along its MD (both sections must succeed)."""
    results, sizes = data["results"], data["results"]["sizes"]
    student = results["student"]
    assert "error" not in student, student.get("error")
    assert student["teacher"] == "chgnet-0.3.0"
    assert student["speedup"] > 1 and student["speedup"] == pytest.approx(student["teacher_ms"] / student["student_ms"])
    assert math.isfinite(student["test_force_mae_eV_per_A"]) and 0 < student["test_force_mae_eV_per_A"] < 1.0
    assert 1 <= student["epochs_run"] <= sizes["student_epochs"] and student["n_structures"]["test"] > 0
    assert (tmp_path / data["outputs"]["student"] / "error_log.npz").exists()

    uq = results["uncertainty"]
    assert "error" not in uq, uq.get("error")
    trace = uq["forces_uncertainty_max_eV_per_A"]
    assert len(trace) == len(uq["step"]) == sizes["uq_md_steps"] + 1  # the initial state and every step
    assert all(math.isfinite(v) and v > 0 for v in trace)
    assert uq["min_eV_per_A"] == pytest.approx(min(trace)) and uq["max_eV_per_A"] == pytest.approx(max(trace))
    assert uq["min_eV_per_A"] <= uq["mean_eV_per_A"] <= uq["max_eV_per_A"]
    assert uq["threshold_eV_per_A"] == pytest.approx(3 * student["test_force_mae_eV_per_A"])
    assert uq["steps_over_threshold"] == sum(v > uq["threshold_eV_per_A"] for v in trace)
    assert uq["system"] == f"Si{8 * sizes['uq_md_repeat'] ** 3}"
    assert_png(tmp_path / data["outputs"]["uncertainty_plot"])


def test_quick_demo(tmp_path, monkeypatch, capsys):
    data = run_demo(tmp_path, monkeypatch, "--quick")
    results = data["results"]
    assert results["sizes"]["quick"] is True
    assert set(results["timings_s"]) == {"singlepoint", "relax", "eos", "phonons", "md", "student", "uncertainty"}
    assert [r["structure"] for r in results["singlepoint"]["rows"]][:2] == ["Si (diamond, rattled)", "NaCl (rocksalt)"]
    check_physics(results)
    assert data["config"]["threads"] == 1
    assert data["model"]["id"] == "chgnet-0.3.0"
    for key in ("eos_plot", "bands_Si", "bands_NaCl", "md_plot"):
        assert_png(tmp_path / data["outputs"][key])
    out = capsys.readouterr().out
    for title in ("Single points", "Relaxation", "Equation of state", "Phonons", "Molecular dynamics", "B PBE dcdft (GPa)", "Distilled student", "speed-up", "Uncertainty (LTAU"):
        assert title in out
    check_layers(tmp_path, data)


def test_demo_sections_and_softening(tmp_path, monkeypatch, capsys):
    folder = shared_path("data", "phonopy", "NaCl-rd")
    data = run_demo(tmp_path, monkeypatch, "--quick", "--sections", "softening", "--phonopy-disp", folder / "phonopy_disp.yaml", "--force-sets", folder / "FORCE_SETS")
    results = data["results"]
    assert set(results["timings_s"]) == {"softening"}
    soft = results["softening"]
    assert soft["chemical_system"] == "Cl-Na" and soft["n_structures"] == 10
    assert soft["c"] > 1.1 and soft["s"] < 0.9  # CHGNet is softened on NaCl
    assert soft["mae_corrected_eV_per_A"] < soft["mae_eV_per_A"]
    assert soft["frequency_scale"] == pytest.approx(math.sqrt(soft["c"]))
    fit = json.loads((tmp_path / data["outputs"]["softening_fit"]).read_text())
    assert fit["c"] == pytest.approx(soft["c"])
    assert_png(tmp_path / data["outputs"]["softening_parity"])


def test_unknown_section_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--sections", "relax", "speed"]) == 2
    assert "unknown demo section(s) speed" in capsys.readouterr().err
    assert main(["demo", "--sections", "softening"]) == 2
    assert "needs DFT data" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo(tmp_path, monkeypatch):
    data = run_demo(tmp_path, monkeypatch)
    results = data["results"]
    assert results["sizes"]["quick"] is False
    assert results["phonons"]["Si"]["n_atoms_supercell"] == 54
    assert results["md"]["n_atoms"] == 64 and results["md"]["n_steps"] == 200
    check_physics(results)
    check_layers(tmp_path, data)
    assert results["uncertainty"]["system"] == "Si64"
    assert data["wall_time_s"] < 300
