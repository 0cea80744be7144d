"""The smooth switch that takes MACE edges to zero at a cutoff below the native one.

``MACEAdapter`` multiplies every edge's radial features by ``cutoff_switch`` (1 up to
``r - w``, 0 at ``r`` with zero first and second derivatives) when a graph is built at
``r < r_max`` (the rewiring layer's r*), so energy and forces are continuous when a pair
crosses r*. Small float64 MACE of the top-level conftest (rc = 5.0 Å).
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from ase import Atoms
from test_rewiring import si, training_set
from test_rewiring_md import nve

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import ConfigurationError
from mlff_calc.layers.rewiring import RewiringLayer
from mlff_calc.models.mace import SWITCH_WIDTH_A, MACEAdapter, cutoff_switch
from mlff_calc.rewiring import SpectrumReference

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")

PROPS = ("energy", "forces", "stress")


def dimer(d):
    return Atoms("Si2", positions=[[0, 0, 0], [d, 0, 0]], cell=[20, 20, 20], pbc=True)


def trimer(d):
    """Si3 whose pair 0-2 is at distance ``d`` along y, the others at fixed shorter distances."""
    return Atoms("Si3", positions=[[0, 0, 0], [2.3, 0.4, 0.1], [0.2, d, -0.3]], cell=[20, 20, 20], pbc=True)


def hooks(adapter) -> int:
    return len(adapter.module.radial_embedding._forward_hooks)


# the switch function ---------------------------------------------------------------------------
def test_switch_is_one_inside_zero_at_the_cutoff_and_c2():
    r, w = 4.0, 0.5
    d = torch.linspace(0.0, r, 4001, dtype=torch.float64)
    s = cutoff_switch(d, r, w)
    assert bool((s[d <= r - w] == 1.0).all()) and float(s[-1]) == 0.0
    assert bool((torch.diff(s) <= 0).all())  # monotone in the window
    for end in (r - w, r):
        x = torch.tensor(end, dtype=torch.float64, requires_grad=True)
        (d1,) = torch.autograd.grad(cutoff_switch(x, r, w), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1, x)
        d1 = d1.detach()
        assert abs(float(d1)) < 1e-12 and abs(float(d2)) < 1e-9, (end, float(d1), float(d2))


def test_switch_window_and_width(mace_adapter, monkeypatch):
    assert mace_adapter.switch_width_A == SWITCH_WIDTH_A == 0.25
    assert mace_adapter._switch_window(mace_adapter.cutoff) is None  # native: never switched
    assert mace_adapter._switch_window(3.0) == (3.0, 0.25)
    assert mace_adapter._switch_window(0.2) == (0.2, 0.2)  # never wider than r itself
    monkeypatch.setattr(mace_adapter, "switch_width_A", 0.0)
    assert mace_adapter._switch_window(3.0) is None  # 0: the sharp cut
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="switch_width_A"):
            mace_adapter.switch_width_A = bad


def test_hook_multiplies_the_envelope_when_mace_returns_it_separately(mace_adapter):
    """``RadialEmbeddingBlock(apply_cutoff=False)`` returns (radial, envelope); interactions multiply by the envelope."""
    lengths = torch.tensor([[1.0], [3.8], [4.0]], dtype=torch.float64)
    feats, env = torch.ones(3, 4, dtype=torch.float64), torch.full((3, 1), 0.5, dtype=torch.float64)
    mace_adapter._captured["switch"] = (4.0, 0.5)
    try:
        f1, e1 = mace_adapter._apply_switch(None, (lengths,), {}, (feats, env))
        f2, e2 = mace_adapter._apply_switch(None, (), {"edge_lengths": lengths}, (feats, None))
    finally:
        mace_adapter._captured.clear()
    s = cutoff_switch(lengths, 4.0, 0.5)
    assert torch.equal(f1, feats) and torch.equal(e1, env * s)
    assert torch.equal(f2, feats * s) and e2 is None
    assert mace_adapter._apply_switch(None, (lengths,), {}, (feats, None)) is None  # no switch on this thread


# the model with the switch ------------------------------------------------------------------------
def test_energy_is_continuous_as_a_pair_crosses_the_reduced_cutoff(mace_adapter, monkeypatch):
    r = 3.0

    def energies(cutoff, ds):
        return [r_["energy"] for r_ in mace_adapter.evaluate([dimer(d) for d in ds], ("energy",), cutoff=cutoff, workers=1)]

    below, above = energies(r, (r - 1e-6, r + 1e-6))
    far = energies(r, (6.0,))[0]  # no edge at all
    assert abs(below - above) < 1e-10 and abs(below - far) < 1e-10
    # inside r - w the switch is exactly 1: same energy as the sharp cut, bit for bit
    inside = energies(r, (2.3, 2.45))
    monkeypatch.setattr(mace_adapter, "switch_width_A", 0.0)
    assert energies(r, (2.3, 2.45)) == inside
    sharp_below, sharp_above = energies(r, (r - 1e-6, r + 1e-6))
    assert abs(sharp_below - sharp_above) > 1e-4  # what the switch removes


@pytest.mark.parametrize("d", [2.6, 2.75, 2.8, 2.86, 2.92, 2.97, 2.999])
def test_forces_are_minus_the_energy_gradient_across_the_window(mace_adapter, d):
    """Central differences of the energy match the forces while the pair 0-2 moves through [r - w, r] (w = 0.25 Å)."""
    r, h = 3.0, 1e-4
    atoms = trimer(d)
    res = mace_adapter.evaluate([atoms], ("energy", "forces"), cutoff=r)[0]
    displaced = []
    for k in range(3):
        for sign in (1.0, -1.0):
            a = atoms.copy()
            a.positions[2, k] += sign * h
            displaced.append(a)
    e = [x["energy"] for x in mace_adapter.evaluate(displaced, ("energy",), cutoff=r, workers=1)]
    fd = -np.array([(e[2 * k] - e[2 * k + 1]) / (2 * h) for k in range(3)])
    np.testing.assert_allclose(res["forces"][2], fd, rtol=1e-5, atol=1e-6)
    if d < r - 0.1:
        assert np.abs(res["forces"][2]).max() > 1e-3  # not trivially zero


def test_hessian_in_the_window_autograd_matches_finite_differences(mace_adapter):
    atoms = trimer(2.87)  # pair 0-2 inside the window (2.75, 3.0)
    h_ad = mace_adapter.hessian(atoms, method="autograd", cutoff=3.0)
    h_fd = mace_adapter.hessian(atoms, method="fd", delta=1e-4, cutoff=3.0)
    np.testing.assert_allclose(h_ad, h_fd, atol=1e-5)
    assert hooks(mace_adapter) == 0


def test_native_cutoff_results_are_bitwise_unchanged(mace_adapter):
    atoms = si(2, rattle=0.05)
    before = mace_adapter.evaluate([atoms], PROPS)[0]
    stop = threading.Event()

    def switched_calls():  # the hook is registered while these run
        while not stop.is_set():
            mace_adapter.evaluate([atoms], ("energy", "forces"), cutoff=4.0)

    worker = threading.Thread(target=switched_calls)
    worker.start()
    try:
        during = [mace_adapter.evaluate([atoms], PROPS)[0] for _ in range(3)]
    finally:
        stop.set()
        worker.join()
    after = mace_adapter.evaluate([atoms], PROPS, cutoff=mace_adapter.cutoff)[0]
    for res in (*during, after):
        for key in PROPS:
            assert np.array_equal(np.asarray(res[key]), np.asarray(before[key])), key
    assert hooks(mace_adapter) == 0  # removed after the last switched call


def test_worker_threads_apply_the_switch_once(mace_adapter):
    structures = [si(2, rattle=0.05, seed=s) for s in (1, 2)]
    single = [mace_adapter.evaluate([a], ("energy", "forces"), cutoff=4.0)[0] for a in structures]
    pooled = mace_adapter.evaluate(structures, ("energy", "forces"), cutoff=4.0, workers=2)
    for a, b in zip(single, pooled):
        assert a["energy"] == b["energy"] and np.array_equal(a["forces"], b["forces"])


def test_a_module_that_bypasses_the_hook_falls_back_to_the_eager_one(mace_small_path, monkeypatch):
    """As a compiled student's copy: switched calls must not silently run unswitched."""
    adapter = MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")
    atoms = trimer(2.8)
    want = adapter.evaluate([atoms], ("energy", "forces"), cutoff=3.0)[0]
    other = copy.deepcopy(adapter.module)
    monkeypatch.setattr(adapter, "_call_module", lambda data: other(data, compute_force=False, compute_stress=False, training=False))
    got = adapter.evaluate([atoms], ("energy", "forces"), cutoff=3.0)[0]
    assert adapter._switch_bypassed
    assert got["energy"] == want["energy"] and np.array_equal(got["forces"], want["forces"])


