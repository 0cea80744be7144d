"""LTAU speed paths: precomputed per-atom averages, centring, the k-d tree search.

The fast :meth:`LTAU.predict` must give what the original per-atom recipe gives:
average the k neighbours' histograms, then read expected error, interval and
P(e < tol) off the mean histogram.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import require_backend

from mlff_calc.errors import ConfigurationError
from mlff_calc.ltau import (
    LTAU,
    Calibration,
    LTAUIndex,
    cdf_below,
    central_interval,
    error_distributions,
    expected_error,
    quantile,
    quantile_from_cdf,
)

require_backend("faiss", "ltau")


def manifold(n, dim=16, seed=0, offset=5.0, spread=0.02):
    """Descriptors like a model's: far from the origin, spread along a few directions."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    mix = np.random.default_rng(99).normal(size=(3, dim)) * spread  # the same directions for train and query
    return offset + latent @ mix + rng.normal(size=(n, dim)) * spread / 200


def brute(train, query, k):
    d = np.linalg.norm(query[:, None, :].astype(np.float64) - train[None].astype(np.float64), axis=-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d, ids, axis=1)


def make(n=500, dim=16, k=7, scale=1.3, epochs=40, seed=0, **index_kw):
    rng = np.random.default_rng(seed)
    desc = manifold(n, dim, seed)
    errs = rng.lognormal(-3, 0.6, size=(epochs, n)) * (1 + np.abs(desc[:, 0] - 5) * 20)
    dists = error_distributions(errs, n_bins=50, burn_in=3, e_min=1e-4)
    index = LTAUIndex(desc, np.full(n, 14), **index_kw)
    return LTAU(index, dists, model_id="m", model_sha256=None, spec={"family": "x", "dim": dim, "layer": "t"}, calibration=Calibration(k=k, scale=scale, interval_level=0.93)), desc


def per_atom_loop(ltau, ids, tol, scale, level):
    """The original recipe, one atom at a time: mean histogram, then its expectation, interval and CDF."""
    edges = ltau.dists.edges
    probs = ltau.dists.probabilities.astype(np.float64)
    out = {"expected": [], "interval": [], "below": []}
    for row in ids:
        row = row[row >= 0]
        p = probs[row].mean(axis=0, keepdims=True)
        out["expected"].append(scale * expected_error(edges, probabilities=p)[0])
        out["interval"].append(scale * central_interval(edges, level=level, probabilities=p)[0])
        out["below"].append(cdf_below(edges, tol=tol / scale, probabilities=p)[0])
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("exact_search", ["faiss", "kdtree"])
def test_vectorised_predict_equals_per_atom_loop(exact_search):
    ltau, desc = make(exact_search=exact_search)
    query = manifold(60, seed=5)
    pred = ltau.predict(query, tolerance=0.05)
    want = per_atom_loop(ltau, pred.neighbours, 0.05, 1.3, 0.93)
    np.testing.assert_allclose(pred.expected, want["expected"], rtol=1e-6)
    np.testing.assert_allclose(pred.probability_below, want["below"], atol=1e-6)
    np.testing.assert_allclose(pred.interval, want["interval"], rtol=1e-4)
    # other k, scale and tolerance than the calibrated ones
    pred = ltau.predict(query, tolerance=0.2, k=1, scale=0.7, level=0.5)
    want = per_atom_loop(ltau, pred.neighbours, 0.2, 0.7, 0.5)
    np.testing.assert_allclose(pred.expected, want["expected"], rtol=1e-6)
    np.testing.assert_allclose(pred.probability_below, want["below"], atol=1e-6)
    np.testing.assert_allclose(pred.interval, want["interval"], rtol=1e-4)


def test_missing_neighbours_fall_back_like_before():
    ltau, desc = make(n=40, k=5)
    numbers = np.full(40, 14)
    numbers[:3] = 8  # only 3 oxygen atoms: k = 5 leaves two -1 entries
    ltau.index = LTAUIndex(desc, numbers, per_element=True)
    q = desc[:4] + 1e-5
    pred = ltau.predict(q, [8, 8, 14, 1], tolerance=0.05)
    assert (pred.neighbours[0] >= 0).sum() == 3 and np.all(pred.neighbours[3] == -1)
    want = per_atom_loop(ltau, pred.neighbours[:3], 0.05, 1.3, 0.93)
    np.testing.assert_allclose(pred.expected[:3], want["expected"], rtol=1e-6)
    np.testing.assert_allclose(pred.interval[:3], want["interval"], rtol=1e-4)
    # hydrogen has no training atom at all: the training-set mean distribution, as neighbour_probabilities gives
    prior = ltau.neighbour_probabilities(pred.neighbours[3:])
    assert pred.expected[3] == pytest.approx(1.3 * expected_error(ltau.dists.edges, probabilities=prior)[0])
    assert pred.interval[3] == pytest.approx(1.3 * central_interval(ltau.dists.edges, level=0.93, probabilities=prior)[0], rel=1e-4)
    assert np.isinf(pred.ood_score[3])


