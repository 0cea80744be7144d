"""Several calculators in one process: alternating, and from two threads at once.

A float32 CHGNet and a float64 MACE calculator used alternately give the same
numbers as each used alone (no shared default dtype, no cache keyed wrongly), and
two threads calling two calculators concurrently get their own correct results.
"""

from __future__ import annotations

import operator
import sys
import threading

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlff_calc.calculator import MLFFCalculator


def structures():
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.05, seed=21)
    si_b = bulk("Si", "diamond", 5.43, cubic=True)
    si_b.rattle(0.15, seed=22)
    nacl = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    nacl.rattle(0.05, seed=23)
    return {"si": si, "si_b": si_b, "nacl": nacl}


def run(calc, atoms) -> dict:
    """A fresh evaluation (the calculator's ASE cache is cleared first)."""
    calc.reset()
    atoms = atoms.copy()
    atoms.calc = calc
    return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress(), "energies": atoms.get_potential_energies()}


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture(scope="module")
def pair(chgnet_adapter, mace_adapter):
    """(CHGNet float32, MACE float64) calculators and each one's results when used alone."""
    chgnet, mace = MLFFCalculator(chgnet_adapter), MLFFCalculator(mace_adapter)
    alone = {}
    for name, calc in (("chgnet", chgnet), ("mace", mace)):
        alone[name] = {key: run(calc, atoms) for key, atoms in structures().items()}
    return chgnet, mace, alone


def test_alternating_calculators_match_each_alone(pair):
    chgnet, mace, alone = pair
    dtype0 = torch.get_default_dtype()
    for _ in range(2):
        for key, atoms in structures().items():
            assert same(run(chgnet, atoms), alone["chgnet"][key]), f"CHGNet result for {key} changed after using MACE"
            assert same(run(mace, atoms), alone["mace"][key]), f"MACE result for {key} changed after using CHGNet"
            assert torch.get_default_dtype() == dtype0
    assert chgnet.adapter.compute([structures()["si"]])["energy"].dtype == torch.float32
    assert mace.adapter.compute([structures()["si"]])["energy"].dtype == torch.float64


def test_one_atoms_object_moving_between_calculators(pair):
    """ASE's result cache belongs to each calculator: switching ``atoms.calc`` never mixes them."""
    chgnet, mace, alone = pair
    atoms = structures()["si"]
    for calc, name in ((chgnet, "chgnet"), (mace, "mace"), (chgnet, "chgnet"), (mace, "mace")):
        atoms.calc = calc
        assert atoms.get_potential_energy() == alone[name]["si"]["energy"]
    atoms.positions[0] += 0.05  # changed in place: both calculators must notice
    for calc in (chgnet, mace):
        atoms.calc = calc
        fresh = run(calc, atoms)
        assert atoms.get_potential_energy() == fresh["energy"]


def hammer(jobs, repeats: int) -> list[str]:
    """Run ``(calc, key, atoms, expected)`` jobs in one thread each, ``repeats`` times; return problems."""
    problems: list[str] = []
    barrier = threading.Barrier(len(jobs))

    def work(calc, key, atoms, expected):
        barrier.wait()
        for k in range(repeats):
            try:
                got = run(calc, atoms)
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                problems.append(f"{key} call {k}: {type(exc).__name__}: {exc}")
                continue
            if not same(got, expected):
                problems.append(f"{key} call {k}: wrong result (energy {got['energy']:.6f}, expected {expected['energy']:.6f})")

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so a race shows within a few calls
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return problems


def test_two_threads_two_models(pair):
    """CHGNet and MACE in two threads at once: each gets exactly its single-threaded result."""
    chgnet, mace, alone = pair
    atoms = structures()
    jobs = [(chgnet, "chgnet/si", atoms["si"], alone["chgnet"]["si"]), (mace, "mace/nacl", atoms["nacl"], alone["mace"]["nacl"])]
    assert hammer(jobs, repeats=15) == []
    jobs = [(chgnet, "chgnet/nacl", atoms["nacl"], alone["chgnet"]["nacl"]), (mace, "mace/si", atoms["si"], alone["mace"]["si"])]
    assert hammer(jobs, repeats=15) == []


