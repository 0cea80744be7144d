"""Configuration sampler: sources, seeding, deduplication, splits and the sample-set files."""

import numpy as np
import pytest
from helpers import si8

from mlff_calc.distill import SampleSet, sample
from mlff_calc.distill.sample import deduplicate, split_indices
from mlff_calc.errors import ArtifactError, ConfigurationError


def test_sources_splits_and_counts(samples):
    origins = set(samples.origin.tolist())
    assert origins == {"input", "md-600K", "rattle", "strain+", "strain-"}
    assert len(samples) == 1 + 6 + 8 + 4
    counts = samples.counts()
    assert sum(counts.values()) == len(samples) and min(counts.values()) >= 1
    for atoms, origin in zip(samples.structures, samples.origin):
        assert atoms.calc is None and len(atoms) == 8
        if origin.startswith("strain"):
            assert not np.allclose(atoms.cell.array, si8().cell.array)
        else:
            assert np.allclose(atoms.cell.array, si8().cell.array)


def test_rattle_and_strain_are_seeded():
    a = sample([si8()], None, temperatures_K=(), n_rattle=3, n_strain=2, seed=5, progress=False)
    b = sample([si8()], None, temperatures_K=(), n_rattle=3, n_strain=2, seed=5, progress=False)
    c = sample([si8()], None, temperatures_K=(), n_rattle=3, n_strain=2, seed=6, progress=False)
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a.structures, b.structures))
    assert np.array_equal(a.split, b.split)
    assert not all(np.array_equal(x.positions, y.positions) for x, y in zip(a.structures, c.structures))


def test_deduplicate_drops_copies_translations_and_permutations():
    base = si8()
    base.rattle(0.05, seed=1)
    shifted = base.copy()
    shifted.positions += [0.3, -0.2, 0.1]
    permuted = base[[3, 1, 2, 0, 4, 5, 6, 7]]
    other = base.copy()
    other.positions[0] += 0.05
    keep = deduplicate([base, base.copy(), shifted, permuted, other], tol_A=1e-3)
    assert keep.tolist() == [0, 4]


def test_split_fractions_and_errors():
    labels = split_indices(20, (0.8, 0.1, 0.1), seed=0)
    assert [int(np.sum(labels == s)) for s in ("train", "valid", "test")] == [16, 2, 2]
    with pytest.raises(ConfigurationError):
        split_indices(10, (0.5, 0.5, 0.5), seed=0)
    with pytest.raises(ConfigurationError, match="teacher"):
        sample([si8()], None, temperatures_K=(300.0,), md_frames_per_T=2)


def test_write_read_round_trip_and_tamper(samples, tmp_path):
    samples.write(tmp_path / "s")
    back = SampleSet.read(tmp_path / "s")
    assert len(back) == len(samples)
    assert np.array_equal(back.split, samples.split) and np.array_equal(back.origin, samples.origin)
    for x, y in zip(back.structures, samples.structures):
        assert np.array_equal(x.positions, y.positions) and np.array_equal(x.cell.array, y.cell.array)
    with np.load(tmp_path / "s" / "samples.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["positions"][0, 0] += 1.0
    np.savez(tmp_path / "s" / "samples.npz", **arrays)
    with pytest.raises(ArtifactError, match="sha256"):
        SampleSet.read(tmp_path / "s")
