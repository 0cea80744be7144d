"""NVE molecular dynamics with r* frozen: r* never changes, and energy is conserved as with the plain
model while no pair crosses r*; with the sharp cut at r* (``switch_width_A = 0``; CHGNet, M3GNet) a pair
crossing r* makes the energy jump. MACE's smooth switch below r* is tested in test_rewiring_switch.py.

Small float64 MACE of the top-level conftest (rc = 5.0 Å), 64-atom Si compressed by 10 % (r* < rc).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from test_rewiring import si, training_set

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.layers.rewiring import RewiringLayer
from mlff_calc.neighbors import neighbor_list
from mlff_calc.rewiring import SpectrumReference

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")


@pytest.fixture(scope="module")
def reference(mace_adapter):
    return SpectrumReference.build(training_set(), adapter=mace_adapter, source="8 rattled Si64")


def pairs_within(atoms, r) -> set:
    i, j, shifts = neighbor_list(atoms, r)
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist())))


def nve(calc, atoms, steps, temperature_K, r_graph):
    """Total energy per atom at every step, the r* reported at every step, and the edges that crossed r_graph."""
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(0))
    Stationary(atoms)
    first = pairs_within(atoms, r_graph)
    energies, seen, crossed = [], [], set()

    def record():
        energies.append(atoms.get_total_energy() / len(atoms))
        seen.append(calc.results.get("r_star"))
        crossed.update(first ^ pairs_within(atoms, r_graph))

    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(steps)
    return np.asarray(energies), seen, crossed


def test_nve_with_frozen_r_star_conserves_energy_like_the_plain_model(reference, mace_adapter):
    start = si(2, scale=0.9, rattle=0.0)
    layer = RewiringLayer(reference)
    r_star = layer.refine(start).r_star
    assert r_star < reference.cutoff
    e_plain, _, _ = nve(MLFFCalculator(mace_adapter), start, 50, 30.0, reference.cutoff)
    e_wired, seen, crossed = nve(MLFFCalculator(mace_adapter, [layer]), start, 50, 30.0, r_star)
    assert set(seen) == {r_star} and layer.n_refinements == 1  # frozen: chosen once, never again
    assert not crossed  # the precondition of this comparison
    dev_plain, dev_wired = np.abs(e_plain - e_plain[0]).max(), np.abs(e_wired - e_wired[0]).max()
    assert dev_plain < 5e-6 and dev_wired < 5e-6, (dev_plain, dev_wired)  # eV/atom over 50 fs, float64


def test_a_pair_crossing_a_sharply_cut_reduced_radius_makes_the_energy_jump(mace_adapter, monkeypatch):
    """Why r* is centred in a gap: cut sharply, the graph at r < rc ends abruptly, the model's envelope is smooth at rc only."""
    monkeypatch.setattr(mace_adapter, "switch_width_A", 0.0)  # the sharp cut (CHGNet and M3GNet always)
    dimer = lambda d: Atoms("Si2", positions=[[0, 0, 0], [d, 0, 0]], cell=[20, 20, 20], pbc=True)  # noqa: E731

    def jump(r):
        below, above = (mace_adapter.evaluate([dimer(r + s)], ("energy",), cutoff=r)[0]["energy"] for s in (-1e-6, 1e-6))
        return abs(below - above)

    assert jump(3.0) > 1e-4  # the pair term at 3 Å is not small
    assert jump(mace_adapter.cutoff) < 1e-8
