"""Fixtures for the reliability suite: calculators for every model x layer, one torch thread.

``tests/reliability`` is a package (it has ``__init__.py``) so this conftest and
its test modules never shadow ``tests/conftest.py`` (imported as ``conftest``)
or test modules of the same name elsewhere.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

#: CI profile: derandomized, bounded, no timing deadline (the cores are shared, so
#: wall-clock deadlines would be flaky; hangs are caught by the per-example SIGALRM
#: guard in test_hypothesis.py instead). Derandomized means the same examples for
#: the same selection of tests: Hypothesis also mixes literal constants of the
#: modules imported so far into its draws, so running one file alone can draw
#: other examples than the whole suite does.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
#: exploratory profile for local bug hunting: random seeds, more examples
settings.register_profile(
    "explore",
    max_examples=200,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
#: the profile the property tests use; pick another with MLFF_HYPOTHESIS_PROFILE=explore
PROFILE = settings.get_profile(os.environ.get("MLFF_HYPOTHESIS_PROFILE", "ci"))

#: every model x layer combination the reliability suite runs on
CALCULATORS = ("chgnet", "m3gnet", "mace", "chgnet+softening", "m3gnet+softening", "mace+softening")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small graphs on shared cores run ~10x faster on one thread; restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def build_calculator(request, name: str):
    """A fresh MLFFCalculator for ``name`` (e.g. ``"mace+softening"``) on the session's adapters."""
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.softening import SofteningLayer

    family, _, layer = name.partition("+")
    adapter = request.getfixturevalue(f"{family}_adapter")
    layers = [SofteningLayer(1.3)] if layer == "softening" else []
    return MLFFCalculator(adapter, layers=layers)


@pytest.fixture(scope="module", params=CALCULATORS)
def any_calc(request):
    """``(name, calculator)`` for each model x layer combination (M3GNet skips without ../shared)."""
    return request.param, build_calculator(request, request.param)
