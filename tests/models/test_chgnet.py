"""CHGNet adapter against CHGNet's own ASE calculator."""

import numpy as np
import pytest
from helpers import STRUCTURES, rattled_si

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def upstream(chgnet_adapter):
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(model=chgnet_adapter.module, use_device="cpu")


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_agrees_with_chgnet_calculator(chgnet_adapter, upstream, name):
    atoms = STRUCTURES[name]()
    ours = chgnet_adapter.evaluate([atoms], ("energy", "forces", "stress"))[0]
    ref = atoms.copy()
    ref.calc = upstream
    assert ours["energy"] == pytest.approx(ref.get_potential_energy(), abs=2e-4)
    np.testing.assert_allclose(ours["forces"], ref.get_forces(), atol=2e-4)
    np.testing.assert_allclose(ours["stress"], ref.get_stress(), atol=2e-6)


def test_reference_energies_are_the_composition_model(chgnet_adapter):
    refs = chgnet_adapter.reference_energies()
    assert len(refs) == 94
    atoms = rattled_si(1)
    graph = chgnet_adapter._graph(atoms, chgnet_adapter.cutoff)
    per_atom = float(chgnet_adapter.module.composition_model([graph])[0])
    assert per_atom == pytest.approx(refs[14], abs=1e-6)


def test_parameter_groups_cover_every_parameter_once(chgnet_adapter):
    groups = chgnet_adapter.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in chgnet_adapter.module.parameters()}
    assert {"embedding", "interaction_0", "readout"} <= set(groups)


def test_float64_is_refused_with_reason():
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.models.chgnet import CHGNetAdapter

    with pytest.raises(ConfigurationError, match="float32 only"):
        CHGNetAdapter.load(device="cpu", dtype="float64")
