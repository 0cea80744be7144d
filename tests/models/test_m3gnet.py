"""M3GNet adapter (matgl 4) against matgl's own ASE calculator and known energies."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from helpers import require_backend, shared_path

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

require_backend("matgl", "m3gnet")

MP2021 = "M3GNet-MP-2021.2.8-PES"
LEGACY = ("legacy-matgl2", MP2021)


def model_path(*parts) -> Path:
    return shared_path("models", *parts)


@pytest.fixture(scope="module")
def adapter():
    from mlff_calc.models.m3gnet import M3GNetAdapter

    return M3GNetAdapter.load(model_path(MP2021), device="cpu")


@pytest.fixture(scope="module")
def upstream(adapter):
    from matgl.ext.ase import PESCalculator

    return PESCalculator(adapter.module, stress_unit="eV/A3", use_voigt=True)


def mos():
    return Atoms("MoS", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 4.0, pbc=True)


def si(n=2, seed=1):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (n, n, n)
    atoms.rattle(0.05, seed=seed)
    return atoms


def nacl():
    atoms = bulk("NaCl", "rocksalt", 5.64) * (2, 2, 2)
    atoms.rattle(0.05, seed=2)
    return atoms


def ch4_box(pbc=True):
    atoms = molecule("CH4")
    atoms.cell = [12.0, 12.0, 12.0]
    atoms.center()
    atoms.pbc = pbc
    return atoms


def cu_slab(pbc=True):
    atoms = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    atoms.pbc = pbc
    atoms.rattle(0.02, seed=3)
    return atoms


STRUCTURES = {"si64": si, "nacl16": nacl, "ch4_box": ch4_box, "cu111_slab": cu_slab}


def test_regression_energy_mos(adapter):
    assert len(mos()) == 2
    assert adapter.evaluate([mos()], ("energy",))[0]["energy"] == pytest.approx(-10.824362, abs=1e-4)
    assert adapter.model_id == f"m3gnet:{MP2021}"
    assert adapter.source == str(model_path(MP2021)) and len(adapter.sha256) == 64


def test_legacy_matgl2_checkpoint_is_refused():
    from mlff_calc.errors import ModelLoadError
    from mlff_calc.models.m3gnet import M3GNetAdapter

    with pytest.raises(ModelLoadError, match="matgl-2 .*evaluates it wrongly.*matgl-4 re-export"):
        M3GNetAdapter.load(model_path(*LEGACY), device="cpu")


def test_missing_or_wrong_folder_is_a_load_error(tmp_path):
    from mlff_calc.errors import ModelLoadError
    from mlff_calc.models.m3gnet import M3GNetAdapter

    with pytest.raises(ModelLoadError, match="does not exist"):
        M3GNetAdapter.load(tmp_path / "nope")
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="lacks model.pt, state.pt"):
        M3GNetAdapter.load(tmp_path)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_agrees_with_pes_calculator(adapter, upstream, name):
    atoms = STRUCTURES[name]()
    ours = adapter.evaluate([atoms], ("energy", "forces", "stress"))[0]
    ref = atoms.copy()
    ref.calc = upstream
    # float32 totals of -100s of eV: a few ulp (3e-5 eV at 300 eV) of the larger cells, hence rel=1e-6
    assert ours["energy"] == pytest.approx(ref.get_potential_energy(), rel=1e-6, abs=1e-4)
    np.testing.assert_allclose(ours["forces"], ref.get_forces(), atol=1e-4)
    np.testing.assert_allclose(ours["stress"], ref.get_stress(), atol=1e-5)


@pytest.mark.parametrize("make", [ch4_box, cu_slab])
def test_open_boundaries_match_a_vacuum_gap_wider_than_the_cutoff(adapter, make):
    closed = adapter.evaluate([make(pbc=True)], ("energy", "forces"))[0]
    opened = adapter.evaluate([make(pbc=[True, True, False] if make is cu_slab else False)], ("energy", "forces"))[0]
    assert opened["energy"] == pytest.approx(closed["energy"], abs=1e-5)
    np.testing.assert_allclose(opened["forces"], closed["forces"], atol=1e-5)


def test_batch_equals_single_calls(adapter):
    structures = [si(), nacl(), mos()]
    props = ("energy", "forces", "stress", "energies")
    batched = adapter.evaluate(structures, props)
    for atoms, res in zip(structures, batched):
        single = adapter.evaluate([atoms], props)[0]
        assert res["energy"] == pytest.approx(single["energy"], abs=1e-4)
        for key in ("forces", "stress", "energies"):
            np.testing.assert_allclose(res[key], single[key], atol=1e-4)


def test_per_atom_energies_and_descriptors(adapter):
    structures = [si(), mos()]
    for atoms, res in zip(structures, adapter.evaluate(structures, ("energy", "energies", "descriptors"))):
        assert res["energies"].shape == (len(atoms),)
        assert res["energies"].sum() == pytest.approx(res["energy"], abs=1e-4)
        assert res["descriptors"].shape == (len(atoms), 64) and np.isfinite(res["descriptors"]).all()


def test_hessian_autograd_matches_finite_differences(adapter):
    atoms = si(1, seed=4)
    exact = adapter.hessian(atoms, rows=[0, 1, 5], method="autograd")
    fd = adapter.hessian(atoms, rows=[0, 1, 5], method="fd")
    assert exact.shape == (3, 24)
    np.testing.assert_allclose(exact, fd, atol=1e-2)


def test_cutoff_override(adapter):
    from mlff_calc.errors import ConfigurationError

    atoms = si()
    native = adapter.evaluate([atoms], ("energy",))[0]["energy"]
    assert adapter.evaluate([atoms], ("energy",), cutoff=5.0)[0]["energy"] == native
    assert abs(adapter.evaluate([atoms], ("energy",), cutoff=4.0)[0]["energy"] - native) > 1e-3
    with pytest.raises(ConfigurationError, match="native cutoff"):
        adapter.evaluate([atoms], ("energy",), cutoff=6.0)


def test_float64_agrees_with_float32(adapter):
    import torch

    from mlff_calc.models.m3gnet import M3GNetAdapter

    adapter64 = M3GNetAdapter.load(model_path(MP2021), device="cpu", dtype="float64")
    assert adapter64.dtype == torch.float64
    structures = [si(), mos()]
    for r32, r64 in zip(adapter.evaluate(structures), adapter64.evaluate(structures)):
        assert r64["energy"] == pytest.approx(r32["energy"], abs=1e-4)
        np.testing.assert_allclose(r64["forces"], r32["forces"], atol=1e-4)


def test_parameter_groups_cover_every_parameter_once(adapter):
    groups = adapter.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in adapter.module.parameters()}
    assert {"embedding", "interaction_0", "interaction_1", "interaction_2", "readout"} <= set(groups)


def test_reference_energies_are_the_element_refs(adapter):
    refs = adapter.reference_energies()
    assert len(refs) == 89 and set(refs) == set(adapter.elements)
    offsets = adapter.module.element_refs.property_offset
    assert refs[14] == pytest.approx(float(offsets[13]), abs=1e-6)  # Si is the 14th element type
    assert refs[94] == pytest.approx(float(offsets[-1]), abs=1e-6)  # Pu, after the gap Po..Ra
