"""``StudentAdapter.compile()``: same numbers as eager, eager kept where double backward is needed.

One compiled student for the module (compiling takes tens of seconds on a CPU, minutes
on a busy one: marked slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import require_backend, si8

require_backend("mace", "mace")


@pytest.fixture(scope="module")
def pair():
    from mlff_calc.models.student import StudentAdapter

    arch = {"channels": 8, "num_bessel": 6, "radial_mlp": [16]}
    eager = StudentAdapter.create([14], dtype="float64", architecture=arch, seed=1)
    compiled = StudentAdapter.create([14], dtype="float64", architecture=arch, seed=1).compile()
    return eager, compiled


def _atoms(k):
    atoms = si8() * (2, 1, 1) if k else si8()
    atoms.rattle(0.05, seed=k)
    return atoms


@pytest.mark.slow
def test_compiled_matches_eager(pair):
    eager, compiled = pair
    for k in range(2):  # two sizes: dynamic shapes, no recompile needed for correctness
        a = eager.evaluate([_atoms(k)], ("energy", "forces", "stress"))[0]
        b = compiled.evaluate([_atoms(k)], ("energy", "forces", "stress"))[0]
        assert abs(a["energy"] - b["energy"]) < 1e-9
        np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-9)
        np.testing.assert_allclose(b["stress"], a["stress"], atol=1e-10)
        np.testing.assert_allclose(b["energies"], a["energies"], atol=1e-10)


@pytest.mark.slow
def test_compiled_batch_with_descriptors_matches_eager(pair):
    """Two structures in one pass, descriptors from the same graph, handed to on_descriptors after it."""
    eager, compiled = pair
    structures = [_atoms(0), _atoms(1)]
    seen = []
    a = eager.evaluate(structures, ("energy", "forces", "stress", "descriptors"), workers=1)
    b = compiled.evaluate(structures, ("energy", "forces", "stress", "descriptors"), workers=1, on_descriptors=lambda *args: seen.append(args) or "job")
    assert len(seen) == 1 and seen[0][0].shape == (24, a[0]["descriptors"].shape[1]) and seen[0][2] == [8, 16]
    for x, y in zip(a, b):
        assert y["descriptor_jobs"][0] == "job"
        for key in ("forces", "stress", "descriptors"):
            np.testing.assert_allclose(y[key], x[key], atol=1e-9)


@pytest.mark.slow
def test_calls_below_the_native_cutoff_run_eager(pair):
    """The rewiring switch hooks the eager module; such calls must give the eager numbers exactly."""
    eager, compiled = pair
    atoms = _atoms(1)
    a = eager.evaluate([atoms], ("energy", "forces", "stress"), cutoff=4.0)[0]
    b = compiled.evaluate([atoms], ("energy", "forces", "stress"), cutoff=4.0)[0]
    assert a["energy"] == b["energy"] and np.array_equal(a["forces"], b["forces"])


@pytest.mark.slow
def test_double_backward_uses_eager(pair):
    eager, compiled = pair
    atoms = _atoms(0)
    np.testing.assert_allclose(compiled.hessian(atoms, rows=[0, 4]), eager.hessian(atoms, rows=[0, 4]), atol=1e-10)
    out = compiled.compute([atoms], create_graph=True)
    assert out["forces"].requires_grad


def test_changed_weights_fall_back_to_eager():
    from mlff_calc.models.student import StudentAdapter

    student = StudentAdapter.create([14], dtype="float64", architecture={"channels": 8, "num_bessel": 6, "radial_mlp": [16]}, seed=2)
    student._compiled = object()  # never called: the weight check comes first
    student._compiled_versions = student._weight_versions()
    with torch.no_grad():
        next(student.module.parameters()).add_(0.01)
    student.evaluate([_atoms(0)], ("energy", "forces"))
    assert student._compiled is None


def test_fast_architecture_builds_and_evaluates():
    from mlff_calc.distill import FAST_ARCHITECTURE
    from mlff_calc.models.student import StudentAdapter

    student = StudentAdapter.create([14], architecture=FAST_ARCHITECTURE)
    assert sum(p.numel() for p in student.module.parameters()) == 712
    out = student.evaluate([_atoms(0)], ("energy", "forces", "stress"))[0]
    assert np.isfinite(out["energy"]) and out["forces"].shape == (8, 3)
