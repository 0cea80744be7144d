"""Calculators pickle and deep-copy, layers included, and give bitwise the same numbers afterwards.

Clients copy calculators: joblib/loky (matcalc's ``calc_many(n_jobs=2)``) pickles
one into each worker process, multiprocessing does the same, and ASE NEB users
give every image its own ``copy.deepcopy(calc)``. Before, both failed with
``cannot pickle '_thread._local'`` (the adapter's per-thread scratch space), then
on the CPU worker pool, the LTAU lookup thread and matgl's sympy functions.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from ase.build import bulk

from mlff_calc.calculator import MLFFCalculator

from .conftest import CALCULATORS, build_calculator

PROPS = ("energy", "forces", "stress", "energies")


def frames() -> list:
    out = []
    for seed in (40, 41):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05, seed=seed)
        out.append(atoms)
    return out


def same(a, b) -> bool:
    """Bitwise equality of two results (nested dicts, arrays, numbers)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def used(calc) -> list[dict]:
    """Results of ``calc`` after it made every piece of runtime state: a worker pool, ASE's cache, a lookup thread."""
    calc.adapter.evaluate(frames(), ("energy", "forces"), workers=2)  # leaves a CPU worker pool on the adapter
    atoms = frames()[0]
    atoms.calc = calc
    atoms.get_forces()
    return calc.evaluate(frames(), PROPS)


def assert_copies_agree(calc) -> None:
    want = used(calc)
    for how, twin in (("pickle", pickle.loads(pickle.dumps(calc))), ("deepcopy", copy.deepcopy(calc))):
        assert twin.adapter is not calc.adapter and all(a is not b for a, b in zip(twin.layers, calc.layers))
        assert [layer.name for layer in twin.layers] == [layer.name for layer in calc.layers]
        got = twin.evaluate(frames(), PROPS)
        for k, (w, g) in enumerate(zip(want, got)):
            assert same(w, g), f"{how}: structure {k} differs"
        atoms = frames()[1]
        atoms.calc = twin
        assert atoms.get_potential_energy() == want[1]["energy"], how
    assert same(calc.evaluate(frames(), PROPS), want)  # the original is untouched


@pytest.mark.parametrize("name", CALCULATORS)
def test_pickle_and_deepcopy(request, name):
    assert_copies_agree(build_calculator(request, name))


def test_student_and_fine_tuned_models(tmp_path, mace_small_path):
    from helpers import si8_frames

    from mlff_calc.finetune import finetune, load_finetuned
    from mlff_calc.layers.softening import SofteningLayer
    from mlff_calc.models.mace import MACEAdapter
    from mlff_calc.models.student import StudentAdapter
    from mlff_calc.softening import DFTDataset, DFTStructure

    student = StudentAdapter.create([14], device="cpu", dtype="float32")
    assert_copies_agree(MLFFCalculator(student, layers=[SofteningLayer(1.2, mode="total")]))

    base = MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")
    data = []
    for k, atoms in enumerate(si8_frames(2, amp=0.05, seed=3)):
        res = base.evaluate([atoms], ("energy", "forces"))[0]
        data.append(DFTStructure(atoms, 1.3 * res["forces"], energy=res["energy"], label=f"si-{k}"))
    finetune(base, DFTDataset(data, "synthetic"), trainable="readout", epochs=1, progress=False, out_dir=tmp_path / "ft")
    tuned = load_finetuned(tmp_path / "ft", device="cpu", dtype="float64")
    assert tuned.finetune_info is not None
    assert_copies_agree(MLFFCalculator(tuned))


def test_joblib_loky_two_workers(request):
    """joblib's default backend (loky), two worker processes, each unpickling the calculator."""
    joblib = pytest.importorskip("joblib")
    calc = build_calculator(request, "mace+ltau")
    want = used(calc)
    jobs = (joblib.delayed(MLFFCalculator.evaluate)(calc, [atoms], PROPS) for atoms in frames() * 2)
    got = joblib.Parallel(n_jobs=2)(jobs)
    for k, res in enumerate(got):
        assert same(res[0], want[k % 2]), f"job {k}"
    assert {res[0]["forces_uncertainty_max"] for res in got} == {w["forces_uncertainty_max"] for w in want}


def test_neb_images_with_deep_copies(chgnet_adapter):
    """ASE NEB: one ``copy.deepcopy(calc)`` per image, each giving the original calculator's numbers."""
    from ase.mep import NEB

    from mlff_calc.layers.softening import SofteningLayer

    calc = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(1.2)])
    start = bulk("Si", "diamond", 5.43, cubic=True)
    end = start.copy()
    end.positions[0] += [0.3, 0.2, 0.1]
    images = [start.copy() for _ in range(4)] + [end]
    neb = NEB(images)
    neb.interpolate()
    for image in images:
        image.calc = copy.deepcopy(calc)
    forces = neb.get_forces()
    assert forces.shape == (3 * len(start), 3) and np.isfinite(forces).all()
    for image in images[1:-1]:
        alone = calc.evaluate([image.copy()], ("energy", "forces"))[0]
        assert image.get_potential_energy() == alone["energy"]
        np.testing.assert_array_equal(image.get_forces(), alone["forces"])
