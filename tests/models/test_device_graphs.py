"""The vesin neighbour search (the CUDA path) gives the same graphs and results as matscipy, on CPU."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from helpers import cu_slab, rattled_nacl, rattled_si

from mlff_calc.neighbors import device_neighbor_list, neighbor_list

pytest.importorskip("vesin_torch")


def _rows(i, j, s):
    rows = np.column_stack([np.asarray(i), np.asarray(j), np.asarray(s)])
    return rows[np.lexsort(rows.T[::-1])]


def _unwrapped_si():
    atoms = rattled_si(2)
    atoms.positions += 1.3 * atoms.cell[0] - 0.4 * atoms.cell[2]  # outside the cell, as in MD
    return atoms


def _methane():
    atoms = molecule("CH4")
    atoms.pbc = False
    return atoms


STRUCTURES = {"si64": lambda: rattled_si(2), "si_primitive": lambda: bulk("Si"), "unwrapped": _unwrapped_si, "slab": cu_slab, "molecule": _methane, "nacl": rattled_nacl}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("cutoff", [3.0, 6.0])
def test_vesin_edges_equal_matscipy(name, cutoff):
    atoms = STRUCTURES[name]()
    ref = neighbor_list(atoms, cutoff)
    got = device_neighbor_list(atoms, cutoff, "cpu", backend="vesin")
    assert all(t.dtype == torch.int64 for t in got)
    assert len(ref[0]) > 0
    np.testing.assert_array_equal(_rows(*ref), _rows(*(t.numpy() for t in got)))
    # sorted by (i, j) like the CPU list, so only pairs with several images may swap places
    np.testing.assert_array_equal(got[0].numpy(), ref[0])
    np.testing.assert_array_equal(got[1].numpy(), ref[1])


def test_auto_on_cpu_is_matscipy_bitwise():
    atoms = rattled_si(2)
    for ref, got in zip(neighbor_list(atoms, 5.0), device_neighbor_list(atoms, 5.0, "cpu")):
        np.testing.assert_array_equal(got.numpy(), ref)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        device_neighbor_list(bulk("Si"), 3.0, "cpu", backend="cuda-magic")


def _student():
    from mlff_calc.models.student import StudentAdapter

    return StudentAdapter.create([11, 14, 17], dtype="float64", architecture={"channels": 8, "radial_mlp": [8]}, device="cpu")


@pytest.mark.parametrize("fixture", ["chgnet_adapter", "m3gnet_adapter", "mace_adapter", "student"])
def test_vesin_path_gives_the_same_results(request, fixture, monkeypatch):
    adapter = _student() if fixture == "student" else request.getfixturevalue(fixture)
    frames = [rattled_si(2), rattled_nacl()]
    ref = adapter.evaluate(frames, ("energy", "forces", "stress"), workers=1)
    monkeypatch.setattr(adapter, "neighbor_backend", "vesin")
    got = adapter.evaluate(frames, ("energy", "forces", "stress"), workers=1)
    rtol = 1e-6 if adapter.dtype == torch.float32 else 1e-12
    for r, g in zip(ref, got):
        scale = max(1.0, abs(r["energy"]))
        assert abs(g["energy"] - r["energy"]) <= rtol * 10 * scale
        np.testing.assert_allclose(g["forces"], r["forces"], rtol=0, atol=rtol * 10 * max(1.0, np.abs(r["forces"]).max()))
        np.testing.assert_allclose(g["stress"], r["stress"], rtol=0, atol=rtol * 10 * max(0.01, np.abs(r["stress"]).max()))
