"""CHGNet's graph arrays built with numpy against chgnet's own graph builder, and the model's output on both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from helpers import rattled_si

from mlff_calc.models.chgnet_graph import angles, bonds
from mlff_calc.neighbors import neighbor_list

pytest.importorskip("chgnet")


def structures():
    nacl = bulk("NaCl", "rocksalt", 5.64) * (2, 1, 1)
    nacl.rattle(0.05, seed=2)
    water = molecule("H2O")
    water.center(vacuum=4.0)
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.rattle(0.03, seed=3)
    prim = bulk("Si", "diamond", 5.43)  # 2 atoms: many edges to an atom's own images
    prim.rattle(0.02, seed=4)
    tiny = Atoms("Cu", cell=[[2.6, 0, 0], [0, 2.6, 0], [0, 0, 2.6]], pbc=True)  # only self-images
    return {"Si64": rattled_si(2, 0.05, seed=1), "NaCl": nacl, "H2O-box": water, "Cu-slab": slab, "Si-primitive": prim, "Cu-1atom": tiny}


def upstream_arrays(converter, atoms, cutoff, bond_cutoff):
    i, j, s = neighbor_list(atoms, cutoff)
    dist = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + s @ atoms.cell.array, axis=1)
    graph = converter.create_graph(len(atoms), i, j, s, dist)
    atom_graph, d2u = graph.adjacency_list()
    bond_graph, u2d = graph.line_graph_adjacency_list(cutoff=bond_cutoff)
    return (i, j, s, dist), np.asarray(atom_graph).reshape(-1, 2), np.asarray(d2u), np.asarray(u2d), np.asarray(bond_graph, dtype=np.int64).reshape(-1, 5)


@pytest.mark.parametrize("name", list(structures()))
def test_graph_arrays_equal_chgnets(chgnet_adapter, name):
    atoms = structures()[name]
    conv = chgnet_adapter.module.graph_converter
    (i, j, s, dist), atom_graph, d2u_up, u2d_up, bond_up = upstream_arrays(conv, atoms, conv.atom_graph_cutoff, conv.bond_graph_cutoff)
    d2u, u2d = bonds(i, j, s)
    np.testing.assert_array_equal(atom_graph, np.stack([i, j], axis=1))
    np.testing.assert_array_equal(d2u, d2u_up)  # same bond numbering (first appearance)
    np.testing.assert_array_equal(u2d, u2d_up)
    assert np.all(d2u[u2d] == np.arange(len(u2d)))
    ours = angles(i, dist, d2u, conv.bond_graph_cutoff)
    assert len(ours) == len(bond_up) > 0 or name == "H2O-box"
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, bond_up.tolist()))  # same angles, any order


def test_asymmetric_neighbour_list_is_refused():
    from mlff_calc.errors import InvalidStructureError

    with pytest.raises(InvalidStructureError, match="not symmetric"):
        bonds(np.array([0, 1, 0]), np.array([1, 0, 2]), np.zeros((3, 3), dtype=int))


@pytest.mark.parametrize("name", ["Si64", "NaCl", "Cu-slab", "Si-primitive"])
def test_model_output_equals_chgnets_graph(chgnet_adapter, name, monkeypatch):
    """Energy, forces and stress with our arrays and with chgnet's own graph builder."""
    import mlff_calc.models.chgnet as mod

    atoms = structures()[name]
    props = ("energy", "forces", "stress") if atoms.pbc.all() else ("energy", "forces")
    ours = chgnet_adapter.evaluate([atoms], props)[0]
    conv = chgnet_adapter.module.graph_converter

    def upstream_bonds(i, j, s):
        dist = np.ones(len(i))
        g = conv.create_graph(int(max(i.max(), j.max()) + 1), i, j, s, dist)
        _, d2u = g.adjacency_list()
        return np.asarray(d2u), np.asarray(g.undirected2directed())

    def upstream_angles(i, dist, d2u, cutoff):
        g = conv.create_graph(int(i.max() + 1), i, saved["j"], saved["s"], dist)
        return np.asarray(g.line_graph_adjacency_list(cutoff=cutoff)[0], dtype=np.int64).reshape(-1, 5)

    saved = {}
    i, j, s = neighbor_list(atoms, chgnet_adapter.cutoff)
    saved.update(j=j, s=s)
    monkeypatch.setattr(mod, "bonds", upstream_bonds)
    monkeypatch.setattr(mod, "angles", upstream_angles)
    theirs = chgnet_adapter.evaluate([atoms], props)[0]
    assert ours["energy"] == pytest.approx(theirs["energy"], rel=2e-6)
    # float32: the two graphs order edges differently, so forces are summed in another order
    # (up to 8e-6 eV/Å seen); a wrong or missing edge changes them by far more than 1e-4
    np.testing.assert_allclose(ours["forces"], theirs["forces"], atol=1e-4)
    if "stress" in props:
        np.testing.assert_allclose(ours["stress"], theirs["stress"], atol=2e-6)
    assert torch.get_default_dtype() == torch.float32


def test_bond_pairing_without_the_one_integer_key():
    """Shifts too large to pack into one int64 take the row-wise path and give the same pairing."""
    i, j, s = neighbor_list(structures()["Si-primitive"], 5.0)
    small = bonds(i, j, s)
    large = bonds(i, j, s * 10**6)
    np.testing.assert_array_equal(small[0], large[0])
    np.testing.assert_array_equal(small[1], large[1])
