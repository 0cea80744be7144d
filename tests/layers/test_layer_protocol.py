"""What the calculator enforces of its layers (issue 17): one cutoff setter, output transforms first."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import ConfigurationError
from mlff_calc.layers.base import Layer
from mlff_calc.layers.softening import SofteningLayer


class Shift(Layer):
    """Adds 1 eV after the model, so the order against softening shows in the energy."""

    name = "shift"
    provides = ("shifted",)

    def after(self, atoms_list, results, request):
        return [{**res, "energy": res["energy"] + 1.0, "shifted": True} for res in results]


class Cutter(Layer):
    name = "cutter"
    sets_cutoff = True

    def __init__(self, cutoff):
        self.cutoff = cutoff

    def before(self, atoms_list, request):
        request.cutoff = self.cutoff
        return request


class SneakyCutter(Cutter):
    name = "sneaky"
    sets_cutoff = False


def si():
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=9)
    return atoms


def test_softening_acts_on_the_model_output_whatever_the_list_order(mace_adapter):
    plain = mace_adapter.evaluate([si()], ("energy",))[0]["energy"]
    for layers in ([SofteningLayer(1.5, mode="total"), Shift()], [Shift(), SofteningLayer(1.5, mode="total")]):
        calc = MLFFCalculator(mace_adapter, layers=layers)
        assert [layer.name for layer in calc.layers] == ["shift", "softening"]
        res = calc.evaluate([si()], ("energy",))[0]
        assert res["energy"] == pytest.approx(1.5 * plain + 1.0, rel=1e-12)  # not 1.5 * (E + 1)
        assert res["shifted"] and "shifted" in calc.implemented_properties


def test_one_layer_sets_the_cutoff(mace_adapter):
    with pytest.raises(ConfigurationError, match="all set the graph cutoff"):
        MLFFCalculator(mace_adapter, layers=[Cutter(4.0), Cutter(4.5)])
    with pytest.raises(ConfigurationError, match="does not declare sets_cutoff"):
        MLFFCalculator(mace_adapter, layers=[SneakyCutter(4.0)]).evaluate([si()])
    got = MLFFCalculator(mace_adapter, layers=[Cutter(4.0)]).evaluate([si()], ("energy", "forces"))[0]
    want = mace_adapter.evaluate([si()], ("energy", "forces"), cutoff=4.0)[0]
    assert got["energy"] == want["energy"] and np.array_equal(got["forces"], want["forces"])


def test_adapt_needs_a_layer_that_declares_it(mace_adapter):
    calc = MLFFCalculator(mace_adapter, layers=[Shift()])
    with pytest.raises(ConfigurationError, match="no layer of this calculator adapts"):
        calc.adapt([si()])
    with pytest.raises(ConfigurationError, match="does not adapt"):
        Shift().adapt([si()])


def test_ltau_leaves_the_callers_atoms_alone_by_default(request):
    from reliability.conftest import _ltau

    from mlff_calc.layers.ltau import LTAULayer

    calc = _ltau(request)
    frames = [si(), si()]
    results = calc.evaluate(frames, ("energy", "forces"))
    assert all("forces_uncertainty" in res for res in results)
    assert all("forces_uncertainty" not in a.arrays and "forces_uncertainty_max" not in a.info for a in frames)
    asked = MLFFCalculator(calc.adapter, layers=[LTAULayer(calc.layers[0].ltau, annotate=True)])
    asked.evaluate(frames, ("energy", "forces"))
    assert np.array_equal(frames[0].arrays["forces_uncertainty"], results[0]["forces_uncertainty"])
