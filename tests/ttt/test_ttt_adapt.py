"""Test-time training: what changes, what is restored, and that the prior loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import si8


def _all_params(model) -> dict[str, torch.Tensor]:
    out = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    out.update({f"prior_head.{n}": p.detach().clone() for n, p in model.prior_head.named_parameters()})
    return out


def test_only_declared_groups_change(ttt_calc, shifted):
    model = ttt_calc.adapter
    before = _all_params(model)
    ttt_calc.adapt(shifted)
    after = _all_params(model)
    declared = set(model.named_group_parameters(model.adapt_groups))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "adaptation changed nothing"
    assert changed <= declared
    assert not any(n.startswith("prior_head.") for n in changed)
    assert any(n.startswith("interactions.0.") for n in changed) and not any(n.startswith("interactions.1.") for n in changed)


def test_prior_loss_decreases(ttt_calc, shifted):
    ttt_calc.layers[0].config.batch_size = len(shifted)  # full batch: every step sees the same loss
    history = ttt_calc.adapt(shifted)["ttt"]
    assert history["prior_loss_final"] < history["prior_loss_initial"]
    losses = history["step_losses"]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_reset_is_bitwise(ttt_calc, shifted):
    atoms = shifted[0].copy()
    atoms.calc = ttt_calc
    before = _all_params(ttt_calc.adapter)
    f0 = atoms.get_forces().copy()
    ttt_calc.adapt(shifted)
    f1 = atoms.get_forces().copy()
    assert np.abs(f1 - f0).max() > 1e-6  # the cached result was dropped and the model moved
    ttt_calc.reset_layers()
    assert all(torch.equal(p, before[n]) for n, p in _all_params(ttt_calc.adapter).items())
    np.testing.assert_array_equal(atoms.get_forces(), f0)
    assert not ttt_calc.layers[0].adapted


def test_reference_predictions_unchanged_without_adaptation(ttt_calc, ttt_folder):
    """The two-head model's reference head is exactly the saved student."""
    from mlff_calc.models.student import StudentAdapter

    plain = StudentAdapter.load(ttt_folder[1], device="cpu")
    a = si8()
    a.rattle(0.05, seed=3)
    got = ttt_calc.evaluate([a])[0]
    want = plain.evaluate([a])[0]
    np.testing.assert_array_equal(got["forces"], want["forces"])
    assert got["energy"] == want["energy"]


def test_weights_never_change_during_md(ttt_calc, shifted):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    ttt_calc.adapt(shifted)
    before = _all_params(ttt_calc.adapter)
    atoms = si8()
    atoms.rattle(0.05, seed=4)
    atoms.calc = ttt_calc
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(5)
    assert all(torch.equal(p, before[n]) for n, p in _all_params(ttt_calc.adapter).items())


def test_nve_with_adapted_model_conserves_energy(ttt_calc, shifted):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    ttt_calc.adapt(shifted)
    atoms = si8()
    atoms.calc = ttt_calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    totals = []
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=5)
    dyn.run(100)
    kinetic = 1.5 * len(atoms) * units.kB * 300
    assert np.ptp(totals) < 0.02 * kinetic


def test_prior_head_forces_are_gradients(ttt_calc):
    """Prior-head forces are -dE_prior/dx (central differences, float64)."""
    from helpers import fd_forces

    from mlff_calc.calculator import MLFFCalculator

    model = ttt_calc.adapter
    a = si8()
    a.rattle(0.05, seed=7)
    with model.using("prior"):
        forces = model.evaluate([a])[0]["forces"]
        fd = fd_forces(MLFFCalculator(model), a, h=1e-4, indices=[0, 3, 5])
    assert np.abs(forces).max() > 0.01
    np.testing.assert_allclose(forces[[0, 3, 5]], fd, atol=1e-6)


def test_head_switch_restored_on_error(ttt_calc):
    model = ttt_calc.adapter
    with pytest.raises(RuntimeError):
        with model.using("prior"):
            raise RuntimeError("boom")
    assert model.head == "reference"
