"""Relax: cell + positions to the model's own lattice constant, FixSymmetry, output files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import spglib
from ase.build import bulk
from ase.io import read

from mlff_calc.errors import ConfigurationError
from mlff_calc.workflows.relax import Relax


@pytest.fixture(scope="module")
def model_a0(calc):
    """CHGNet's lattice constant of diamond Si from relaxing the perfect cubic cell tightly."""
    res = Relax(bulk("Si", "diamond", 5.43, cubic=True), calc, optimizer="LBFGS", fmax_eV_per_A=2e-4, max_steps=100, progress=False).run()
    assert res.converged
    lp = res.lattice_parameters
    assert np.allclose([lp["a"], lp["b"], lp["c"]], lp["a"], atol=1e-5)
    assert np.abs(res.stress_GPa[:3]).max() < 0.01
    print(f"\nCHGNet Si lattice constant (perfect cell relaxed): {lp['a']:.5f} Å; E = {res.energy / 8:.6f} eV/atom")
    return lp["a"], res.energy / 8


def spacegroup(atoms, symprec):
    return spglib.get_spacegroup((atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)


def test_rattled_strained_cell_relaxes_to_model_lattice_constant(calc, model_a0, tmp_path):
    a0, e0_per_atom = model_a0
    atoms = bulk("Si", "diamond", 5.43 * 1.02, cubic=True)
    atoms.rattle(0.05, seed=1)
    start = atoms.copy()
    traj = tmp_path / "relax.extxyz"
    wf = Relax(atoms, calc, optimizer="LBFGS", fmax_eV_per_A=1e-3, max_steps=300, trajectory=traj, prefix=tmp_path / "si", progress=False)
    assert wf.output_files["trajectory"] == traj
    res = wf.run()

    assert res.converged and res.max_force_eV_per_A <= 1e-3
    lp = res.lattice_parameters
    print(f"\nrattled + 2% strained Si8 -> a, b, c = {lp['a']:.5f}, {lp['b']:.5f}, {lp['c']:.5f} Å in {res.n_steps} steps (model a0 {a0:.5f} Å)")
    for key in ("a", "b", "c"):
        assert lp[key] == pytest.approx(a0, abs=1e-3)
    for key in ("alpha", "beta", "gamma"):
        assert lp[key] == pytest.approx(90.0, abs=0.05)
    assert res.energy / 8 == pytest.approx(e0_per_atom, abs=1e-4)
    assert spacegroup(res.atoms, 1e-2) == "Fd-3m (227)"
    np.testing.assert_array_equal(atoms.positions, start.positions)  # input untouched
    assert atoms.calc is None

    frames = read(traj, ":")
    assert len(frames) == res.n_steps + 1
    for frame in (frames[0], frames[-1]):
        assert set(frame.calc.results) >= {"energy", "forces", "stress"}
    assert frames[-1].get_potential_energy() == pytest.approx(res.energy, abs=1e-6)
    assert frames[0].get_potential_energy() > frames[-1].get_potential_energy()
    np.testing.assert_allclose(frames[-1].cell.array, res.atoms.cell.array, atol=1e-8)

    structure, summary = wf.write_structure(), wf.write_summary()
    assert structure == wf.output_files["structure"] and structure.exists()
    data = json.loads(summary.read_text())
    assert data["result"]["converged"] and data["parameters"]["fmax_eV_per_A"] == 1e-3
    assert data["units"]["energy"] == "eV"


def test_keep_symmetry_keeps_the_space_group(calc):
    atoms = bulk("Si", "diamond", 5.46 * 1.02, cubic=True)
    atoms.rattle(5e-4, seed=3)  # breaks symmetry at 1e-5 Å, not at 1e-2 Å
    assert spacegroup(atoms, 1e-5) == "P1 (1)"
    kept = Relax(atoms, calc, keep_symmetry=True, symprec=1e-2, fmax_eV_per_A=5e-3, progress=False).run()
    assert kept.converged
    assert spacegroup(kept.atoms, 1e-5) == "Fd-3m (227)"
    assert not kept.atoms.constraints  # FixSymmetry is not handed back
    free = Relax(atoms, calc, keep_symmetry=False, fmax_eV_per_A=5e-3, progress=False).run()
    assert spacegroup(free.atoms, 1e-5) != "Fd-3m (227)"  # without it the rattle survives at this tolerance


def test_fixed_cell_relax_keeps_the_cell(calc):
    atoms = bulk("Si", "diamond", 5.5, cubic=True)
    atoms.rattle(0.03, seed=4)
    res = Relax(atoms, calc, relax_cell=False, optimizer="FIRE", fmax_eV_per_A=0.01, progress=False).run()
    assert res.converged
    np.testing.assert_allclose(res.atoms.cell.array, atoms.cell.array)


def test_bad_parameters_raise():
    atoms = bulk("Si")
    with pytest.raises(ConfigurationError, match="optimizer"):
        Relax(atoms, None, optimizer="SGD")
    with pytest.raises(ConfigurationError, match="fmax"):
        Relax(atoms, None, fmax_eV_per_A=0)
    atoms.pbc = False
    with pytest.raises(ConfigurationError, match="periodic"):
        Relax(atoms, None, relax_cell=True)