def test_quantile_from_cdf_matches_quantile_and_reaches_exact_levels():
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    p = np.array([[0.05, 0.0, 0.9, 0.05]])  # 5 % exactly at the end of bin 0, then an empty bin
    assert quantile(edges, probabilities=p, q=0.05)[0] == pytest.approx(1.0)
    cum32 = np.cumsum(p, axis=1).astype(np.float32)  # float32 rounding must not jump to bin 2's start
    assert quantile_from_cdf(edges, cum32, 0.05)[0] == pytest.approx(1.0, abs=1e-5)
    rng = np.random.default_rng(4)
    p = rng.random((30, 12))
    p /= p.sum(axis=1, keepdims=True)
    e = np.geomspace(1e-3, 1.0, 13)
    for q in (0.025, 0.3, 0.975):
        np.testing.assert_allclose(quantile_from_cdf(e, np.cumsum(p, axis=1), q), quantile(e, probabilities=p, q=q))


def test_centred_flat_and_kdtree_searches_are_exact_on_model_like_descriptors():
    # neighbours ~1e-4 apart at |x| ~ 20: the stored vectors are centred, distances stay exact
    train = manifold(20000, seed=1, spread=0.002)
    query = manifold(40, seed=2, spread=0.002)
    want, want_d = brute(train, query, 10)
    for search in ("faiss", "kdtree", "blocked"):
        index = LTAUIndex(train, np.ones(20000), exact_search=search)
        assert np.linalg.norm(index.vectors(0).mean(axis=0) - train.mean(axis=0)) < 1e-4
        assert np.abs(index.indexes[0].reconstruct_n(0, 20000).mean(axis=0)).max() < 1e-4  # stored centred
        ids, d = index.query(query, k=10)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)]) > 0.98, search
        np.testing.assert_allclose(d, want_d, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("search", ["kdtree", "blocked"])
def test_exact_search_matches_brute_force_and_handles_small_groups(search):
    rng = np.random.default_rng(7)
    train = rng.normal(size=(300, 6))
    numbers = rng.choice([8, 14], size=300)
    numbers[:2] = 1  # two hydrogens only
    index = LTAUIndex(train, numbers, per_element=True, exact_search=search)
    assert index.exact_engine == search
    q = rng.normal(size=(9, 6))
    qn = np.array([8, 14, 1, 8, 14, 1, 8, 14, 6])
    ids, d = index.query(q, qn, k=4)
    for r in range(9):
        sel = np.flatnonzero(numbers == qn[r])
        if not len(sel):
            assert np.all(ids[r] == -1) and np.all(np.isinf(d[r]))
            continue
        w, wd = brute(train[sel], q[r : r + 1], min(4, len(sel)))
        np.testing.assert_array_equal(ids[r, : w.shape[1]], sel[w[0]])
        np.testing.assert_allclose(d[r, : w.shape[1]], wd[0], rtol=1e-5)
        assert np.all(ids[r, w.shape[1] :] == -1)
    ids1, _ = index.query(q[:1], qn[:1], k=1)
    assert ids1.shape == (1, 1)
    assert LTAUIndex(train, numbers, exact_search="auto").exact_engine == "kdtree"  # 6-d: auto picks the tree
    assert LTAUIndex(rng.normal(size=(50, 80)), np.ones(50)).exact_engine == "blocked"  # 80-d: matrix products
    assert LTAUIndex(train, numbers, kind="hnsw").exact_engine is None
    with pytest.raises(ConfigurationError):
        LTAUIndex(train, numbers, exact_search="ball")


def test_centre_and_search_mode_survive_save_and_load(tmp_path):
    ltau, desc = make(exact_search="kdtree")
    ltau.save(tmp_path / "l")
    back = LTAU.load(tmp_path / "l")
    np.testing.assert_array_equal(back.index.center, ltau.index.center)
    assert back.index.exact_search == "kdtree" and np.linalg.norm(back.index.center) > 1
    np.testing.assert_allclose(back.index.vectors(), desc, atol=1e-5)
    q = manifold(10, seed=3)
    a, b = ltau.predict(q, tolerance=0.05), back.predict(q, tolerance=0.05)
    np.testing.assert_array_equal(a.neighbours, b.neighbours)
    np.testing.assert_allclose(a.interval, b.interval)


def test_ivf_index_recall_and_round_trip(tmp_path):
    train = manifold(8000, seed=4)
    query = manifold(50, seed=6)
    want, _ = brute(train, query, 10)
    index = LTAUIndex(train, np.full(8000, 14), kind="ivf", ivf_nprobe=8)
    assert index.indexes[0].nlist == int(np.sqrt(8000)) and index.indexes[0].nprobe == 8
    ids, d = index.query(query, k=10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)]) > 0.95
    np.testing.assert_allclose(index.vectors()[ids[0, 0]], train[ids[0, 0]], atol=1e-5)
    ltau, _ = make(n=600)
    ltau.index = LTAUIndex(manifold(600), np.full(600, 14), kind="ivf", ivf_nlist=4, ivf_nprobe=2)
    ltau.save(tmp_path / "ivf")
    back = LTAU.load(tmp_path / "ivf")
    assert back.index.kind == "ivf" and back.index.indexes[0].nprobe == 2 and back.index.indexes[0].nlist == 4
    q = manifold(5, seed=8)
    np.testing.assert_array_equal(back.predict(q).neighbours, ltau.predict(q).neighbours)
