"""MACE adapter against mace-torch's own MACECalculator, on a small ScaleShiftMACE."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule
from helpers import ROOT, STRUCTURES, rattled_si, require_backend

from mlff_calc.errors import ConfigurationError, ModelLoadError

require_backend("mace", "mace")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ch4_vacuum():
    atoms = molecule("CH4")
    atoms.rattle(0.02, seed=5)
    return atoms


def cu_slab_2d():
    atoms = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    atoms.pbc = (True, True, False)
    atoms.rattle(0.02, seed=6)
    return atoms


CASES = {**STRUCTURES, "ch4_vacuum": ch4_vacuum, "cu111_slab_2d": cu_slab_2d}


def si8(seed=4):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def upstream(mace_small_path):
    """MACECalculator results for every case; process-wide state restored afterwards."""
    from ase.calculators.calculator import BaseCalculator

    env, dtype, props = dict(os.environ), torch.get_default_dtype(), BaseCalculator.implemented_properties[:]
    try:
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # MACECalculator's torch.load needs it
        from mace.calculators import MACECalculator

        calc = MACECalculator(model_paths=str(mace_small_path), device="cpu", default_dtype="float64")
        results = {}
        for name, make in CASES.items():
            atoms = make()
            atoms.calc = calc
            res = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "energies": calc.results["energies"].copy()}
            res["stress"] = atoms.get_stress() if atoms.pbc.all() else None
            res["descriptors"] = calc.get_descriptors(atoms)
            results[name] = res
        return results
    finally:
        BaseCalculator.implemented_properties[:] = props
        torch.set_default_dtype(dtype)
        os.environ.clear()
        os.environ.update(env)


def _props(atoms):
    return ("energy", "forces", "energies", "descriptors") + (("stress",) if atoms.pbc.all() else ())


@pytest.fixture(scope="module")
def single(mace_adapter):
    """Our results, one structure per call."""
    out = {}
    for name, make in CASES.items():
        atoms = make()
        out[name] = mace_adapter.evaluate([atoms], _props(atoms))[0]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_agrees_with_mace_calculator(single, upstream, name):
    ours, ref = single[name], upstream[name]
    assert ours["energy"] == pytest.approx(ref["energy"], abs=1e-6)
    np.testing.assert_allclose(ours["forces"], ref["forces"], atol=1e-6)
    np.testing.assert_allclose(ours["energies"], ref["energies"], atol=1e-6)
    np.testing.assert_allclose(ours["descriptors"], ref["descriptors"], atol=1e-6)
    if ref["stress"] is not None:
        np.testing.assert_allclose(ours["stress"], ref["stress"], atol=1e-7)
    assert np.abs(ref["forces"]).max() > 1e-3  # the comparison is not vacuous


def test_batched_equals_single(mace_adapter, single):
    names = sorted(CASES)
    batched = mace_adapter.evaluate([CASES[n]() for n in names], ("energy", "forces", "energies", "descriptors"))
    for name, res in zip(names, batched):
        assert res["energy"] == pytest.approx(single[name]["energy"], abs=1e-9)
        for key in ("forces", "energies", "descriptors"):
            np.testing.assert_allclose(res[key], single[name][key], atol=1e-9)
    periodic = [n for n in names if "stress" in single[n]]
    batched = mace_adapter.evaluate([CASES[n]() for n in periodic], ("energy", "stress"))
    for name, res in zip(periodic, batched):
        np.testing.assert_allclose(res["stress"], single[name]["stress"], atol=1e-10)


def test_hessian_autograd_matches_finite_differences(mace_adapter):
    atoms = si8()
    auto = mace_adapter.hessian(atoms, rows=[0, 4], method="autograd")
    fd = mace_adapter.hessian(atoms, rows=[0, 4], method="fd", delta=1e-3)
    assert auto.shape == (2, 24) and np.abs(auto).max() > 1e-2
    np.testing.assert_allclose(auto, fd, atol=1e-5)


def test_cutoff_override(mace_adapter):
    atoms = rattled_si(1)
    default = mace_adapter.evaluate([atoms])[0]
    native = mace_adapter.evaluate([atoms], cutoff=mace_adapter.cutoff)[0]
    short = mace_adapter.evaluate([atoms], cutoff=3.0)[0]
    assert native["energy"] == default["energy"]
    assert abs(short["energy"] - default["energy"]) > 1e-4
    with pytest.raises(ConfigurationError, match="native cutoff"):
        mace_adapter.evaluate([atoms], cutoff=mace_adapter.cutoff + 1.0)


def test_float32_agrees_with_float64(mace_adapter, mace_small_path):
    from mlff_calc.models.mace import MACEAdapter

    adapter32 = MACEAdapter.load(mace_small_path, device="cpu")
    assert adapter32.dtype == torch.float32 and adapter32.module.r_max.dtype == torch.float32
    for atoms in (rattled_si(), STRUCTURES["nacl16"]()):
        r32 = adapter32.evaluate([atoms], ("energy", "forces", "stress", "energies"))[0]
        r64 = mace_adapter.evaluate([atoms], ("energy", "forces", "stress", "energies"))[0]
        # float32 sums of ~100 eV totals: compare per atom (measured 1.5e-6 eV/atom)
        assert r32["energy"] / len(atoms) == pytest.approx(r64["energy"] / len(atoms), abs=1e-5)
        np.testing.assert_allclose(r32["energies"], r64["energies"], atol=1e-4)
        np.testing.assert_allclose(r32["forces"], r64["forces"], atol=1e-4)
        np.testing.assert_allclose(r32["stress"], r64["stress"], atol=1e-6)


def test_parameter_groups_cover_every_parameter_once(mace_adapter):
    groups = mace_adapter.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in mace_adapter.module.parameters()}
    assert set(groups) == {"embedding", "interaction_0", "interaction_1", "readout", "reference"}
    assert all(groups[k] for k in ("embedding", "interaction_0", "interaction_1", "readout"))


def test_declarations_and_reference_energies(mace_adapter):
    assert mace_adapter.elements == {1, 6, 8, 11, 14, 17, 29}
    assert mace_adapter.cutoff == pytest.approx(5.0)
    refs = mace_adapter.reference_energies()
    assert sorted(refs) == [1, 6, 8, 11, 14, 17, 29]
    assert [refs[z] for z in sorted(refs)] == pytest.approx([-0.5 - 0.37 * k for k in range(7)], abs=1e-6)


def test_from_module_defaults_to_float32(mace_small_path):
    from mlff_calc.models.mace import MACEAdapter

    adapter = MACEAdapter(torch.load(mace_small_path, weights_only=False), device="cpu")
    assert adapter.dtype == torch.float32 and adapter.model_id == "mace"
    assert np.isfinite(adapter.evaluate([molecule("H2O")], ("energy", "forces"))[0]["forces"]).all()
    with pytest.raises(ModelLoadError, match="not a MACE model"):
        MACEAdapter(torch.nn.Linear(2, 2), device="cpu")


def test_load_errors(tmp_path):
    from mlff_calc.models.mace import MACEAdapter

    with pytest.raises(ModelLoadError, match="does not exist"):
        MACEAdapter.load(tmp_path / "missing.model")
    text = tmp_path / "notes.model"
    text.write_text("not a model\n")
    with pytest.raises(ModelLoadError, match="could not read a MACE model"):
        MACEAdapter.load(text)
    other = tmp_path / "linear.model"
    torch.save(torch.nn.Linear(2, 2), other)
    with pytest.raises(ModelLoadError, match="not a MACE model"):
        MACEAdapter.load(other)


def test_loading_leaves_process_state_alone(mace_small_path):
    from ase.calculators.calculator import BaseCalculator

    from mlff_calc.models.mace import MACEAdapter

    env, dtype, props = dict(os.environ), torch.get_default_dtype(), BaseCalculator.implemented_properties[:]
    adapter = MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")
    adapter.evaluate([rattled_si(1)], ("energy", "forces", "stress"))
    assert dict(os.environ) == env
    assert torch.get_default_dtype() == dtype
    assert BaseCalculator.implemented_properties == props


def test_first_mace_import_leaves_process_state_alone(mace_small_path):
    code = (
        "import os, sys, torch\n"
        "env, dt = dict(os.environ), torch.get_default_dtype()\n"
        "from mlff_calc.models.mace import MACEAdapter\n"
        f"MACEAdapter.load({str(mace_small_path)!r}, device='cpu', dtype='float64')\n"
        "assert 'mace' in sys.modules and 'e3nn' in sys.modules\n"
        "assert dict(os.environ) == env, set(os.environ) ^ set(env)\n"
        "assert torch.get_default_dtype() == dt\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
