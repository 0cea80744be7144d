"""Bad input for test-time training and its priors: clear errors, nothing half-done."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from helpers import si8


def test_zero_structures_is_an_error(ttt_calc):
    from mlff_calc.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least one structure"):
        ttt_calc.adapt([])


def test_prior_must_cover_the_elements():
    from mlff_calc.errors import UnsupportedElementError
    from mlff_calc.ttt import check_coverage, prior_labels

    with pytest.raises(UnsupportedElementError, match="Si are not covered by model .prior emt."):
        prior_labels([si8()], "emt")
    check_coverage("emt", [29, 79])
    check_coverage({"name": "lj", "params": {}}, [14, 92])


def test_unknown_prior():
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.ttt import prior_calculator

    with pytest.raises(ConfigurationError, match="unknown prior 'dftb'"):
        prior_calculator("dftb")


def test_model_without_prior_head_is_refused(mace_adapter):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.layers.ttt import TTTLayer

    with pytest.raises(ConfigurationError, match="has no prior head.*mlff-calc ttt train"):
        MLFFCalculator(mace_adapter, layers=[TTTLayer()])


def test_bad_adapt_settings():
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.layers.ttt import TTTLayer

    with pytest.raises(ConfigurationError, match="steps >= 1"):
        TTTLayer(steps=0)
    with pytest.raises(TypeError):
        TTTLayer(learning_rate=1e-3)


def test_one_head_student_cannot_be_a_two_head_student(ttt_store):
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.ttt import train_ttt_student

    with pytest.raises(ConfigurationError, match="num_interactions >= 2"):
        train_ttt_student(ttt_store, "lj", architecture={"num_interactions": 1, "channels": 8}, prior_epochs=1, reference_epochs=1, progress=False)


def test_emt_labels_match_ase():
    from ase.calculators.emt import EMT

    from mlff_calc.ttt import prior_labels

    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.rattle(0.05, seed=1)
    ((energy, forces),) = prior_labels([cu], "emt", progress=False)
    ref = cu.copy()
    ref.calc = EMT()
    assert energy == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(forces, ref.get_forces(), atol=1e-12)
    assert np.abs(forces).max() > 0.05


def test_gfn1_xtb_prior_on_a_molecule():
    pytest.importorskip("tblite")
    from mlff_calc.ttt import prior_labels

    water = molecule("H2O")
    ((energy, forces),) = prior_labels([water], "gfn1-xtb", progress=False)
    # GFN1-xTB total energy of water is about -5.77 Hartree (tblite 0.3-0.5)
    assert energy / 27.211386 == pytest.approx(-5.77, abs=0.05)
    assert np.abs(forces.sum(axis=0)).max() < 1e-6  # no net force on an isolated molecule
