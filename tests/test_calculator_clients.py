"""What ASE clients expect of a calculator: PropertyNotImplementedError, magmoms, a version."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import InvalidStructureError


@pytest.fixture(scope="module")
def calc(chgnet_adapter):
    return MLFFCalculator(chgnet_adapter)


@pytest.mark.parametrize("pbc", [False, (True, True, False)])
def test_stress_of_non_periodic_cell_is_property_not_implemented(calc, pbc):
    """Code written for ASE calculators catches PropertyNotImplementedError for a property a system lacks."""
    mol = molecule("H2O")
    mol.center(vacuum=5.0)
    mol.pbc = pbc
    mol.calc = calc
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three") as info:
        mol.get_stress()
    assert isinstance(info.value, InvalidStructureError)  # what it was before, still
    with pytest.raises(PropertyNotImplementedError):
        calc.evaluate([mol], ("energy", "stress"))
    assert np.isfinite(mol.get_forces()).all()  # energy and forces still work


def test_try_stress_like_ase_clients(calc):
    """The pattern of ASE-based tools: ask for stress, fall back when the system has none."""
    mol = molecule("CH4")
    mol.calc = calc
    try:
        stress = mol.get_stress()
    except PropertyNotImplementedError:
        stress = None
    assert stress is None and np.isfinite(mol.get_potential_energy())


@pytest.mark.parametrize("name", ["Fe", "LiMnO2"])
def test_magmoms_equal_upstream_chgnet(calc, name):
    from chgnet.model.dynamics import CHGNetCalculator

    if name == "Fe":
        atoms = bulk("Fe", "bcc", 2.87, cubic=True).repeat(2)
    else:  # an ordered rocksalt LiMnO2 cell
        atoms = bulk("MnO", "rocksalt", 4.44, cubic=True)
        atoms.numbers[[0, 2]] = 3
        atoms = atoms.repeat((2, 1, 1))
    atoms.rattle(0.03, seed=5)
    upstream = CHGNetCalculator(model=calc.adapter.module, use_device="cpu")
    ref = atoms.copy()
    ref.calc = upstream
    want = ref.get_magnetic_moments()
    atoms.calc = calc
    got = atoms.get_magnetic_moments()
    assert got.shape == (len(atoms),) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert want.max() > 1.0  # Fe / Mn carry moments of a few μB
    assert "magmoms" in calc.implemented_properties


def test_magmoms_only_where_the_model_has_them(mace_adapter):
    atoms = bulk("Si", "diamond", 5.43)
    atoms.calc = MLFFCalculator(mace_adapter)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_magnetic_moments()


def test_version_from_one_source():
    import mlff_calc
    from mlff_calc._version import __version__

    assert mlff_calc.__version__ == __version__
    out = subprocess.run([sys.executable, "-m", "mlff_calc.cli.main", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"mlff-calc {__version__}"
