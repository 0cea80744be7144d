"""Graphs too large to evaluate are refused with a clear error before any forward pass.

A lattice with a nearest-neighbour distance of 0.6 Å passes the overlap check
(``MIN_DISTANCE`` = 0.5 Å) yet holds ~5,900 neighbours per atom within 6 Å.
Measured today (one Si atom, fcc, one thread, under a 8 GB address-space limit):

- CHGNet: 24 s, then ``RuntimeError: DefaultCPUAllocator: can't allocate memory``
  (7.2 GB peak; without a limit it takes whatever the machine has);
- M3GNet: 2 atoms take 17 s and 4.9 GB; 12 atoms would need far more;
- MACE (small): 0.3 s, 0.6 GB (two-body only, so it survives).

Proposed limit, checked in ``ModelAdapter.compute`` before ``_forward``:
at most ``MAX_NEIGHBORS_PER_ATOM = 500`` neighbours per atom on average within
the model's cutoff (real solids have <= ~160 within 6 Å: diamond carbon, the
densest, has 159). For cells periodic in all directions the count can be
estimated in O(1) as ``N/V * 4/3 pi rc^3`` before any neighbour list is built;
otherwise count the list. Raise ``InvalidStructureError`` naming the estimated
neighbours per atom, the cutoff, the density and the limit. Plus a cap on the
total directed edges of one batch (from benchmarks/memory.py, see the report) so
that large batches fail with ``CalculationFailed`` suggesting smaller batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import MLFFError

from .helpers import alarm

FAMILIES = ("chgnet", "m3gnet", "mace")


def forward_must_not_run(*_args, **_kwargs):
    raise AssertionError("the forward pass ran on a graph the library should have refused (no graph-size limit)")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("nn,min_distance", [(0.6, 0.5), (0.3, None)], ids=["nn0.6", "nn0.3-no-overlap-check"])
def test_dense_lattice_is_refused_before_forward(request, monkeypatch, family, nn, min_distance):
    """FAILS today: nothing stops the forward pass (replaced here, so no memory is spent)."""
    adapter = request.getfixturevalue(f"{family}_adapter")
    monkeypatch.setattr(adapter, "_forward", forward_must_not_run)
    atoms = bulk("Si", "fcc", a=nn * np.sqrt(2))
    with alarm(30), pytest.raises(MLFFError) as info:
        MLFFCalculator(adapter, min_distance=min_distance).evaluate([atoms], ("energy", "forces", "stress"))
    message = str(info.value)
    assert "neighbo" in message, message


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_real_material_is_not_refused(request, family):
    """Diamond carbon (the densest common solid, ~159 neighbours within 6 Å) must stay allowed."""
    calc = MLFFCalculator(request.getfixturevalue(f"{family}_adapter"))
    atoms = bulk("C", "diamond", 3.567, cubic=True)
    atoms.rattle(0.02, seed=3)
    res = calc.evaluate([atoms], ("energy", "forces", "stress"))[0]
    assert np.isfinite(res["energy"]) and np.isfinite(res["forces"]).all()