# MD with r* frozen -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(mace_adapter):
    return SpectrumReference.build(training_set(), adapter=mace_adapter, source="8 rattled Si64")


def test_nve_with_pairs_crossing_frozen_r_star_conserves_energy_like_the_plain_model(reference, mace_adapter, monkeypatch):
    """r* at the grid value (not centred), so pairs do cross it: sharp, the energy jumps; switched, it does not."""
    start = si(2, scale=0.9, rattle=0.0)
    layer = RewiringLayer(reference, centre=False)
    r_star = layer.refine(start).r_star
    assert r_star < reference.cutoff
    steps, temperature = 50, 300.0
    e_plain, _, _ = nve(MLFFCalculator(mace_adapter), start, steps, temperature, reference.cutoff)
    calc = MLFFCalculator(mace_adapter, [layer])
    assert calc.parameters["layers"][0]["switch_width_A"] == SWITCH_WIDTH_A
    e_switched, seen, crossed = nve(calc, start, steps, temperature, r_star)
    assert set(seen) == {r_star} and layer.n_refinements == 1
    assert crossed  # the case the switch is for
    monkeypatch.setattr(mace_adapter, "switch_width_A", 0.0)
    e_sharp, _, crossed_sharp = nve(MLFFCalculator(mace_adapter, [layer]), start, steps, temperature, r_star)
    assert crossed_sharp
    dev = {name: float(np.abs(e - e[0]).max()) for name, e in (("plain", e_plain), ("switched", e_switched), ("sharp", e_sharp))}
    assert dev["switched"] < 5 * max(dev["plain"], 1e-7), dev  # eV/atom over 50 fs, float64: same order as plain
    assert dev["sharp"] > 5 * dev["switched"], dev
