"""Session-scoped fixtures; helpers live in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers import SHARED, require_backend, shared_path

os.environ.setdefault("MLFF_CALC_MODEL_DIR", str(SHARED / "models"))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Run the suite on one torch, one BLAS and one faiss thread, restored at the end.

    Measured here: with two OpenMP threads on 2 shared cores, small CHGNet graphs ran
    10-40x slower, and two OpenBLAS threads made ASE's cell filters ~100x slower.
    Tests of the multi-worker CPU path pass ``workers=2`` explicitly.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # faiss (LTAU indexes) has its own OpenMP pool
        import faiss
    except ImportError:
        faiss = None
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else None
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="session")
def chgnet_calc(chgnet_adapter):
    from mlff_calc.calculator import MLFFCalculator

    return MLFFCalculator(chgnet_adapter)


@pytest.fixture(scope="session")
def chgnet_adapter():
    from mlff_calc.models.chgnet import CHGNetAdapter

    return CHGNetAdapter.load(device="cpu")


@pytest.fixture(scope="session")
def m3gnet_adapter():
    require_backend("matgl", "m3gnet")
    from mlff_calc.models.m3gnet import M3GNetAdapter

    return M3GNetAdapter.load(shared_path("models", "M3GNet-MP-2021.2.8-PES"), device="cpu")


@pytest.fixture(scope="session")
def mace_small_path(tmp_path_factory):
    """A small ScaleShiftMACE built with mace-torch's constructors, saved as a .model file."""
    require_backend("mace", "mace")
    import torch

    from mlff_calc.models.mace_build import build_small_mace

    path = tmp_path_factory.mktemp("mace") / "small.model"
    torch.save(build_small_mace(), path)
    return path


@pytest.fixture(scope="session")
def mace_adapter(mace_small_path):
    from mlff_calc.models.mace import MACEAdapter

    return MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")
