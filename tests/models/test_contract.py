"""The adapter contract, run over every model family."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from helpers import rattled_nacl

from mlff_calc.errors import CalculationFailed

ADAPTERS = ["chgnet_adapter", "m3gnet_adapter", "mace_adapter"]
PROPS = ("energy", "forces", "stress", "energies", "descriptors")


@pytest.fixture(params=ADAPTERS)
def adapter(request):
    return request.getfixturevalue(request.param)


def test_shapes_and_input_untouched(adapter):
    atoms = rattled_nacl()
    before = (atoms.positions.copy(), atoms.cell.array.copy(), atoms.numbers.copy(), dict(atoms.info), atoms.calc)
    res = adapter.evaluate([atoms], PROPS)[0]
    n = len(atoms)
    assert isinstance(res["energy"], float)
    assert res["forces"].shape == (n, 3) and res["stress"].shape == (6,) and res["energies"].shape == (n,)
    assert res["descriptors"].shape[0] == n and res["descriptors"].ndim == 2
    assert all(v.dtype == np.float64 for k, v in res.items() if isinstance(v, np.ndarray))
    np.testing.assert_array_equal(atoms.positions, before[0])
    np.testing.assert_array_equal(atoms.cell.array, before[1])
    np.testing.assert_array_equal(atoms.numbers, before[2])
    assert atoms.info == before[3] and atoms.calc is before[4]


def test_single_atom_cell_keeps_dimensions(adapter):
    cu = bulk("Cu", "fcc", 3.6)
    res = adapter.evaluate([cu], PROPS)[0]
    assert res["forces"].shape == (1, 3) and res["energies"].shape == (1,)
    np.testing.assert_allclose(res["forces"], 0, atol=1e-4)  # every atom is an inversion centre


def test_lattice_translation_of_one_atom_changes_nothing(adapter):
    atoms = rattled_nacl()
    moved = atoms.copy()
    moved.positions[3] += atoms.cell[0] - 2 * atoms.cell[2]
    a, b = adapter.evaluate([atoms, moved], ("energy", "forces", "stress"))
    assert a["energy"] == pytest.approx(b["energy"], abs=2e-4)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=2e-4)
    np.testing.assert_allclose(a["stress"], b["stress"], atol=2e-6)


def test_molecule_without_periodicity(adapter):
    mol = molecule("CH4")
    res = adapter.evaluate([mol], ("energy", "forces"))[0]
    assert np.isfinite(res["energy"])
    np.testing.assert_allclose(res["forces"].sum(axis=0), 0, atol=1e-4)


def test_dtype_is_preserved(adapter):
    adapter.evaluate([bulk("Si", "diamond", 5.43)])
    assert {p.dtype for p in adapter.module.parameters()} == {adapter.dtype}
    assert torch.get_default_dtype() == torch.float32


def test_out_of_memory_becomes_calculation_failed(adapter, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(adapter, "_forward", boom)
    with pytest.raises(CalculationFailed, match="ran out of memory on 1 structure.* 16 atoms"):
        adapter.evaluate([rattled_nacl()])
