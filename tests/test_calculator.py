"""The ASE calculator: physics by finite differences, symmetry, caching, bad input."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from helpers import fd_forces, fd_stress, rattled_si

import mlff_calc
from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import InvalidStructureError, MLFFError, UnsupportedElementError


@pytest.fixture(scope="module")
def calc(chgnet_adapter):
    return MLFFCalculator(chgnet_adapter)


@pytest.fixture(scope="module")
def calc64(mace_adapter):
    return MLFFCalculator(mace_adapter)


def si8(seed=4):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def test_forces_are_minus_energy_gradient_float64(calc64):
    atoms = si8()
    atoms.calc = calc64
    np.testing.assert_allclose(atoms.get_forces()[:3], fd_forces(calc64, atoms, h=1e-4, indices=range(3)), atol=1e-6)


def test_stress_is_strain_derivative_float64(calc64):
    atoms = si8()
    atoms.calc = calc64
    np.testing.assert_allclose(atoms.get_stress(), fd_stress(calc64, atoms, h=1e-5), atol=1e-7)


def test_forces_and_stress_by_fd_chgnet_float32(calc):
    atoms = si8()
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces()[:2], fd_forces(calc, atoms, h=5e-3, indices=range(2)), atol=1e-2)
    np.testing.assert_allclose(atoms.get_stress(), fd_stress(calc, atoms, h=2e-3), atol=1e-3)


def test_translation_rotation_permutation(calc):
    atoms = rattled_si(1)
    atoms.calc = calc
    e0, f0, s0 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)

    moved = atoms.copy()
    moved.translate([0.3, -1.7, 2.2])
    moved.positions[0] += atoms.cell[0]  # a whole lattice vector: the same crystal
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(e0, abs=2e-4)
    np.testing.assert_allclose(moved.get_forces(), f0, atol=2e-4)

    rot = atoms.copy()
    rot.rotate(37, "x", rotate_cell=True)
    rot.rotate(-21, "z", rotate_cell=True)
    rot.calc = calc
    R = np.linalg.solve(atoms.cell.array, rot.cell.array).T  # row vectors: x' = R x
    assert rot.get_potential_energy() == pytest.approx(e0, abs=2e-4)
    np.testing.assert_allclose(rot.get_forces(), f0 @ R.T, atol=5e-4)
    np.testing.assert_allclose(rot.get_stress(voigt=False), R @ s0 @ R.T, atol=5e-6)

    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.calc = calc
    assert shuffled.get_potential_energy() == pytest.approx(e0, abs=2e-4)
    np.testing.assert_allclose(shuffled.get_forces(), f0[perm], atol=2e-4)


def test_caching_and_results_are_float64(calc):
    atoms = rattled_si(1)
    atoms.calc = calc
    e = atoms.get_potential_energy()
    assert atoms.get_potential_energy() == e
    assert atoms.get_forces().dtype == np.float64 and atoms.get_stress().shape == (6,)
    assert atoms.get_potential_energies().sum() == pytest.approx(e, abs=1e-3)
    atoms.positions[0, 0] += 0.05
    assert atoms.get_potential_energy() != e


def test_molecule_without_cell(calc):
    mol = molecule("CH4")
    mol.calc = calc
    assert np.isfinite(mol.get_potential_energy())
    assert abs(mol.get_forces().sum(axis=0)).max() < 1e-4  # no net force on an isolated molecule


def test_each_instance_has_its_own_property_list(chgnet_adapter):
    from ase.calculators.calculator import BaseCalculator

    before = list(BaseCalculator.implemented_properties)
    a, b = MLFFCalculator(chgnet_adapter), MLFFCalculator(chgnet_adapter)
    assert a.implemented_properties is not b.implemented_properties
    assert BaseCalculator.implemented_properties == before


@pytest.mark.parametrize(
    "atoms, match",
    [
        (Atoms(), "no atoms"),
        (Atoms("Si2", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=[5, 5, 5], pbc=True), "NaN"),
        (Atoms("Si2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[5, 0, 0], [0, 5, 0], [np.inf, 0, 5]], pbc=True), "cell"),
        (Atoms("Si2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=[5, 5, 5], pbc=True), "closer than"),
        (Atoms("Si2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[5, 0, 0], [0, 5, 0], [0, 0, 0]], pbc=True), "zero length"),
    ],
)
def test_bad_structures_raise_project_error(calc, atoms, match):
    atoms.calc = calc
    with pytest.raises(InvalidStructureError, match=match):
        atoms.get_potential_energy()


def test_unsupported_element_names_it(calc64):
    atoms = Atoms("SiAu", positions=[[0, 0, 0], [2, 0, 0]], cell=[6, 6, 6], pbc=True)
    atoms.calc = calc64
    with pytest.raises(UnsupportedElementError, match="Au"):
        atoms.get_potential_energy()


def test_stress_of_non_periodic_structure_is_an_error(calc):
    mol = molecule("H2O")
    mol.calc = calc
    with pytest.raises(InvalidStructureError, match="periodic in all three"):
        mol.get_stress()


def test_min_distance_opt_out(chgnet_adapter):
    atoms = Atoms("Si2", positions=[[0, 0, 0], [0.4, 0, 0]], cell=[8, 8, 8], pbc=True)
    atoms.calc = MLFFCalculator(chgnet_adapter, min_distance=None)
    assert np.isfinite(atoms.get_potential_energy())


def test_unknown_property(calc):
    atoms = rattled_si(1)
    atoms.calc = calc
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError):  # (magmoms, asked here before, are CHGNet's own now)
        calc.get_property("dipole", atoms)


@pytest.mark.parametrize("model, match", [("no-such-model", "neither a known model"), ("/nonexistent/path.model", "neither a known model")])
def test_bad_model_names(model, match):
    with pytest.raises(MLFFError, match=match):
        mlff_calc.load(model)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "junk.txt"
    path.write_text("hello")
    with pytest.raises(MLFFError, match="cannot tell which model family"):
        mlff_calc.load(path)


def test_missing_mace_weights_fail_fast_with_instructions(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("MLFF_CALC_MODEL_DIR", str(tmp_path))
    t = time.perf_counter()
    with pytest.raises(MLFFError) as info:
        mlff_calc.load("mace-mp-0-medium")
    assert time.perf_counter() - t < 1.0  # no download attempt
    msg = str(info.value)
    assert "2023-12-03-mace-128-L1_epoch-199.model" in msg and str(tmp_path) in msg and "MLFF_CALC_MODEL_DIR" in msg


def test_batched_equals_single(calc):
    structures = [rattled_si(1, seed=s) for s in range(3)] + [bulk("NaCl", "rocksalt", 5.6)]
    batched = calc.evaluate(structures, ("energy", "forces", "stress"))
    for atoms, res in zip(structures, batched):
        single = calc.evaluate([atoms], ("energy", "forces", "stress"))[0]
        assert res["energy"] == pytest.approx(single["energy"], abs=2e-4)
        np.testing.assert_allclose(res["forces"], single["forces"], atol=2e-4)
        np.testing.assert_allclose(res["stress"], single["stress"], atol=2e-6)


def test_hessian_autograd_matches_fd_and_sign(calc):
    atoms = si8()
    h_auto = calc.get_hessian(atoms, rows=[0, 4, 11], method="autograd")
    h_fd = calc.get_hessian(atoms, rows=[0, 4, 11], method="fd")
    np.testing.assert_allclose(h_auto, h_fd, atol=0.05)
    # dF/dx = -H: displacing an atom along +x pulls it back (positive diagonal)
    assert h_auto[0, 0] > 0


def test_cpu_worker_pool_equals_single_calls(chgnet_adapter):
    structures = [rattled_si(1, seed=s) for s in range(5)]
    props = ("energy", "forces", "stress", "descriptors")
    pooled = chgnet_adapter.evaluate(structures, props, workers=2)
    for atoms, res in zip(structures, pooled):
        single = chgnet_adapter.evaluate([atoms], props)[0]
        for key in ("forces", "stress", "descriptors"):
            np.testing.assert_array_equal(res[key], single[key])
        assert res["energy"] == single["energy"]
