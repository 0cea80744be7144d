"""The exact k-NN searches (rotated k-d tree, blocked matrix products) against float64 brute force."""

import numpy as np
import pytest

from mlff_calc.knn import BlockedSearch, KDTreeSearch


def brute(train, query, k):
    d2 = ((query[:, None, :].astype(np.float64) - train[None].astype(np.float64)) ** 2).sum(-1)
    ids = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d2, ids, 1)


@pytest.mark.parametrize("engine", ["blocked", "kdtree"])
@pytest.mark.parametrize("n, dim, k, block", [(5000, 64, 10, 512), (3000, 16, 50, 256), (12, 3, 12, 4), (40, 8, 1, 8192)])
def test_exact_search_is_exact(engine, n, dim, k, block):
    rng = np.random.default_rng(n + dim)
    centres = rng.normal(size=(20, dim))
    train = (centres[rng.integers(0, 20, n)] + 0.2 * rng.normal(size=(n, dim))).astype(np.float32)
    query = (centres[rng.integers(0, 20, 37)] + 0.2 * rng.normal(size=(37, dim))).astype(np.float32)
    search = BlockedSearch(train, block=block) if engine == "blocked" else KDTreeSearch(train)
    d2, ids = search.search(query, k)
    want_ids, want_d2 = brute(train, query, k)
    np.testing.assert_allclose(d2, want_d2, rtol=1e-9, atol=1e-12)  # float64 distances
    np.testing.assert_array_equal(ids, want_ids)
    assert np.all(np.diff(d2, axis=1) >= 0)


def test_blocked_search_of_a_training_point_finds_itself_first():
    train = np.random.default_rng(1).normal(size=(2000, 32)).astype(np.float32)
    d2, ids = BlockedSearch(train, block=300).search(train[[5, 1999, 0]], 3)
    np.testing.assert_array_equal(ids[:, 0], [5, 1999, 0])
    np.testing.assert_allclose(d2[:, 0], 0.0, atol=1e-12)


def test_kdtree_search_rotation_keeps_distances_and_handles_one_vector():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(500, 5)) * [10.0, 3.0, 1.0, 0.1, 0.01]  # anisotropic, like descriptors
    search = KDTreeSearch(train)
    np.testing.assert_allclose(search.rotation.T @ search.rotation, np.eye(5), atol=1e-12)
    assert abs(search.rotation[0, 0]) > 0.99  # the first axis is the widest direction
    one = KDTreeSearch(train[:1])
    d2, ids = one.search(train[1:3], 1)
    np.testing.assert_array_equal(ids, [[0], [0]])
    np.testing.assert_allclose(d2[:, 0], ((train[1:3] - train[0]) ** 2).sum(1))
