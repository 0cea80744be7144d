"""Phonons on the VASP reference datasets in ../shared: same displacements, same phonopy result.

Reference figures (../shared/README.md), highest branch at Γ / X / L in THz:
VASP-PBE Si 15.11 / 13.43 / 14.33, NaCl (BORN) 4.61 / 5.26 / 6.24;
CHGNet 0.3.0 Si 12.88 / 9.94 / 11.41, NaCl 1.82 / 3.25 / 4.28.
M3GNet-MP-2021.2.8 (matgl 4.1.2, measured here with these tests): Si 10.24 / 10.61 / 10.93, NaCl 4.35 / 4.93 / 5.89.

Every dataset test runs for CHGNet and for M3GNet-MP (the latter skips without ../shared/models).
"""

from __future__ import annotations

import json

import numpy as np
import phonopy
import pytest
from ase import Atoms
from helpers import CountingCalc, shared_path

from mlff_calc.workflows.phonons import FCC_POINTS, Phonons, to_ase_atoms

QPOINTS = list(FCC_POINTS.values())
CASES = {
    "Si": {"vasp": (15.11, 13.43, 14.33), "CHGNet": (12.88, 9.94, 11.41), "M3GNet-MP": (10.24, 10.61, 10.93)},
    "NaCl": {"vasp": (4.61, 5.26, 6.24), "CHGNet": (1.82, 3.25, 4.28), "M3GNet-MP": (4.35, 4.93, 5.89)},
}
MODELS = ["CHGNet", "M3GNet-MP"]


def load_plain(name):
    """The reference loaded with phonopy alone (no mlff_calc code)."""
    folder = shared_path("data", "phonopy", name)
    if name == "Si":
        return phonopy.load(folder / "phonopy_params_Si.yaml", is_nac=False, log_level=0)
    return phonopy.load(folder / "phonopy_disp.yaml", force_sets_filename=folder / "FORCE_SETS", born_filename=folder / "BORN", log_level=0)


def plain_phonopy_with_model(name, calc):
    """Plain phonopy on the reference displacements, forces one structure at a time via atoms.calc."""
    ph = load_plain(name)
    forces = []
    for cell in ph.supercells_with_displacements:
        atoms = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        atoms.calc = calc
        forces.append(atoms.get_forces())
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    ph.run_qpoints(QPOINTS)
    return ph, np.array(forces), np.array(ph.qpoints.frequencies)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    """(name, calculator): CHGNet, and M3GNet-MP-2021.2.8 from ../shared (skipped when absent)."""
    if request.param == "CHGNet":
        return request.param, request.getfixturevalue("calc")
    from mlff_calc.calculator import MLFFCalculator

    return request.param, MLFFCalculator(request.getfixturevalue("m3gnet_adapter"))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, model):
    name = request.param
    model_name, calc = model
    counting = CountingCalc(calc)
    wf = Phonons.from_reference(shared_path("data", "phonopy", name), counting, batch_size=32, progress=False, mesh=(12, 12, 12), band_npoints=31)
    res = wf.run()
    plain, plain_forces, plain_freqs = plain_phonopy_with_model(name, calc)
    return {"name": name, "model": model_name, "wf": wf, "res": res, "counting": counting, "plain": plain, "plain_forces": plain_forces, "plain_freqs": plain_freqs}


def test_same_displaced_supercells_as_reference(case):
    wf, plain = case["wf"], case["plain"]
    ours = wf.displaced_supercells()
    theirs = [to_ase_atoms(c) for c in plain.supercells_with_displacements]
    assert len(ours) == len(theirs) == wf.n_displacements == {"Si": 1, "NaCl": 2}[case["name"]]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
        np.testing.assert_allclose(a.cell.array, b.cell.array, atol=1e-12)
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
    np.testing.assert_array_equal(wf.phonon.supercell_matrix, plain.supercell_matrix)
    np.testing.assert_allclose(wf.phonon.primitive_matrix, plain.primitive_matrix)
    assert (wf.phonon.nac_params is not None) == (case["name"] == "NaCl")


def test_batched_forces_equal_one_by_one(case):
    assert case["counting"].calls == [case["wf"].n_displacements]  # one batched call
    forces, _ = case["wf"].compute_forces()
    np.testing.assert_allclose(forces, case["plain_forces"], atol=2e-5)


def test_reproduces_plain_phonopy_with_the_same_forces(case):
    ours = case["wf"].frequencies_at(QPOINTS)
    np.testing.assert_allclose(ours, case["plain_freqs"], atol=1e-4)


def test_highest_branch_matches_reference_figures(case):
    name, model, wf = case["name"], case["model"], case["wf"]
    ours = wf.highest_branch_at(FCC_POINTS)
    wf.reference.run_qpoints(QPOINTS)
    vasp = wf.reference.qpoints.frequencies.max(axis=1)
    print(
        f"\n{name} highest branch Γ/X/L (THz): {model} {ours['G']:.2f} / {ours['X']:.2f} / {ours['L']:.2f}; VASP-PBE {vasp[0]:.2f} / {vasp[1]:.2f} / {vasp[2]:.2f}",
    )
    # the VASP numbers pin the labels: X = (½,0,½) and L = (½,½,½) in the primitive reciprocal basis
    np.testing.assert_allclose(vasp, CASES[name]["vasp"], atol=0.01)
    np.testing.assert_allclose([ours["G"], ours["X"], ours["L"]], CASES[name][model], atol=0.05)


