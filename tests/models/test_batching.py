"""Chunked batched evaluation: memory-sized chunks and the out-of-memory back-off (fake OOM on CPU)."""

import numpy as np
import pytest
import torch
from helpers import rattled_si, si8_frames

from mlff_calc.errors import CalculationFailed
from mlff_calc.models import batching
from mlff_calc.neighbors import neighbor_list


def _fail_above(adapter, monkeypatch, limit, exc=None):
    """Make the adapter's forward pass raise CUDA's OOM error on batches of more than ``limit`` structures."""
    original = adapter._compute
    sizes = []

    def compute(atoms_list, *args, **kwargs):
        sizes.append(len(atoms_list))
        if len(atoms_list) > limit:
            raise exc or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(atoms_list, *args, **kwargs)

    monkeypatch.setattr(adapter, "_compute", compute)
    return sizes


def test_oom_halves_the_chunk_and_reports_it(mace_adapter, monkeypatch):
    frames = si8_frames(6)
    singles = [mace_adapter.evaluate([a], ("energy", "forces", "stress"))[0] for a in frames]
    sizes = _fail_above(mace_adapter, monkeypatch, 3)
    with pytest.warns(RuntimeWarning, match="out of memory on 6 structures.*retrying 3 at a time"):
        got = mace_adapter.evaluate(frames, ("energy", "forces", "stress"), workers=1)
    assert sizes == [6, 3, 3]
    assert mace_adapter.last_batching == {"chunks": 2, "oom_backoffs": 1, "chunk_structures": 3}
    for res, ref in zip(got, singles):
        assert res["batching"] == {"chunks": 2, "oom_backoffs": 1, "chunk_structures": 3}
        assert res["energy"] == pytest.approx(ref["energy"], rel=1e-12)
        np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-10)
        np.testing.assert_allclose(res["stress"], ref["stress"], atol=1e-12)


def test_repeated_oom_goes_down_to_single_structures(mace_adapter, monkeypatch):
    sizes = _fail_above(mace_adapter, monkeypatch, 1)
    with pytest.warns(RuntimeWarning):
        got = mace_adapter.evaluate(si8_frames(5), ("energy",), workers=1)
    assert sizes == [5, 2, 1, 1, 1, 1, 1]
    assert got[0]["batching"]["oom_backoffs"] == 2 and got[0]["batching"]["chunks"] == 5


def test_oom_on_one_structure_is_a_calculation_failure(mace_adapter, monkeypatch):
    _fail_above(mace_adapter, monkeypatch, 0)
    with pytest.raises(CalculationFailed, match="ran out of memory on 1 structure"):
        mace_adapter.evaluate(si8_frames(1), ("energy",), workers=1)


def test_other_errors_are_not_retried(mace_adapter, monkeypatch):
    sizes = _fail_above(mace_adapter, monkeypatch, 1, exc=RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        mace_adapter.evaluate(si8_frames(4), ("energy",), workers=1)
    assert sizes == [4]


def test_chunks_follow_the_memory_estimate(mace_adapter, monkeypatch):
    frames = si8_frames(6)
    per_structure = batching.estimate_edges(frames[0], mace_adapter.cutoff) * mace_adapter.bytes_per_edge
    # room for two structures (and a half) in the planned share of free memory
    monkeypatch.setattr(batching, "free_memory", lambda device: 2.5 * per_structure / batching.MEMORY_FRACTION)
    sizes = _fail_above(mace_adapter, monkeypatch, 99)
    got = mace_adapter.evaluate(frames, ("energy",), workers=1)
    assert sizes == [2, 2, 2]
    assert got[0]["batching"] == {"chunks": 3, "oom_backoffs": 0, "chunk_structures": 2}


def test_one_chunk_leaves_results_as_they_were(mace_adapter):
    got = mace_adapter.evaluate(si8_frames(3), ("energy",), workers=1)
    assert mace_adapter.last_batching == {"chunks": 1, "oom_backoffs": 0, "chunk_structures": 3}
    assert all("batching" not in res for res in got)


def test_edge_estimate_is_close_to_the_neighbour_list():
    atoms = rattled_si(3)
    for cutoff in (4.0, 6.0):
        estimate = batching.estimate_edges(atoms, cutoff)
        assert estimate == pytest.approx(len(neighbor_list(atoms, cutoff)[0]), rel=0.35)
