"""SurfaceEnergy and PointDefect on Si with CHGNet (small cells)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.geometry import get_distances

from mlff_calc.errors import ConfigurationError
from mlff_calc.workflows.defects import PointDefect, largest_void
from mlff_calc.workflows.surface import EV_PER_A2_TO_J_PER_M2, SurfaceEnergy

A0 = 5.461  # CHGNet's lattice constant of Si (see test_relax)


@pytest.fixture(scope="module")
def si():
    return bulk("Si", "diamond", A0, cubic=True)


def test_si100_surface_energy(calc, si, tmp_path):
    wf = SurfaceEnergy(si, calc, miller=(1, 0, 0), layers=2, vacuum=8.0, prefix=tmp_path / "si")
    slab, oriented = wf.build()
    assert len(slab) == len(oriented) == 16 and slab.pbc.all()
    extent = np.ptp(slab.positions[:, 2])
    assert slab.cell.lengths()[2] - extent == pytest.approx(16.0)  # 8 Å of vacuum on each side
    assert oriented.cell.lengths()[2] == pytest.approx(2 * A0)
    res = wf.run()
    print(
        f"\nCHGNet Si(100) unreconstructed, 8 atomic planes, unrelaxed: γ = {res.surface_energy_eV_per_A2:.4f} eV/Å² = {res.surface_energy_J_per_m2:.3f} J/m²",
    )
    assert np.isfinite(res.surface_energy_eV_per_A2) and res.surface_energy_eV_per_A2 > 0
    assert res.area_A2 == pytest.approx(A0**2)
    assert res.surface_energy_J_per_m2 == pytest.approx(res.surface_energy_eV_per_A2 * 16.0218, rel=1e-4)
    assert EV_PER_A2_TO_J_PER_M2 == pytest.approx(16.02177, rel=1e-6)
    # the oriented-bulk reference is the bulk energy per atom
    bulk_e = calc.evaluate([si], ("energy",))[0]["energy"] / len(si)
    assert res.bulk_energy_per_atom_eV == pytest.approx(bulk_e, abs=1e-4)
    data = json.loads(wf.write_summary().read_text())
    assert data["result"]["surface_energy_J_per_m2"] == pytest.approx(res.surface_energy_J_per_m2)
    assert wf.write_slab().exists()


def test_miller_indices_refer_to_the_conventional_cell(calc, si):
    """(100) of a primitive fcc/diamond cell is the cubic (100): the same slab as from the conventional cell."""
    from mlff_calc.workflows.surface import conventional_cell

    primitive = bulk("Si", "diamond", A0)
    kw = {"miller": (1, 0, 0), "layers": 2, "vacuum": 8.0, "progress": False}
    conv = SurfaceEnergy(si, calc, **kw).run()
    prim = SurfaceEnergy(primitive, calc, **kw).run()
    assert prim.n_atoms == conv.n_atoms == 16
    assert prim.area_A2 == pytest.approx(A0**2, rel=1e-6) and conv.area_A2 == pytest.approx(A0**2, rel=1e-6)
    assert prim.surface_energy_J_per_m2 == pytest.approx(conv.surface_energy_J_per_m2, abs=2e-3)
    assert prim.plane == "(100) of the conventional Fd-3m cell"
    assert prim.miller_input_cell == (0, 1, 1)  # the cubic (100) in the primitive basis
    # the primitive cell's own (100) is another plane, of another area and energy
    own = SurfaceEnergy(primitive, calc, miller_cell="input", **kw).run()
    assert own.plane == "(100) of the input cell"
    assert own.area_A2 == pytest.approx(A0**2 * np.sqrt(3) / 4, rel=1e-6)  # a {111} plane of the cube
    print(f"\nCHGNet Si: γ(100) {conv.surface_energy_J_per_m2:.3f} J/m² (conventional), {prim.surface_energy_J_per_m2:.3f} (primitive input); primitive's own (100) {own.surface_energy_J_per_m2:.3f}")
    cell, sg = conventional_cell(primitive)
    assert sg == "Fd-3m" and len(cell) == 8 and cell.get_volume() == pytest.approx(si.get_volume())
    # NaCl primitive -> the 8-atom rocksalt cube
    nacl, sg = conventional_cell(bulk("NaCl", "rocksalt", 5.64))
    assert sg == "Fm-3m" and len(nacl) == 8 and nacl.cell.lengths() == pytest.approx([5.64] * 3)


def test_si_vacancy_formation_energy(calc, si, tmp_path):
    relaxed = PointDefect(si, calc, supercell=(2, 2, 2), kind="vacancy", relax=True, fmax_eV_per_A=0.03, progress=False, prefix=tmp_path / "si").run()
    unrelaxed = PointDefect(si, calc, supercell=(2, 2, 2), kind="vacancy", relax=False).run()
    print(f"\nCHGNet Si vacancy (63/64 atoms): E_f = {relaxed.formation_energy_eV:.3f} eV relaxed, {unrelaxed.formation_energy_eV:.3f} eV unrelaxed")
    assert relaxed.relax_converged
    assert relaxed.delta_n == {"Si": -1} and relaxed.n_atoms_host == 64 and len(relaxed.defect) == 63
    assert relaxed.chemical_potentials_eV["Si"] == pytest.approx(relaxed.host_energy_eV / 64)
    for res in (relaxed, unrelaxed):
        assert np.isfinite(res.formation_energy_eV) and res.formation_energy_eV > 0
    assert relaxed.formation_energy_eV <= unrelaxed.formation_energy_eV + 1e-4


def test_defect_result_names_the_host_supercell(calc):
    res = PointDefect(bulk("Si", "diamond", A0), calc, supercell=(2, 2, 2), kind="vacancy", relax=False).run()
    summary = res.to_dict()
    assert res.host_formula == summary["formula"] == "Si16" and summary["defect_formula"] == "Si15"
    assert summary["n_atoms_host"] == 16 and summary["supercell"] == [2, 2, 2]
    assert summary["chemical_potentials_eV"]["Si"] == pytest.approx(res.host_energy_eV / 16)


def test_defect_building_and_chemical_potentials(si):
    nacl = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    host, defect, dn = PointDefect(nacl, None, supercell=(1, 1, 1), kind="antisite", site=0).build()
    assert dn == {"Cl": 1, "Na": -1} and defect.get_chemical_symbols()[0] == "Cl"
    # Cl has no crystal in ase.build.bulk: the error comes before any evaluation and names the way out
    with pytest.raises(ConfigurationError, match=r"chemical_potentials=\{'Cl'"):
        PointDefect(nacl, None, supercell=(1, 1, 1), kind="vacancy", site=nacl.get_chemical_symbols().index("Cl"), relax=False).run()
    _, inter, dn = PointDefect(si, None, supercell=(1, 1, 1), kind="interstitial").build()
    assert dn == {"Si": 1} and len(inter) == 9
    # the largest void of diamond Si is the tetrahedral site, 0.433 a from its neighbours
    void = largest_void(si)
    _, dist = get_distances([void], si.positions, cell=si.cell, pbc=True)
    assert dist.min() == pytest.approx(np.sqrt(3) / 4 * A0, abs=0.05)
    with pytest.raises(ConfigurationError, match="kind"):
        PointDefect(si, None, kind="divacancy")
    with pytest.raises(ConfigurationError, match="other elements"):
        PointDefect(si, None, kind="antisite").build()
