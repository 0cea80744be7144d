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
CALCULATORS = ("chgnet", "m3gnet", "mace", "chgnet+softening", "m3gnet+softening", "mace+softening", "mace+rewiring", "mace+ltau", "mace+ttt")


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
    if layer in LAYER_BUILDERS:
        return LAYER_BUILDERS[layer](request)
    adapter = request.getfixturevalue(f"{family}_adapter")
    layers = [SofteningLayer(1.3)] if layer == "softening" else []
    return MLFFCalculator(adapter, layers=layers)


def _training_frames(n: int = 4):
    from helpers import si8_frames

    return si8_frames(n, amp=0.04, seed=30)


def _rewiring(request):
    """The small MACE with test-time radius refinement (histogram distance: any system size)."""
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.rewiring import RewiringLayer
    from mlff_calc.rewiring import SpectrumReference

    adapter = request.getfixturevalue("mace_adapter")
    reference = SpectrumReference.build(_training_frames(), adapter=adapter)
    return MLFFCalculator(adapter, layers=[RewiringLayer(reference, distance="histogram")])


def _ltau(request):
    """The small MACE with an LTAU index built from a synthetic error log of four Si8 frames."""
    import numpy as np

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.data.error_log import write_error_log
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.ltau import build_ltau
    from mlff_calc.models.identity import model_identity

    adapter = request.getfixturevalue("mace_adapter")
    frames = _training_frames()
    folder = request.getfixturevalue("tmp_path_factory").mktemp("ltau")
    rng = np.random.default_rng(0)
    n = sum(len(a) for a in frames)
    arrays = {
        "errors": rng.lognormal(-3, 1, (6, n)).astype(np.float32),
        "epoch": np.arange(6),
        "structure_index": np.repeat(np.arange(len(frames)), [len(a) for a in frames]),
        "atom_index": np.concatenate([np.arange(len(a)) for a in frames]),
        "numbers": np.concatenate([a.numbers for a in frames]),
    }
    write_error_log(folder / "error_log.npz", arrays, structures=frames, identity=model_identity(adapter))
    ltau = build_ltau(adapter, frames, folder / "error_log.npz", k=5)
    return MLFFCalculator(adapter, layers=[LTAULayer(ltau)])


def _ttt(request):
    """A separate copy of the small MACE with an experimental prior head, adapted on Si8 frames."""
    import warnings

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ttt import TTTLayer
    from mlff_calc.models.mace import MACEAdapter
    from mlff_calc.ttt import fit_prior_head

    adapter = MACEAdapter.load(request.getfixturevalue("mace_small_path"), device="cpu", dtype="float64")  # adaptation moves weights: never the shared adapter
    frames = _training_frames()
    prior = {"name": "lj", "params": {"sigma": 2.1, "epsilon": 0.4, "rc": 4.5}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_prior_head(adapter, frames, prior, epochs=20)
    return MLFFCalculator(model, layers=[TTTLayer(steps=5, batch_size=4, lr=1e-4, adapt_on=frames, progress=False)])


#: layers built on their own model set-up: rewiring needs a spectrum reference, LTAU an index, TTT a prior head
LAYER_BUILDERS = {"rewiring": _rewiring, "ltau": _ltau, "ttt": _ttt}


@pytest.fixture(scope="module", params=CALCULATORS)
def any_calc(request):
    """``(name, calculator)`` for each model x layer combination (M3GNet skips without ../shared)."""
    return request.param, build_calculator(request, request.param)
