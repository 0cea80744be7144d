"""Softening + LTAU + rewiring stacked on one calculator (issue 17).

Each layer must act as if alone on what it is given: rewiring picks the graph
cutoff ``r*``, the model runs once at ``r*``, softening scales that output by
``c``, and LTAU looks up the descriptors of that same forward pass. The order in
which the layers are listed does not matter.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase.build import bulk
from helpers import si8_frames

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.data.error_log import write_error_log
from mlff_calc.layers.ltau import LTAULayer
from mlff_calc.layers.rewiring import RewiringLayer
from mlff_calc.layers.softening import SofteningLayer
from mlff_calc.ltau import build_ltau
from mlff_calc.models.identity import model_identity
from mlff_calc.rewiring import SpectrumReference

C = 1.3
PROPS = ("energy", "forces", "stress", "energies")
UNCERTAINTIES = ("forces_uncertainty", "forces_error_probability_below_tol", "forces_error_interval", "ood_score")


@pytest.fixture(scope="module")
def parts(mace_adapter, tmp_path_factory):
    """A spectrum reference on eight rattled, strained Si64 cells (as tests/rewiring/test_rewiring.py) and
    an LTAU index (synthetic error log) on four Si8 frames."""
    rng = np.random.default_rng(0)
    cells = [_si64(1 + float(rng.uniform(-0.02, 0.02)), rattle=0.08, seed=100 + k) for k in range(8)]
    reference = SpectrumReference.build(cells, adapter=mace_adapter)
    frames = si8_frames(4, amp=0.04, seed=30)
    folder = tmp_path_factory.mktemp("ltau_stack")
    rng = np.random.default_rng(0)
    n = sum(len(a) for a in frames)
    arrays = dict(
        errors=rng.lognormal(-3, 1, (6, n)).astype(np.float32),
        epoch=np.arange(6),
        structure_index=np.repeat(np.arange(len(frames)), [len(a) for a in frames]),
        atom_index=np.concatenate([np.arange(len(a)) for a in frames]),
        numbers=np.concatenate([a.numbers for a in frames]),
    )
    write_error_log(folder / "error_log.npz", arrays, structures=frames, identity=model_identity(mace_adapter))
    return reference, build_ltau(mace_adapter, frames, folder / "error_log.npz", k=5)


def _layers(parts):
    reference, ltau = parts
    return [SofteningLayer(C, mode="total"), LTAULayer(ltau), RewiringLayer(reference)]


def _si64(scale=1.0, rattle=0.05, seed=1):
    atoms = bulk("Si", "diamond", 5.43 * scale, cubic=True) * (2, 2, 2)
    atoms.rattle(rattle, seed=seed)
    return atoms


def _target():
    """Si64 compressed by 10 %: its graph at r* < rc has the reference's topology."""
    return _si64(0.9, seed=3)


def test_stack_equals_layers_composed_by_hand(mace_adapter, parts):
    atoms = _target()
    stacked = MLFFCalculator(mace_adapter, layers=_layers(parts)).evaluate([atoms], PROPS + UNCERTAINTIES)[0]
    r_star = stacked["r_star"]
    assert 0 < r_star < mace_adapter.cutoff  # rewiring really changed the graph

    raw = mace_adapter.evaluate([atoms], PROPS, cutoff=r_star)[0]  # the rewired model, by hand
    assert stacked["energy"] == pytest.approx(C * raw["energy"], rel=1e-12, abs=0)
    for key in ("forces", "stress", "energies"):
        np.testing.assert_allclose(stacked[key], C * raw[key], rtol=1e-12, atol=1e-14)
    assert stacked["energies"].sum() == pytest.approx(stacked["energy"], rel=1e-10)

    reference, ltau = parts  # LTAU alone, on the rewired calculator without softening
    alone = MLFFCalculator(mace_adapter, layers=[LTAULayer(ltau), RewiringLayer(reference)]).evaluate([atoms], UNCERTAINTIES)[0]
    assert alone["r_star"] == r_star
    for key in UNCERTAINTIES:
        assert stacked[key].shape[0] == len(atoms) and np.isfinite(stacked[key]).all()
        np.testing.assert_array_equal(stacked[key], alone[key])
    native = MLFFCalculator(mace_adapter, layers=[LTAULayer(ltau)]).evaluate([atoms], UNCERTAINTIES)[0]
    assert not np.allclose(native["ood_score"], stacked["ood_score"])  # the lookup used the rewired descriptors


def test_order_of_the_layer_list_is_irrelevant(mace_adapter, parts):
    atoms = _target()
    results = []
    for order in itertools.permutations(range(3)):
        layers = _layers(parts)
        calc = MLFFCalculator(mace_adapter, layers=[layers[i] for i in order])
        results.append(calc.evaluate([atoms], PROPS + UNCERTAINTIES)[0])
    first = results[0]
    for res in results[1:]:
        assert res["r_star"] == first["r_star"] and res["energy"] == first["energy"]
        for key in ("forces", "stress", "energies", *UNCERTAINTIES):
            np.testing.assert_array_equal(res[key], first[key])