@pytest.mark.parametrize("family,hooked,kind", [("chgnet", "mlp", "pre"), ("m3gnet", "model.final_layer", "post")])
def test_two_threads_sharing_one_adapter(request, family, hooked, kind):
    """Two threads calling one CHGNet/M3GNet adapter each get their own per-atom outputs.

    Both adapters pass per-atom outputs from a forward hook to ``_forward``
    (``self._captured``). While that was one dict on the adapter, a second
    thread's forward running between the first thread's hook and its ``pop`` gave
    the first thread the other structure's tensors (silently wrong M3GNet
    energies) or ``KeyError: 'atomic'``. It is now thread-local (base.py). An
    extra hook makes the two threads meet right after the adapter's hook, so the
    dangerous interleaving happens on every run, not by chance.
    """
    adapter = request.getfixturevalue(f"{family}_adapter")
    props = ("energy", "forces", "descriptors")
    atoms = structures()
    jobs = {"si": atoms["si"], "nacl": atoms["nacl"]}
    expected = {key: adapter.evaluate([a], props)[0] for key, a in jobs.items()}
    barrier = threading.Barrier(2, timeout=5)

    def meet(*_args):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # a serialising fix never lets both threads in at once
            pass

    module = operator.attrgetter(hooked)(adapter.module)
    handle = module.register_forward_pre_hook(meet) if kind == "pre" else module.register_forward_hook(meet)
    got: dict = {}

    def work(key):
        try:
            got[key] = adapter.evaluate([jobs[key]], props)[0]
        except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
            got[key] = exc

    try:
        threads = [threading.Thread(target=work, args=(key,)) for key in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        handle.remove()
    problems = []
    for key, res in got.items():
        if isinstance(res, Exception):
            problems.append(f"{key}: {type(res).__name__}: {res}")
        elif "descriptors" not in res or res["descriptors"].shape != expected[key]["descriptors"].shape:
            problems.append(f"{key}: descriptors missing or of another structure")
        elif not same({k: res[k] for k in ("energy", "forces", "descriptors")}, {k: expected[key][k] for k in ("energy", "forces", "descriptors")}):
            problems.append(f"{key}: wrong numbers")
    assert problems == [], problems


def test_cpu_worker_pool_matches_single_calls(chgnet_adapter, m3gnet_adapter, mace_adapter):
    """``evaluate(..., workers=2)`` spreads structures over threads: same numbers as one by one.

    Also: the pool's one-intra-op-thread setting stays in its worker threads
    (the caller's ``torch.get_num_threads()`` is unchanged).
    """
    atoms = list(structures().values()) * 2
    for adapter in (chgnet_adapter, m3gnet_adapter, mace_adapter):
        single = [adapter.evaluate([a], ("energy", "forces", "stress"))[0] for a in atoms]
        threads0 = torch.get_num_threads()
        pooled = adapter.evaluate(atoms, ("energy", "forces", "stress"), workers=2)
        assert torch.get_num_threads() == threads0
        for k, (p, s) in enumerate(zip(pooled, single)):
            assert same({key: p[key] for key in ("energy", "forces", "stress")}, {key: s[key] for key in ("energy", "forces", "stress")}), f"{adapter.family} structure {k}"


# one calculator, many threads ------------------------------------------------------


def si_cells() -> dict:
    """An 8- and a 16-atom Si cell: results of one read as the other's have the wrong shape or energy."""
    small = bulk("Si", "diamond", 5.43, cubic=True)
    small.rattle(0.05, seed=31)
    big = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 1, 1))
    big.rattle(0.05, seed=32)
    return {"si8": small, "si16": big}


def run_with_layers(calc, atoms) -> dict:
    """:func:`run` plus every result the layers provide, each read through ASE's ``get_property``."""
    out = run(calc, atoms)
    atoms = atoms.copy()
    atoms.calc = calc
    for layer in calc.layers:
        for key in layer.provides[:2]:
            out[key] = calc.get_property(key, atoms)
    return out


def hammer_one(calc, threads: int = 6, repeats: int = 5) -> list[str]:
    """``threads`` threads share ``calc``, alternating Si8 and Si16; each call must equal the serial one."""
    cells = si_cells()
    expected = {key: run_with_layers(calc, atoms) for key, atoms in cells.items()}
    problems: list[str] = []
    barrier = threading.Barrier(threads)

    def work(t):
        key = ("si8", "si16")[t % 2]
        barrier.wait()
        for k in range(repeats):
            try:
                got = run_with_layers(calc, cells[key])
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                problems.append(f"thread {t} ({key}) call {k}: {type(exc).__name__}: {exc}")
                continue
            if not same(got, expected[key]):
                problems.append(f"thread {t} ({key}) call {k}: energy {got['energy']:.6f}, forces {np.shape(got['forces'])}; expected {expected[key]['energy']:.6f}")

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=600)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in pool), "a thread hung"
    return problems


@pytest.mark.parametrize("name", ["chgnet", "mace+softening", "mace+ltau", "mace+rewiring"])
def test_one_calculator_six_threads(request, name):
    """6 threads x 5 calls on one calculator (ASE's get_* calls) give exactly the serial results.

    Before, ``calculate()`` wrote ``self.atoms``/``self.results`` with no lock, so a
    16-atom cell could get the 8-atom cell's energy and an (8, 3) force array.
    """
    from .conftest import build_calculator

    calc = build_calculator(request, name)
    assert hammer_one(calc) == []


def test_ltau_layer_is_reentrant(request):
    """Concurrent ``evaluate`` calls on one on-demand LTAU calculator, some asking for the uncertainty.

    The layer kept what it learnt in ``before`` (descriptors asked for? uncertainty
    wanted?) on itself until ``after``; a concurrent call in between changed it, so
    a call that asked for the uncertainty could get none, or get the descriptors
    it did not ask for.
    """
    from mlff_calc.layers.ltau import LTAULayer

    from .conftest import build_calculator

    base = build_calculator(request, "mace+ltau")
    calc = MLFFCalculator(base.adapter, layers=[LTAULayer(base.layers[0].ltau, on_demand=True)])
    cells = si_cells()
    asks = {"plain": ("energy", "forces"), "uq": ("energy", "forces", "forces_uncertainty"), "desc": ("energy", "descriptors")}
    expected = {(key, ask): calc.evaluate([atoms], props)[0] for key, atoms in cells.items() for ask, props in asks.items()}
    assert "forces_uncertainty" not in expected["si8", "plain"] and "descriptors" not in expected["si8", "uq"]
    problems: list[str] = []
    barrier = threading.Barrier(6)

    def work(t):
        key, ask = ("si8", "si16")[t % 2], tuple(asks)[t % 3]
        barrier.wait()
        for k in range(5):
            got = calc.evaluate([cells[key]], asks[ask])[0]
            if sorted(got) != sorted(expected[key, ask]) or not same(got, expected[key, ask]):
                problems.append(f"thread {t} {key}/{ask} call {k}: keys {sorted(got)}")

    pool = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=600)
    finally:
        sys.setswitchinterval(interval)
    assert problems == []
