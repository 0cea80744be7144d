"""Physical invariants for every model x layer (CHGNet, M3GNet, small float64 MACE; plain, softened).

- forces = -dE/dx and stress = (1/V) dE/dstrain by central finite differences;
- rigid translation, rotation (forces rotate, stress -> R sigma R^T) and permutation;
- determinism on CPU: the same input twice gives bitwise identical output;
- a short NVE run (Si8, 300 K, 1 fs, 100 steps) conserves energy with and without the layer.

Tolerances follow the model's dtype: float64 (MACE) tight, float32 (CHGNet, M3GNet) loose.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from .helpers import fd_forces, fd_stress

#: per dtype: FD step for forces (Å) and strain, tolerance forces (eV/Å), stress (eV/Å³),
#: invariance tolerances energy (eV), forces (eV/Å), stress (eV/Å³)
TOL = {
    4: dict(h_force=5e-3, h_strain=2e-3, fd_force=1e-2, fd_stress=5e-4, energy=5e-4, force=5e-4, stress=5e-5),
    8: dict(h_force=1e-4, h_strain=1e-5, fd_force=1e-6, fd_stress=1e-7, energy=1e-9, force=1e-9, stress=1e-10),
}
#: NVE drift limit, eV/atom over 100 fs
MAX_DRIFT = 5e-3


def tol(calc) -> dict:
    return TOL[calc.adapter.dtype.itemsize]


def si8(seed=4) -> Atoms:
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def nacl8(seed=5) -> Atoms:
    atoms = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def water_cluster() -> Atoms:
    atoms = molecule("H2O") + molecule("H2O")
    atoms.positions[3:] += [2.8, 0.3, 0.1]
    atoms.rattle(0.05, seed=6)
    return atoms  # no cell, no pbc


def results(calc, atoms: Atoms) -> dict:
    calc.reset()
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress(voigt=False)
    return out


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# --------------------------------------------------------------------------- gradients


def test_forces_are_minus_energy_gradient(any_calc):
    name, calc = any_calc
    t = tol(calc)
    atoms = si8()
    analytic = results(calc, atoms)["forces"]
    numeric = fd_forces(calc, atoms, h=t["h_force"], indices=[0, 5])
    np.testing.assert_allclose(analytic[[0, 5]], numeric, atol=t["fd_force"], err_msg=name)


def test_stress_is_strain_derivative(any_calc):
    name, calc = any_calc
    t = tol(calc)
    atoms = si8()
    analytic = results(calc, atoms)["stress"]
    voigt = analytic[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(voigt, fd_stress(calc, atoms, h=t["h_strain"]), atol=t["fd_stress"], err_msg=name)


# --------------------------------------------------------------------------- symmetries


@pytest.mark.parametrize("make", [nacl8, water_cluster], ids=["nacl8", "water2"])
def test_rigid_translation(any_calc, make):
    name, calc = any_calc
    t = tol(calc)
    atoms = make()
    ref = results(calc, atoms)
    moved = atoms.copy()
    moved.translate([0.37, -1.91, 2.53])
    got = results(calc, moved)
    assert got["energy"] == pytest.approx(ref["energy"], abs=t["energy"]), name
    np.testing.assert_allclose(got["forces"], ref["forces"], atol=t["force"], err_msg=name)
    if "stress" in ref:
        np.testing.assert_allclose(got["stress"], ref["stress"], atol=t["stress"], err_msg=name)


@pytest.mark.parametrize("make", [nacl8, water_cluster], ids=["nacl8", "water2"])
def test_rotation(any_calc, make):
    name, calc = any_calc
    t = tol(calc)
    atoms = make()
    ref = results(calc, atoms)
    rot = random_rotation(7)
    turned = atoms.copy()
    turned.positions = atoms.positions @ rot.T
    if atoms.pbc.all():
        turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    got = results(calc, turned)
    assert got["energy"] == pytest.approx(ref["energy"], abs=t["energy"]), name
    np.testing.assert_allclose(got["forces"], ref["forces"] @ rot.T, atol=t["force"], err_msg=name)
    if "stress" in ref:
        np.testing.assert_allclose(got["stress"], rot @ ref["stress"] @ rot.T, atol=t["stress"], err_msg=name)


@pytest.mark.parametrize("make", [nacl8, water_cluster], ids=["nacl8", "water2"])
def test_permutation(any_calc, make):
    name, calc = any_calc
    t = tol(calc)
    atoms = make()
    ref = results(calc, atoms)
    order = np.random.default_rng(8).permutation(len(atoms))
    got = results(calc, atoms[order])
    assert got["energy"] == pytest.approx(ref["energy"], abs=t["energy"]), name
    np.testing.assert_allclose(got["forces"], ref["forces"][order], atol=t["force"], err_msg=name)
    if "stress" in ref:
        np.testing.assert_allclose(got["stress"], ref["stress"], atol=t["stress"], err_msg=name)


@pytest.mark.parametrize("make", [si8, nacl8, water_cluster], ids=["si8", "nacl8", "water2"])
def test_deterministic_on_cpu(any_calc, make):
    name, calc = any_calc
    first = results(calc, make())
    second = results(calc, make())
    for key, value in first.items():
        assert np.array_equal(np.asarray(value), np.asarray(second[key])), f"{name}: {key} differs between two identical calls"


# --------------------------------------------------------------------------- dynamics

#: drift per model x layer, filled in by test_nve_energy_drift and printed at the end (-s)
DRIFTS: dict[str, float] = {}


def nve_drift(calc, steps=100, timestep_fs=1.0, temperature_K=300.0) -> tuple[float, float]:
    """(final - initial total energy, max |deviation|), both in eV/atom."""
    atoms = si8(seed=11)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(12))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    energies = [atoms.get_total_energy()]
    for _ in range(steps // 10):
        dyn.run(10)
        energies.append(atoms.get_total_energy())
    energies = np.asarray(energies) / len(atoms)
    return float(energies[-1] - energies[0]), float(np.abs(energies - energies[0]).max())


def test_nve_energy_drift(any_calc):
    name, calc = any_calc
    calc.reset()
    drift, spread = nve_drift(calc)
    DRIFTS[name] = drift
    print(f"\nNVE Si8 300 K 100 x 1 fs, {name}: drift {drift:+.2e} eV/atom, max deviation {spread:.2e} eV/atom")
    assert abs(drift) < MAX_DRIFT, f"{name}: energy drifted {drift:.2e} eV/atom in 100 fs"
    assert spread < 2 * MAX_DRIFT, f"{name}: energy fluctuated by {spread:.2e} eV/atom in 100 fs"
    plain = name.partition("+")[0]
    if name != plain and plain in DRIFTS:  # the layer must not make integration noticeably worse
        assert abs(drift) < max(5 * abs(DRIFTS[plain]), 1e-3), f"{name} drift {drift:.2e} vs plain {DRIFTS[plain]:.2e}"
