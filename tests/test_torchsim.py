"""torch-sim interface: torch-sim's own validation, agreement with the ASE calculator, batched MD and relaxation."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from helpers import rattled_nacl, rattled_si

ts = pytest.importorskip("torch_sim")

from mlff_calc.calculator import MLFFCalculator  # noqa: E402
from mlff_calc.torchsim import TorchSimModel, state_to_atoms  # noqa: E402


@pytest.fixture(scope="module")
def mace_si_fe():
    """A small MACE covering Si and Fe, the elements of torch-sim's validation systems."""
    from mlff_calc.models.mace import MACEAdapter
    from mlff_calc.models.mace_build import build_small_mace

    return MACEAdapter(build_small_mace(atomic_numbers=[11, 14, 17, 26]), model_id="mace-small-sife", device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def student_si_fe():
    from mlff_calc.models.student import StudentAdapter

    return StudentAdapter.create([11, 14, 17, 26], dtype="float64", architecture={"channels": 8, "radial_mlp": [8]}, device="cpu")


def _adapter(request, name):
    fixtures = {"chgnet": "chgnet_adapter", "m3gnet": "m3gnet_adapter", "mace": "mace_si_fe", "student": "student_si_fe"}
    return request.getfixturevalue(fixtures[name])


FAMILIES = ["chgnet", "m3gnet", "mace", "student"]


@pytest.mark.parametrize("name", FAMILIES)
def test_passes_torch_sims_validation(request, name):
    from torch_sim.models.interface import validate_model_outputs

    adapter = _adapter(request, name)
    validate_model_outputs(TorchSimModel(adapter), adapter.device, adapter.dtype)


def _agree(model, calc, frames, dtype):
    state = ts.io.atoms_to_state(frames, torch.device("cpu"), dtype)
    out = model(state)
    assert out["energy"].shape == (len(frames),) and out["stress"].shape == (len(frames), 3, 3)
    assert out["energy"].dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    start = 0
    for b, atoms in enumerate(frames):
        ref_e, ref_f, ref_s = atoms.copy(), None, None
        ref_e.calc = calc
        energy, ref_f, ref_s = ref_e.get_potential_energy(), ref_e.get_forces(), ref_e.get_stress(voigt=False)
        assert float(out["energy"][b]) == pytest.approx(energy, rel=tol, abs=tol)
        np.testing.assert_allclose(out["forces"][start : start + len(atoms)].numpy(), ref_f, rtol=0, atol=10 * tol * max(1.0, np.abs(ref_f).max()))
        np.testing.assert_allclose(out["stress"][b].numpy(), ref_s, rtol=0, atol=10 * tol * max(0.01, np.abs(ref_s).max()))
        start += len(atoms)


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_state_agrees_with_the_ase_calculator(request, name):
    adapter = _adapter(request, name)
    _agree(TorchSimModel(adapter), MLFFCalculator(adapter), [rattled_si(2), rattled_nacl(), bulk("Si")], adapter.dtype)


@pytest.mark.parametrize("name", ["chgnet", "mace"])
def test_softening_layer_acts_as_in_the_calculator(request, name):
    from mlff_calc.layers.softening import SofteningLayer

    adapter = _adapter(request, name)
    model = TorchSimModel(adapter, [SofteningLayer(1.3)])
    _agree(model, MLFFCalculator(adapter, [SofteningLayer(1.3)]), [rattled_si(2), rattled_nacl()], adapter.dtype)
    plain = TorchSimModel(adapter)(ts.io.atoms_to_state([rattled_si(2)], torch.device("cpu"), adapter.dtype))
    scaled = model(ts.io.atoms_to_state([rattled_si(2)], torch.device("cpu"), adapter.dtype))
    torch.testing.assert_close(scaled["forces"], 1.3 * plain["forces"], rtol=1e-6, atol=1e-8)


def test_state_round_trip_keeps_every_system():
    frames = [rattled_si(2), rattled_nacl(), bulk("Cu")]
    back = state_to_atoms(ts.io.atoms_to_state(frames, torch.device("cpu"), torch.float64))
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-12)
        np.testing.assert_allclose(a.cell.array, b.cell.array, atol=1e-12)
        assert b.pbc.all()


def test_batched_nve_conserves_energy(chgnet_adapter):
    model = TorchSimModel(chgnet_adapter)
    frames = [rattled_si(2, amp=0.05, seed=k) for k in range(2)]
    state = ts.io.atoms_to_state(frames, torch.device("cpu"), torch.float32)
    units = ts.units.MetalUnits  # time in ps
    init_fn, step_fn = ts.nve(model=model, dt=torch.tensor(0.001 * units.time), kT=torch.tensor(300 * units.temperature), seed=0)
    state = init_fn(state)
    totals = []
    for _ in range(30):
        state = step_fn(state)
        kinetic = ts.calc_kinetic_energy(momenta=state.momenta, masses=state.masses, system_idx=state.system_idx)
        totals.append((state.energy + kinetic).double().numpy())
    totals = np.array(totals)
    assert (kinetic > 1.0).all()  # eV: 64 atoms each, started at 300 K
    assert np.abs(totals - totals[0]).max() < 5e-3  # eV per 64-atom system over 30 fs


def test_batched_relaxation_converges(student_si_fe):
    model = TorchSimModel(student_si_fe)
    frames = [rattled_si(1, amp=0.1, seed=k) for k in range(4)]
    final = ts.optimize(system=frames, model=model, optimizer=ts.optimizers.fire, convergence_fn=ts.generate_force_convergence_fn(force_tol=1e-3, include_cell_forces=False), max_steps=500)
    calc = MLFFCalculator(student_si_fe)
    for atoms in state_to_atoms(final):
        atoms.calc = calc
        assert np.abs(atoms.get_forces()).max() < 2e-3