def test_fcc_qpoints_are_gamma_x_l(case):
    # reciprocal basis (rows, without 2π) of the primitive cell times the conventional a
    primitive = case["wf"].phonon.primitive
    a = np.sqrt(2) * np.linalg.norm(primitive.cell[0])
    recip = np.linalg.inv(primitive.cell).T
    cart = {k: np.sort(np.abs(np.array(q) @ recip * a)) for k, q in FCC_POINTS.items()}
    np.testing.assert_allclose(cart["G"], [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(cart["X"], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(cart["L"], [0.5, 0.5, 0.5], atol=1e-9)


def test_bands_dos_thermal_and_files(case, tmp_path):
    wf, res = case["wf"], case["res"]
    assert res.band_labels[0] in ("$\\Gamma$", "Γ") and len(res.band_distances) == len(res.band_frequencies_THz)
    assert res.max_frequency_THz > 1.0
    n_modes = 3 * len(wf.phonon.primitive)
    assert np.trapezoid(res.dos_states_per_THz, res.dos_frequencies_THz) == pytest.approx(n_modes, rel=0.03)
    k300 = int(np.argmin(np.abs(res.temperatures_K - 300)))
    assert 0 < res.heat_capacity_J_per_K_per_mol[k300] < n_modes * 8.314462618  # below Dulong-Petit (per mol of primitive cells)

    path = wf.write_yaml(tmp_path / "params.yaml")
    again = phonopy.load(path, log_level=0, is_nac=case["name"] == "NaCl")
    again.run_qpoints(QPOINTS)
    np.testing.assert_allclose(again.qpoints.frequencies, wf.frequencies_at(QPOINTS), atol=1e-6)
    png = wf.plot_bands(tmp_path / "bands.png", reference=wf.reference, label=case["model"], reference_label="VASP-PBE")
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(wf.write_summary(tmp_path / "summary.json", points=FCC_POINTS).read_text())
    assert set(data["result"]["highest_branch_THz"]) == {"G", "X", "L"}
    assert wf.write_band_yaml(tmp_path / "band.yaml").exists() and wf.write_thermal_yaml(tmp_path / "thermal.yaml").exists()


def test_from_unit_cell_generates_phonopys_own_displacements():
    """Built from the NaCl unit cell + BORN, the workflow makes the same dataset as phonopy -d --dim 2 2 2."""
    folder = shared_path("data", "phonopy", "NaCl")
    ref = load_plain("NaCl")
    wf = Phonons(to_ase_atoms(ref.unitcell), None, supercell_matrix=[2, 2, 2], displacement=0.01, primitive_matrix="auto", born_file=folder / "BORN")
    assert wf.n_displacements == 2
    for ours, theirs in zip(wf.phonon.dataset["first_atoms"], ref.dataset["first_atoms"]):
        assert ours["number"] == theirs["number"]
        np.testing.assert_allclose(ours["displacement"], theirs["displacement"], atol=1e-10)
    np.testing.assert_allclose(wf.phonon.nac_params["born"], ref.nac_params["born"])
    np.testing.assert_allclose(wf.phonon.nac_params["dielectric"], ref.nac_params["dielectric"])


def test_from_yaml_path_reuses_displacements():
    folder = shared_path("data", "phonopy", "NaCl")
    wf = Phonons.from_phonopy_dataset(folder / "phonopy_disp.yaml", None)
    assert wf.phonon.nac_params is not None  # BORN beside the yaml
    assert "forces" not in wf.phonon.dataset["first_atoms"][0]
    assert wf.n_displacements == 2 and wf.displacement == pytest.approx(0.01)


def test_residual_force_subtraction(calc):
    folder = shared_path("data", "phonopy", "Si")
    counting = CountingCalc(calc)
    wf = Phonons.from_reference(folder, counting, subtract_residual_forces=True, progress=False)
    forces, residual = wf.compute_forces()
    assert counting.calls == [2]  # undisplaced + displaced supercell in one batch
    raw, _ = Phonons.from_reference(folder, calc, progress=False).compute_forces()
    assert residual < 1e-4  # the VASP geometry of diamond Si is (by symmetry) force-free for any model
    np.testing.assert_allclose(forces, raw, atol=2 * residual + 1e-6)


def test_narrow_supercell_warns_and_phonopy_flags_are_not_echoed(calc, caplog, recwarn):
    from ase.build import bulk

    from mlff_calc.workflows.phonons import cell_widths

    a = 5.461
    prim = bulk("Si", "diamond", a)
    np.testing.assert_allclose(cell_widths(prim.cell * 2), 2 * a / np.sqrt(3), rtol=1e-9)  # fcc: (111) planes a/√3 apart
    with caplog.at_level("WARNING", logger="mlff_calc"):
        wf = Phonons(prim, calc, supercell_matrix=[2, 2, 2], mesh=(6, 6, 6), band_npoints=5, progress=False)
        res = wf.run()
    assert res.min_supercell_width_A == pytest.approx(2 * a / np.sqrt(3), rel=1e-6)
    assert len(res.warnings) == 1 and "6.31 Å wide" in res.warnings[0] and "6.31 Å wide" in caplog.text
    assert res.to_dict()["warnings"] == res.warnings and res.n_atoms_supercell == 16
    # phonopy's advice names its own options (--exclude-gamma-acoustic, EXCLUDE_GAMMA_ACOUSTIC); none of it reaches the user
    assert not [w for w in recwarn.list if "gamma" in str(w.message).lower()]
    cube = Phonons(bulk("Si", "diamond", a, cubic=True), None, supercell_matrix=[2, 2, 2])
    assert cube.notes == []  # 10.9 Å wide
    # an fcc mesh of unequal numbers: phonopy's advice ("pass a length-based mesh") becomes ours
    wf.mesh = (6, 6, 4)
    res = wf.run()
    assert any("--mesh 6 6 6" in note for note in res.warnings)
    assert not [w for w in recwarn.list if "length-based" in str(w.message) or "gamma" in str(w.message).lower()]
