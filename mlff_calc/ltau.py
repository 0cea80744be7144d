"""LTAU-FF: force uncertainty from the loss trajectory (Vita et al. 2024).

During training, every training atom's force error is logged at every epoch
(``error_log.npz``, see :mod:`mlff_calc.distill.train`). The histogram of one
atom's errors over the epochs is its *error distribution*. A new atom gets the
average distribution of its ``k`` nearest training atoms in the final model's
descriptor space; its uncertainty is read off that distribution (expected error,
probability of an error below a tolerance, a central interval) and the mean
distance to those neighbours is an out-of-distribution score.

Distributions (:func:`error_distributions`)
    Bins: ``n_bins`` bins between ``e_min`` and ``e_max`` (log-spaced by default).
    Errors below ``e_min`` count in the first bin and errors above ``e_max`` in
    the last (clipped); NaNs are ignored. The first ``burn_in`` epochs are
    dropped. Per atom ``p_j`` = fraction of its errors in bin ``j``; the density
    ``p_j / w_j`` (``w_j`` the bin width) times ``w_j`` sums to 1 per atom.

    The density is taken as constant *inside* a bin (in the error itself, also
    for log bins), so everything derived is exact for that piecewise-constant
    density:

    - CDF: ``P(e < tol) = sum_{j < b} p_j + p_b (tol - edge_b) / w_b`` where ``b``
      is the bin holding ``tol`` (``edge_b <= tol < edge_{b+1}``); 0 below the
      first edge and 1 at or above the last.
    - expected error: ``sum_j p_j (edge_j + edge_{j+1}) / 2``.
    - quantile ``q``: the inverse of that piecewise-linear CDF.
    - central interval at ``level``: quantiles ``(1 - level)/2`` and ``(1 + level)/2``.

Calibration (:func:`calibrate`)
    On held-out labelled atoms, for each candidate ``k``, a scale ``s`` of the
    error axis (expected error and interval times ``s``, ``P(e < tol)`` evaluated
    at ``tol / s``) and the nominal level of the central interval are chosen so
    that the fraction of actual errors inside the predicted interval is 90 %
    (within 0.5 %) with the lowest mean interval score (Gneiting & Raftery 2007,
    a proper score: width plus ``2/α`` times the miss distance); then the ``k``
    with the lowest score wins. ``forces_error_interval`` is thus a calibrated 90 %
    interval on the calibration atoms.

Artifact (:func:`build_ltau`, :class:`LTAU`)
    A folder with ``ltau.json`` (format ``"mlff_calc.ltau"`` v1: model id and
    weights sha256, descriptor spec ``{family, dim, layer}``, index kind, ``k``,
    calibration, bins, files with their sha256), ``index.faiss`` (or one
    ``index-Z.faiss`` per element) and ``distributions.npz``. Loading checks the
    manifest checksum and every file's sha256 before anything is used; a corrupt
    or foreign folder raises ArtifactError and is never modified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .artifacts import atomic_path, check_manifest, read_json, read_npz, sha256_file, write_json, write_npz
from .errors import ArtifactError, ConfigurationError

log = logging.getLogger(__name__)

LTAU_FORMAT = "mlff_calc.ltau"
LTAU_VERSION = 1
MANIFEST = "ltau.json"
DISTRIBUTIONS = "distributions.npz"
INDEX_KINDS = ("flat", "hnsw", "ivf")
EXACT_SEARCH = ("auto", "faiss", "kdtree", "blocked")
#: ``exact_search="auto"`` uses a k-d tree up to this descriptor dimension. Measured
#: (benchmarks/ltau_speed*.py, 100k atoms, 216 queries, k = 10): 9x faster than faiss's
#: brute force for the student's 16-d descriptors, 3.3x for CHGNet's 64-d ones.
KDTREE_MAX_DIM = 64
#: HNSW build breadth. Measured on 1M student descriptors (16-d, benchmarks/ltau_hnsw_build.py), M 32:
#: efConstruction 80 needed efSearch 24 for recall@10 >= 0.95 (5.8 ms for 216 queries, built in 36 s),
#: 200 needed efSearch 20 (5.1 ms, built in 97 s on 2 threads): the graph is built once, searched every call.
HNSW_EF_CONSTRUCTION = 200


# distributions ---------------------------------------------------------------


@dataclass
class ErrorDistributions:
    """Per-atom error histograms: ``edges`` [B+1] (eV/Å), ``probabilities`` [N, B] (rows sum to 1)."""

    edges: np.ndarray
    probabilities: np.ndarray
    n_epochs: np.ndarray | None = None
    burn_in: int = 0
    log_bins: bool = True

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)

    @property
    def densities(self) -> np.ndarray:
        """Probability density per eV/Å: ``densities * widths`` sums to 1 along each row."""
        return self.probabilities / self.widths

    def __iter__(self):  # ``edges, densities = error_distributions(...)``
        return iter((self.edges, self.densities))

    def __len__(self) -> int:
        return 2


def make_edges(n_bins: int, e_min: float, e_max: float, log_bins: bool) -> np.ndarray:
    if n_bins < 1:
        raise ConfigurationError(f"n_bins must be at least 1, got {n_bins}")
    if not (np.isfinite(e_min) and np.isfinite(e_max) and e_max > e_min):
        raise ConfigurationError(f"need finite e_min < e_max, got {e_min}, {e_max}")
    if log_bins:
        if e_min <= 0:
            raise ConfigurationError(f"log bins need e_min > 0, got {e_min}")
        return np.geomspace(e_min, e_max, n_bins + 1)
    return np.linspace(e_min, e_max, n_bins + 1)


def error_distributions(errors, n_bins: int = 100, log_bins: bool = True, burn_in: int = 0, e_min: float = 1e-8, e_max: float | None = None) -> ErrorDistributions:
    """Histogram of each atom's errors over epochs; ``errors`` is ``[T, N]`` (eV/Å).

    ``e_max=None``: just above the largest finite error. Unpacks as ``edges, densities``.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2:
        raise ConfigurationError(f"errors must be [T epochs, N atoms], got shape {errors.shape}")
    if not 0 <= burn_in < errors.shape[0]:
        raise ConfigurationError(f"burn_in={burn_in} leaves no epochs of the {errors.shape[0]} logged")
    errors = errors[burn_in:]
    finite = np.isfinite(errors)
    if (errors[finite] < 0).any():
        raise ConfigurationError("errors must be non-negative (force-error norms)")
    n = finite.sum(axis=0)
    if (n == 0).any():
        raise ConfigurationError(f"{int((n == 0).sum())} atom(s) have no finite logged error after burn-in")
    if e_max is None:
        e_max = float(np.max(errors[finite])) * (1 + 1e-6) + 1e-12
        e_max = max(e_max, e_min * 10 if log_bins else e_min + 1e-6)
    edges = make_edges(n_bins, float(e_min), float(e_max), log_bins)
    bins = np.searchsorted(edges, np.where(finite, errors, edges[0]), side="right") - 1
    bins = np.clip(bins, 0, n_bins - 1)
    counts = np.zeros((errors.shape[1], n_bins), dtype=np.float64)
    cols = np.broadcast_to(np.arange(errors.shape[1]), errors.shape)
    np.add.at(counts, (cols[finite], bins[finite]), 1.0)
    probs = (counts / n[:, None]).astype(np.float32)
    return ErrorDistributions(edges=edges, probabilities=probs, n_epochs=n, burn_in=burn_in, log_bins=log_bins)


def _probs(edges, densities=None, probabilities=None) -> np.ndarray:
    if probabilities is not None:
        return np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    return np.atleast_2d(np.asarray(densities, dtype=np.float64)) * np.diff(edges)


def cdf_below(edges, densities=None, tol=0.05, *, probabilities=None) -> np.ndarray:
    """``P(error < tol)`` per row: whole bins below ``tol`` plus the covered part of ``tol``'s bin.

    ``tol`` is a number or one value per row. Pass ``densities`` (per eV/Å) or
    ``probabilities`` (per bin).
    """
    edges = np.asarray(edges, dtype=np.float64)
    p = _probs(edges, densities, probabilities)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (p.shape[0],))
    cum = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)
    b = np.clip(np.searchsorted(edges, tol, side="right") - 1, 0, len(edges) - 2)
    rows = np.arange(p.shape[0])
    frac = np.clip((tol - edges[b]) / (edges[b + 1] - edges[b]), 0.0, 1.0)
    out = cum[rows, b] + p[rows, b] * frac
    out = np.where(tol <= edges[0], 0.0, out)
    out = np.where(tol >= edges[-1], cum[:, -1], out)
    return np.clip(out, 0.0, 1.0)


def expected_error(edges, densities=None, *, probabilities=None) -> np.ndarray:
    """Mean of each row's piecewise-constant density: ``sum_j p_j * bin centre_j``."""
    edges = np.asarray(edges, dtype=np.float64)
    p = _probs(edges, densities, probabilities)
    return p @ (0.5 * (edges[:-1] + edges[1:]))


def quantile(edges, densities=None, q=0.5, *, probabilities=None) -> np.ndarray:
    """Inverse of the piecewise-linear CDF at ``q`` per row."""
    edges = np.asarray(edges, dtype=np.float64)
    p = _probs(edges, densities, probabilities)
    return quantile_from_cdf(edges, np.cumsum(p, axis=1), q)


#: a cumulative probability within this of the target counts as reaching it (float32 tables)
CDF_TOL = 1e-6


def quantile_from_cdf(edges, cum, q) -> np.ndarray:
    """:func:`quantile` from the cumulative table ``cum`` [N, B] (``cum[:, j]`` = P(e < edge_{j+1})).

    ``q`` a number ([N] out) or a sequence of levels ([N, len(q)] out). The first
    bin whose cumulative reaches ``q`` (within :data:`CDF_TOL`, so that float32
    rounding does not jump over an exactly reached level) holds the quantile.
    """
    edges = np.asarray(edges, dtype=np.float64)
    cum = np.atleast_2d(cum)
    scalar = np.ndim(q) == 0
    qs = np.clip(np.atleast_1d(np.asarray(q, dtype=np.float64)), 0.0, 1.0)
    total = cum[:, -1:].astype(np.float64)
    target = qs[None, :] * total  # [N, Q]
    b = np.minimum((cum[:, None, :] < (target - CDF_TOL * total)[:, :, None]).sum(axis=2), cum.shape[1] - 1)  # [N, Q]
    after = np.take_along_axis(cum, b, axis=1).astype(np.float64)
    before = np.where(b > 0, np.take_along_axis(cum, np.maximum(b - 1, 0), axis=1), 0.0).astype(np.float64)
    pb = after - before
    frac = np.where(pb > 0, (target - before) / np.where(pb > 0, pb, 1.0), 0.0)
    out = edges[b] + np.clip(frac, 0.0, 1.0) * (edges[b + 1] - edges[b])
    return out[:, 0] if scalar else out


def central_interval(edges, densities=None, level: float = 0.9, *, probabilities=None) -> np.ndarray:
    """``[N, 2]``: quantiles ``(1 - level)/2`` and ``(1 + level)/2`` of each row."""
    if not 0 < level < 1:
        raise ConfigurationError(f"interval level must lie in (0, 1), got {level}")
    lo = quantile(edges, densities, (1 - level) / 2, probabilities=probabilities)
    hi = quantile(edges, densities, (1 + level) / 2, probabilities=probabilities)
    return np.stack([lo, hi], axis=1)


# nearest neighbours ------------------------------------------------------------


def _faiss():
    from .optional import backend

    with backend("ltau", "an LTAU index"):
        import faiss
    return faiss


def as_float32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


class LTAUIndex:
    """k-NN over training-atom descriptors.

    ``kind``: ``"flat"`` (exact, faiss ``IndexFlatL2``, default) or ``"hnsw"``
    (``IndexHNSWFlat``, approximate, for millions of atoms; ``hnsw_m`` links per
    node, ``ef_construction``/``ef_search`` its build and search breadth) or
    ``"ivf"`` (``IndexIVFFlat``, approximate: k-means cells, ``ivf_nlist`` of them,
    default ``sqrt(N)``; a query scans the ``ivf_nprobe`` nearest cells).
    ``per_element``: one index per atomic number; a query atom searches only the
    training atoms of its element. Ids returned are rows of the training set.

    Centring: the training mean ``center`` is subtracted from every stored and
    query vector. Model descriptors sit far from the origin (norm ~5) with
    neighbours ~0.003 apart, where float32 distance arithmetic loses digits; on
    a synthetic set of near-duplicate descriptors the uncentred flat index found
    54 % of the true 10 neighbours, the centred one 99.6 % (on the benchmark
    sets of benchmarks/ltau_speed.py both were exact).

    ``exact_search`` (flat indexes only): ``"faiss"`` searches the faiss index;
    ``"kdtree"`` searches a scipy ``cKDTree`` built in the principal axes of the
    same vectors on first use (exact too, float64 distances, much faster for low-dimensional
    descriptors on a manifold); ``"blocked"`` computes all distances by blocked
    matrix products with pruned top-k (:mod:`mlff_calc.knn`; exact, re-ranked
    in float64, fast for wider descriptors); ``"auto"`` (default): kdtree when
    ``dim <= KDTREE_MAX_DIM``, blocked above.
    """

    def __init__(self, descriptors, numbers, *, kind: str = "flat", per_element: bool = False, hnsw_m: int = 32, ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = 64, ivf_nlist: int | None = None, ivf_nprobe: int = 8, center=None, exact_search: str = "auto", _indexes=None):
        if kind not in INDEX_KINDS:
            raise ConfigurationError(f"index kind {kind!r} is not one of {INDEX_KINDS}")
        if exact_search not in EXACT_SEARCH:
            raise ConfigurationError(f"exact_search {exact_search!r} is not one of {EXACT_SEARCH}")
        self.kind = kind
        self.per_element = bool(per_element)
        self.hnsw = {"m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
        self.ivf = {"nlist": None if ivf_nlist is None else int(ivf_nlist), "nprobe": int(ivf_nprobe)}
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.exact_search = exact_search
        self._trees = None
        if _indexes is not None:
            self.indexes = _indexes
            self.dim = int(next(iter(_indexes.values())).d)
            self.center = np.zeros(self.dim, np.float32) if center is None else as_float32(center).reshape(-1)
            if self.center.shape != (self.dim,):
                raise ArtifactError(f"LTAU centre has shape {self.center.shape}, the index {self.dim} dimensions")
            self._set_ids()
            return
        desc = as_float32(descriptors)
        if desc.ndim != 2 or desc.shape[0] != len(self.numbers) or desc.shape[0] == 0:
            raise ConfigurationError(f"descriptors must be [N, d] with N = len(numbers) = {len(self.numbers)} > 0, got {desc.shape}")
        if not np.isfinite(desc).all():
            raise ConfigurationError("descriptors hold NaN or inf")
        self.dim = desc.shape[1]
        self.center = as_float32(desc.mean(axis=0, dtype=np.float64)) if center is None else as_float32(center).reshape(-1)
        desc = as_float32(desc - self.center)
        groups = {int(z): self.numbers == z for z in np.unique(self.numbers)} if self.per_element else {0: slice(None)}
        self.indexes = {}
        for key, sel in groups.items():
            part = as_float32(desc[sel])
            index = self._new_index(len(part))
            if not index.is_trained:  # ivf: k-means on at most 64 points per cell
                rng = np.random.default_rng(0)
                index.train(part if len(part) <= 64 * index.nlist else part[rng.choice(len(part), 64 * index.nlist, replace=False)])
            index.add(part)
            self.indexes[key] = index
        self._set_ids()

    def _new_index(self, n: int = 0):
        faiss = _faiss()
        if self.kind == "flat":
            return faiss.IndexFlatL2(self.dim)
        if self.kind == "ivf":
            nlist = self.ivf["nlist"] or int(np.sqrt(n))
            nlist = max(1, min(nlist, n // 39))  # faiss wants >= 39 training points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dim), self.dim, nlist)
            index.nprobe = self.ivf["nprobe"]
            return index
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw["m"])
        index.hnsw.efConstruction = self.hnsw["ef_construction"]
        index.hnsw.efSearch = self.hnsw["ef_search"]
        return index

    def _set_ids(self):
        if self.per_element:
            self.global_ids = {z: np.flatnonzero(self.numbers == z) for z in self.indexes}
        else:
            self.global_ids = {0: np.arange(len(self.numbers))}
        for key, index in self.indexes.items():
            if index.ntotal != len(self.global_ids[key]):
                raise ArtifactError(f"faiss index for {'Z=' + str(key) if self.per_element else 'all atoms'} holds {index.ntotal} vectors, not {len(self.global_ids[key])}")
            if self.kind == "hnsw":
                index.hnsw.efSearch = self.hnsw["ef_search"]
            if self.kind == "ivf":
                index.nprobe = self.ivf["nprobe"]

    @property
    def ntotal(self) -> int:
        return len(self.numbers)

    @property
    def exact_engine(self) -> str | None:
        """What answers an exact query: ``"kdtree"``, ``"blocked"``, ``"faiss"``; None for approximate kinds."""
        if self.kind != "flat":
            return None
        if self.exact_search == "auto":
            return "kdtree" if self.dim <= KDTREE_MAX_DIM else "blocked"
        return self.exact_search

    def vectors(self, key=0) -> np.ndarray:
        """The training descriptors held by faiss index ``key`` (in descriptor units, centre added back)."""
        index = self.indexes[key]
        if self.kind == "ivf":
            index.make_direct_map()
        return index.reconstruct_n(0, index.ntotal) + self.center

    def _tree(self, key):
        """The exact search (:mod:`mlff_calc.knn`) over the vectors of faiss index ``key``, built on first use."""
        if self._trees is None:
            self._trees = {}
        if key not in self._trees:
            from .knn import BlockedSearch, KDTreeSearch

            index = self.indexes[key]
            engine = BlockedSearch if self.exact_engine == "blocked" else KDTreeSearch
            self._trees[key] = engine(index.reconstruct_n(0, index.ntotal))
        return self._trees[key]

    def _search(self, key, x, kk):
        """``(squared distances, local ids)`` of one group; missing entries are -1."""
        if self.exact_engine in (None, "faiss"):
            return self.indexes[key].search(x, kk)
        return self._tree(key).search(x, kk)

    def query(self, desc, numbers=None, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [M, k] int64, distances [M, k] float64 in descriptor units)``, nearest first.

        Distances are Euclidean (the square root of faiss's squared L2). Where fewer
        than ``k`` training atoms exist (or none of the atom's element with
        ``per_element``) the missing entries have id -1 and distance inf.
        """
        desc = as_float32(desc)
        if desc.ndim != 2 or desc.shape[1] != self.dim:
            raise ConfigurationError(f"query descriptors must be [M, {self.dim}], got {desc.shape}")
        if k < 1:
            raise ConfigurationError(f"k must be at least 1, got {k}")
        desc = as_float32(desc - self.center)
        m = desc.shape[0]
        if self.per_element:
            if numbers is None:
                raise ConfigurationError("a per-element LTAU index needs the atomic numbers of the query atoms")
            numbers = np.asarray(numbers, dtype=np.int64)
            groups = {int(z): np.flatnonzero(numbers == z) for z in np.unique(numbers)}
        else:
            groups = {0: None}
        ids = np.full((m, k), -1, dtype=np.int64)
        d2 = np.full((m, k), np.inf, dtype=np.float64)
        for key, rows in groups.items():
            if key not in self.indexes or (rows is not None and len(rows) == 0):
                continue
            kk = min(k, self.indexes[key].ntotal)
            dist, local = self._search(key, desc if rows is None else as_float32(desc[rows]), kk)
            ok = local >= 0
            gid = np.where(ok, self.global_ids[key][np.where(ok, local, 0)], -1)
            sel = slice(None) if rows is None else rows
            ids[sel, :kk] = gid
            d2[sel, :kk] = np.where(ok, dist, np.inf)
        return ids, np.sqrt(np.maximum(d2, 0.0))

    def files(self) -> dict[str, object]:
        return {("index.faiss" if key == 0 and not self.per_element else f"index-{key}.faiss"): index for key, index in self.indexes.items()}

    def write(self, folder: Path) -> dict[str, str]:
        """Write the faiss index file(s) atomically; returns ``{file: sha256}``."""
        faiss = _faiss()
        out = {}
        for name, index in self.files().items():
            with atomic_path(folder / name) as tmp:
                faiss.write_index(index, str(tmp))
            out[name] = sha256_file(folder / name)
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "per_element": self.per_element, "hnsw": self.hnsw, "ivf": self.ivf, "dim": self.dim, "n_atoms": self.ntotal, "exact_search": self.exact_search, "centred": bool(np.any(self.center != 0))}


# the model: index + distributions + calibration -----------------------------------


@dataclass
class Calibration:
    """Scale of the error axis and ``k``; ``table`` holds one row per candidate ``k``."""

    scale: float = 1.0
    k: int = 10
    level: float = 0.9
    interval_level: float | None = None
    coverage: float | None = None
    coverage_uncalibrated: float | None = None
    n_atoms: int = 0
    table: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"scale": self.scale, "k": self.k, "level": self.level, "interval_level": self.interval_level, "coverage": self.coverage, "coverage_uncalibrated": self.coverage_uncalibrated, "n_atoms": self.n_atoms, "table": self.table}


@dataclass
class Prediction:
    """Per-atom LTAU output (errors in eV/Å, calibrated)."""

    expected: np.ndarray
    interval: np.ndarray
    probability_below: np.ndarray | None
    ood_score: np.ndarray
    neighbours: np.ndarray
    distances: np.ndarray


def descriptor_spec(adapter, dim: int) -> dict:
    """``{family, dim, layer}``: what the descriptors are; an artifact fits only the same spec."""
    layer = getattr(adapter, "descriptor_layer", None) or {
        "mace": "node_feats[0e] (invariant channels of every interaction)",
        "student": "node_feats[0e] (invariant channels of every interaction)",
        "chgnet": "input of the site-energy readout",
        "m3gnet": "input of the atomic readout",
    }.get(adapter.family, "descriptors")
    return {"family": adapter.family, "dim": int(dim), "layer": layer}


def _chunked(fn, rows: np.ndarray, size: int = 65536) -> np.ndarray:
    """``fn`` applied to blocks of ``rows`` (float64 temporaries of a 1M-atom table would take GBs)."""
    return np.concatenate([fn(rows[i : i + size]) for i in range(0, len(rows), size)]) if len(rows) else fn(rows)


class LTAU:
    """A loaded (or freshly built) LTAU estimator: index, distributions, calibration and identity."""

    def __init__(self, index: LTAUIndex, dists: ErrorDistributions, *, model_id: str, model_sha256: str | None, spec: dict, calibration: Calibration | None = None, path: Path | None = None, extra: dict | None = None):
        if dists.probabilities.shape[0] != index.ntotal:
            raise ConfigurationError(f"{dists.probabilities.shape[0]} distributions for {index.ntotal} indexed atoms")
        self.index = index
        self.dists = dists
        self.model_id = model_id
        self.model_sha256 = model_sha256
        self.spec = dict(spec)
        self.calibration = calibration or Calibration()
        self.path = path
        self.extra = dict(extra or {})
        self._probs = np.asarray(dists.probabilities, dtype=np.float32)
        self._prior = self._probs.mean(axis=0, dtype=np.float64)
        # per training atom, computed once: the layer then averages scalars and CDF rows
        edges = dists.edges
        self._expected = _chunked(lambda p: expected_error(edges, probabilities=p), self._probs)  # [N] eV/Å
        self._cdf = _chunked(lambda p: np.cumsum(p, axis=1, dtype=np.float64).astype(np.float32), self._probs)  # [N, B] P(e < edge_{j+1})
        self._below: dict[float, np.ndarray] = {}  # tol -> [N] P(e < tol)

    @property
    def k(self) -> int:
        return self.calibration.k

    def neighbour_probabilities(self, ids: np.ndarray) -> np.ndarray:
        """Mean distribution (per bin) of the neighbours ``ids`` [M, k]; -1 entries are skipped."""
        valid = ids >= 0
        if valid.all():
            return self._probs[ids].mean(axis=1, dtype=np.float64)
        p = self._probs[np.where(valid, ids, 0)].astype(np.float64) * valid[..., None]
        n = valid.sum(axis=1, keepdims=True)
        out = p.sum(axis=1) / np.maximum(n, 1)
        return np.where(n > 0, out, self._prior)  # no neighbour at all: the training-set average

    def neighbour_mean(self, values: np.ndarray, ids: np.ndarray, prior) -> np.ndarray:
        """Mean of per-training-atom ``values`` ([N] or [N, B]) over the neighbours ``ids`` [M, k].

        -1 entries are skipped; an atom with no neighbour at all gets ``prior()``
        (a callable, evaluated only then). Rows ([N, B]) are averaged as one
        sparse product ``W @ values`` (``W`` [M, N] holds 1/k at each neighbour):
        ~4x faster than gathering the [M, k, B] block first, and no copy of the table.
        """
        valid = ids >= 0
        complete = bool(valid.all())
        if values.ndim == 1 and complete:
            return values[ids].mean(axis=1, dtype=np.float64)
        n = ids.shape[1] * np.ones(len(ids), dtype=np.int64) if complete else valid.sum(axis=1)
        if values.ndim == 1:
            v = values[np.where(valid, ids, 0)].astype(np.float64)
            out = np.where(valid, v, 0.0).sum(axis=1) / np.maximum(n, 1)
        else:
            from scipy.sparse import csr_matrix

            weights = np.repeat((1.0 / np.maximum(n, 1)).astype(values.dtype), n)
            indptr = np.zeros(len(ids) + 1, dtype=np.int64)
            np.cumsum(n, out=indptr[1:])
            w = csr_matrix((weights, ids[valid] if not complete else ids.ravel(), indptr), shape=(len(ids), len(values)))
            out = np.asarray(w @ values, dtype=np.float64)
        if complete or (n > 0).all():
            return out
        empty = (n == 0).reshape((-1,) + (1,) * (out.ndim - 1))
        return np.where(empty, prior(), out)

    def below(self, tol: float) -> np.ndarray:
        """``P(error < tol)`` of every training atom (cached per ``tol``)."""
        tol = float(tol)
        if tol not in self._below:
            if len(self._below) > 8:
                self._below.clear()
            self._below[tol] = _chunked(lambda p: cdf_below(self.dists.edges, tol=tol, probabilities=p), self._probs)
        return self._below[tol]

    def predict(self, desc, numbers=None, *, tolerance: float | None = None, k: int | None = None, scale: float | None = None, level: float | None = None) -> Prediction:
        """Uncertainty of the atoms with descriptors ``desc`` from the mean distribution of their ``k`` neighbours.

        Expected error and ``P(e < tol)`` are linear in the distribution, so the
        per-atom values are averaged directly; the interval comes from the
        averaged CDF rows (the mean of the neighbours' CDFs is the CDF of their
        mean distribution). Equal to averaging the histograms first
        (:meth:`neighbour_probabilities`), up to float32 rounding of the CDF table.
        """
        k = self.k if k is None else int(k)
        ids, dist = self.index.query(desc, numbers, k)
        return self.from_neighbours(ids, dist, tolerance=tolerance, scale=scale, level=level)

    def from_neighbours(self, ids, dist, *, tolerance: float | None = None, scale: float | None = None, level: float | None = None) -> Prediction:
        """:meth:`predict` for neighbours already found (``ids``/``dist`` of :meth:`LTAUIndex.query`)."""
        s = self.calibration.scale if scale is None else float(scale)
        level = (self.calibration.interval_level or self.calibration.level) if level is None else float(level)
        if not 0 < level < 1:
            raise ConfigurationError(f"interval level must lie in (0, 1), got {level}")
        edges = self.dists.edges
        prior = self._prior  # an atom without any neighbour: the training-set mean distribution
        expected = s * self.neighbour_mean(self._expected, ids, lambda: float(prior @ (0.5 * (edges[:-1] + edges[1:]))))
        cdf = self.neighbour_mean(self._cdf, ids, lambda: np.cumsum(prior))
        interval = s * quantile_from_cdf(edges, cdf, ((1 - level) / 2, (1 + level) / 2))
        prob = None
        if tolerance is not None:
            prob = np.clip(self.neighbour_mean(self.below(tolerance / s), ids, lambda: float(cdf_below(edges, tol=tolerance / s, probabilities=prior)[0])), 0.0, 1.0)
        finite = np.isfinite(dist)
        n = finite.sum(axis=1)
        ood = np.where(n > 0, np.where(finite, dist, 0.0).sum(axis=1) / np.maximum(n, 1), np.inf)
        return Prediction(expected=expected, interval=interval, probability_below=prob, ood_score=ood, neighbours=ids, distances=dist)

    def check_adapter(self, adapter, dim: int | None = None) -> None:
        """ArtifactError unless ``adapter`` is the model (id and weights) this index was built for."""
        where = self.path or "this LTAU index"
        if adapter.model_id != self.model_id:
            raise ArtifactError(f"LTAU index {where} was built for model '{self.model_id}', not '{adapter.model_id}'; build it again for this model (descriptors and errors belong to one model)")
        if self.model_sha256 and getattr(adapter, "sha256", None) and adapter.sha256 != self.model_sha256:
            raise ArtifactError(f"LTAU index {where} was built for weights sha256 {self.model_sha256[:12]}..., but '{adapter.model_id}' has weights sha256 {adapter.sha256[:12]}...; build it again for these weights")
        if adapter.family != self.spec.get("family"):
            raise ArtifactError(f"LTAU index {where} holds descriptors of a '{self.spec.get('family')}' model, not '{adapter.family}'")
        if dim is not None and dim != self.spec.get("dim"):
            raise ArtifactError(f"LTAU index {where} holds {self.spec.get('dim')}-dimensional descriptors ({self.spec.get('layer')}); the model gives {dim}")

    # persistence ---------------------------------------------------------------

    def save(self, folder) -> Path:
        from . import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = self.index.write(folder)
        d = self.dists
        write_npz(folder / DISTRIBUTIONS, edges=d.edges, probabilities=self._probs, n_epochs=np.asarray(d.n_epochs if d.n_epochs is not None else np.zeros(0), dtype=np.int64), numbers=self.index.numbers, center=self.index.center, **{k: np.asarray(v) for k, v in self.extra.get("ids", {}).items()})
        files[DISTRIBUTIONS] = sha256_file(folder / DISTRIBUTIONS)
        manifest = {
            "format": LTAU_FORMAT,
            "format_version": LTAU_VERSION,
            "mlff_calc_version": __version__,
            "model": {"model_id": self.model_id, "sha256": self.model_sha256},
            "descriptor": self.spec,
            "index": self.index.describe(),
            "k": self.k,
            "calibration": self.calibration.as_dict(),
            "bins": {"n_bins": len(d.edges) - 1, "log": d.log_bins, "e_min": float(d.edges[0]), "e_max": float(d.edges[-1]), "burn_in": d.burn_in},
            "units": {"errors": "eV/Å (norm of the force-error vector)", "distances": "descriptor units (Euclidean)"},
            "files": files,
            "source": {k: v for k, v in self.extra.items() if k != "ids"},
        }
        write_json(folder / MANIFEST, manifest)
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder, adapter=None) -> "LTAU":
        """Read and verify an LTAU folder; ArtifactError names what is wrong, nothing is modified.

        With ``adapter``, also refuse (ArtifactError) a folder built for another model,
        other weights or another descriptor family.
        """
        ltau = cls._load(folder)
        if adapter is not None:
            ltau.check_adapter(adapter)
        return ltau

    @classmethod
    def _load(cls, folder) -> "LTAU":
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ArtifactError(f"LTAU folder {folder} does not exist")
        manifest = read_json(folder / MANIFEST, kind="LTAU manifest")
        check_manifest(manifest, fmt=LTAU_FORMAT, versions=(LTAU_VERSION,), path=folder / MANIFEST)
        try:
            files = dict(manifest["files"])
            model = manifest["model"]
            spec = dict(manifest["descriptor"])
            info = manifest["index"]
            cal = dict(manifest["calibration"])
            bins = manifest["bins"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"LTAU manifest {folder / MANIFEST} lacks or garbles {exc}; it is incomplete or corrupt") from exc
        for name, digest in files.items():
            path = folder / name
            if Path(name).name != name or not path.is_file():
                raise ArtifactError(f"LTAU folder {folder} lacks {name}, listed in its manifest")
            if sha256_file(path) != digest:
                raise ArtifactError(f"LTAU file {path} does not match the sha256 in {folder / MANIFEST}; it was changed or is corrupt")
        arrays = read_npz(folder / DISTRIBUTIONS, kind="LTAU distributions")
        faiss = _faiss()
        indexes = {}
        for name in files:
            if not name.endswith(".faiss"):
                continue
            key = 0 if name == "index.faiss" else int(name[len("index-") : -len(".faiss")])
            try:
                indexes[key] = faiss.read_index(str(folder / name))
            except RuntimeError as exc:
                raise ArtifactError(f"faiss index {folder / name} cannot be read ({exc}); it is corrupt") from exc
        if not indexes:
            raise ArtifactError(f"LTAU manifest {folder / MANIFEST} lists no faiss index")
        try:
            index = LTAUIndex(None, arrays["numbers"], kind=info["kind"], per_element=info["per_element"], hnsw_m=info["hnsw"]["m"], ef_construction=info["hnsw"]["ef_construction"], ef_search=info["hnsw"]["ef_search"], ivf_nlist=info.get("ivf", {}).get("nlist"), ivf_nprobe=info.get("ivf", {}).get("nprobe", 8), center=arrays.get("center"), exact_search=info.get("exact_search", "auto"), _indexes=indexes)
            dists = ErrorDistributions(edges=arrays["edges"], probabilities=arrays["probabilities"], n_epochs=arrays.get("n_epochs"), burn_in=int(bins["burn_in"]), log_bins=bool(bins["log"]))
            calibration = Calibration(**{k: cal[k] for k in ("scale", "k", "level", "interval_level", "coverage", "coverage_uncalibrated", "n_atoms", "table") if k in cal})
            if index.dim != spec["dim"] or len(dists.edges) != int(bins["n_bins"]) + 1:
                raise ArtifactError(f"LTAU folder {folder}: the index ({index.dim}-d) or bins disagree with {MANIFEST}")
            ids = {k: arrays[k] for k in ("structure_index", "atom_index") if k in arrays}
            return cls(index, dists, model_id=model["model_id"], model_sha256=model.get("sha256"), spec=spec, calibration=calibration, path=folder, extra={**manifest.get("source", {}), "ids": ids})
        except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
            raise ArtifactError(f"LTAU folder {folder} is inconsistent ({type(exc).__name__}: {exc}); it is corrupt") from exc


# calibration -----------------------------------------------------------------------


def interval_score(lo, hi, err, level: float) -> np.ndarray:
    alpha = 1.0 - level
    return (hi - lo) + (2 / alpha) * np.maximum(lo - err, 0) + (2 / alpha) * np.maximum(err - hi, 0)


def calibrate(ltau: LTAU, desc, numbers, errors, *, ks: Sequence[int] = (1, 2, 5, 10, 20, 50), level: float = 0.9, scales=None, interval_levels=None) -> Calibration:
    """Choose ``k``, the error scale and the interval's nominal level on held-out atoms.

    ``desc``/``numbers``/``errors``: descriptors, atomic numbers and actual
    force-error norms (eV/Å) of held-out atoms. Scaling alone cannot always reach
    the target: a central interval ``[s q_lo, s q_hi]`` moves both ends, so past
    some ``s`` it loses small errors below as fast as it gains large ones above.
    So per ``k`` every pair (scale on a log grid 0.05-20, nominal level 0.50-0.99)
    is tried; among the pairs whose coverage is within 0.5 % of ``level`` (or the
    closest ones if none is) the pair with the smallest mean interval score wins,
    then the ``k`` with the smallest score. The interval predicted afterwards uses
    that nominal level (``interval_level``) and has ``level`` coverage on these
    atoms. Sets and returns ``ltau.calibration``.
    """
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    desc = as_float32(desc)
    if len(errors) != len(desc) or len(errors) == 0:
        raise ConfigurationError(f"calibration needs one error per descriptor row, got {len(errors)} and {len(desc)}")
    if not 0 < level < 1:
        raise ConfigurationError(f"calibration level must lie in (0, 1), got {level}")
    scales = np.geomspace(0.05, 20.0, 241) if scales is None else np.asarray(scales, dtype=float)
    nominal = np.unique(np.round(np.concatenate([np.arange(0.50, 0.991, 0.01), [level]]), 4)) if interval_levels is None else np.asarray(interval_levels, dtype=float)
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= ltau.index.ntotal}) or [1]
    ids, _ = ltau.index.query(desc, numbers, max(ks))
    edges = ltau.dists.edges
    table = []
    for k in ks:
        p = ltau.neighbour_probabilities(ids[:, :k])
        best = None
        cov_at_1 = None
        for lev in nominal:
            iv = central_interval(edges, level=float(lev), probabilities=p)
            lo = scales[:, None] * iv[None, :, 0]
            hi = scales[:, None] * iv[None, :, 1]
            cov = np.mean((lo <= errors) & (errors <= hi), axis=1)
            score = np.mean(interval_score(lo, hi, errors, level), axis=1)
            if abs(lev - level) < 1e-9:
                cov_at_1 = float(np.mean((iv[:, 0] <= errors) & (errors <= iv[:, 1])))
            for j in range(len(scales)):
                cand = (max(abs(cov[j] - level) - 0.005, 0.0), score[j], abs(np.log(scales[j])), float(scales[j]), float(lev), float(cov[j]))
                if best is None or cand[:3] < best[:3]:
                    best = cand
        table.append({"k": k, "scale": best[3], "interval_level": best[4], "coverage": best[5], "coverage_uncalibrated": cov_at_1, "interval_score": float(best[1])})
    pick = min(table, key=lambda r: (abs(r["coverage"] - level) > 0.005 + 1e-12, r["interval_score"], r["k"]))
    ltau.calibration = Calibration(scale=pick["scale"], k=pick["k"], level=level, interval_level=pick["interval_level"], coverage=pick["coverage"], coverage_uncalibrated=pick["coverage_uncalibrated"], n_atoms=len(errors), table=table)
    log.info("LTAU calibration: k=%d scale=%.3g nominal level %.2f: coverage %.3f (uncalibrated %.3f) on %d atoms", pick["k"], pick["scale"], pick["interval_level"], pick["coverage"], pick["coverage_uncalibrated"], len(errors))
    return ltau.calibration


# building from a training run ------------------------------------------------------------


def _structures_by_index(training_structures) -> Mapping[int, object]:
    """``{structure_index: Atoms}`` from a label store (folder), a mapping or a sequence."""
    from .distill.labels import LabelStore

    if isinstance(training_structures, (str, Path)):
        training_structures = LabelStore(training_structures)
    if isinstance(training_structures, LabelStore):
        return {r.index: r.atoms for r in training_structures.records()}
    if isinstance(training_structures, Mapping):
        return {int(k): v for k, v in training_structures.items()}
    return dict(enumerate(training_structures))


def compute_descriptors(adapter, structures: Sequence, *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(descriptors [N, d] float32, numbers [N])`` of all atoms, structure after structure."""
    desc, numbers = [], []
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start : start + batch_size])
        for atoms, res in zip(chunk, adapter.evaluate(chunk, ("energy", "descriptors"), min_distance=None)):
            if "descriptors" not in res:
                raise ConfigurationError(f"{adapter.model_id} gives no per-atom descriptors; LTAU needs them")
            desc.append(as_float32(res["descriptors"]))
            numbers.append(np.asarray(atoms.numbers))
    return np.ascontiguousarray(np.concatenate(desc)), np.concatenate(numbers)


def reference_force_errors(adapter, structures: Sequence, reference_forces: Sequence[np.ndarray], *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One forward pass per batch: ``(descriptors, numbers, |F_model - F_ref| per atom, F_model)``."""
    desc, numbers, errs, forces = [], [], [], []
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start : start + batch_size])
        for j, (atoms, res) in enumerate(zip(chunk, adapter.evaluate(chunk, ("energy", "forces", "descriptors"), min_distance=None))):
            ref = np.asarray(reference_forces[start + j], dtype=np.float64)
            desc.append(as_float32(res["descriptors"]))
            numbers.append(np.asarray(atoms.numbers))
            errs.append(np.linalg.norm(res["forces"] - ref, axis=1))
            forces.append(res["forces"])
    return np.concatenate(desc), np.concatenate(numbers), np.concatenate(errs), np.concatenate(forces)


def _calibration_data(calibration):
    """``(structures, reference forces)`` from a label store / records / Atoms with forces."""
    from .distill.labels import LabelStore

    if isinstance(calibration, (str, Path)):
        calibration = LabelStore(calibration)
    if isinstance(calibration, LabelStore):
        records = calibration.records("valid") or calibration.records("test")
        return [r.atoms for r in records], [r.forces for r in records]
    items = list(calibration)
    if items and hasattr(items[0], "forces") and hasattr(items[0], "atoms"):
        return [r.atoms for r in items], [r.forces for r in items]
    if items and isinstance(items[0], tuple):
        return [a for a, _ in items], [f for _, f in items]
    forces = []
    for atoms in items:
        if "forces" in atoms.arrays:
            forces.append(atoms.arrays["forces"])
        elif atoms.calc is not None and "forces" in atoms.calc.results:
            forces.append(atoms.calc.results["forces"])
        else:
            raise ConfigurationError("calibration structures need reference forces (atoms.arrays['forces'] or a calculator with results)")
    return items, forces


def build_ltau(adapter, training_structures, error_log_path, out_dir=None, *, n_bins: int = 100, log_bins: bool = True, burn_in: int = 0, e_min: float | None = None, e_max: float | None = None, k: int = 10, index_kind: str = "flat", per_element: bool = False, hnsw_m: int = 32, ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = 64, ivf_nlist: int | None = None, ivf_nprobe: int = 8, exact_search: str = "auto", calibration=None, ks: Sequence[int] = (1, 2, 5, 10, 20, 50), level: float = 0.9, batch_size: int = 16) -> LTAU:
    """Build (and with ``out_dir`` save) an LTAU estimator for ``adapter``, the final trained model.

    ``training_structures``: the label store (or its folder) the model was trained
    on, a ``{structure_index: Atoms}`` mapping, or a sequence indexed by the error
    log's ``structure_index``. ``error_log_path``: the ``error_log.npz`` of the
    training run. Descriptors are computed with ``adapter`` in the error log's atom
    order. ``e_min=None``: half the smallest positive logged error, at least 1e-6 eV/Å
    (symmetric structures log float-noise errors that carry no information).
    ``calibration``: held-out labelled data (a label store, whose "valid" split is
    used, LabelRecords, ``(atoms, forces)`` pairs, or Atoms carrying reference
    forces); without it ``scale=1`` and the given ``k`` are stored.
    """
    log_arrays = read_npz(error_log_path, kind="error log")
    needed = ("errors", "structure_index", "atom_index", "numbers")
    if any(key not in log_arrays for key in needed):
        raise ArtifactError(f"error log {error_log_path} lacks {[k for k in needed if k not in log_arrays]}")
    errors = log_arrays["errors"]
    sidx, aidx, numbers = (np.asarray(log_arrays[k], dtype=np.int64) for k in needed[1:])
    if errors.ndim != 2 or errors.shape[1] != len(sidx) or errors.shape[0] == 0:
        raise ArtifactError(f"error log {error_log_path} has errors of shape {errors.shape} for {len(sidx)} atoms")
    by_index = _structures_by_index(training_structures)
    order = list(dict.fromkeys(sidx.tolist()))  # structures in the log's order of appearance
    missing = [s for s in order if s not in by_index]
    if missing:
        raise ConfigurationError(f"error log {error_log_path} refers to structures {missing[:5]} that training_structures lacks")
    structures = [by_index[s] for s in order]
    sizes = {s: len(a) for s, a in zip(order, structures)}
    if any(a >= sizes[s] for s, a in zip(sidx.tolist(), aidx.tolist())):
        raise ConfigurationError(f"error log {error_log_path} names atoms beyond the sizes of training_structures: the log belongs to other structures")
    desc_s, _ = compute_descriptors(adapter, structures, batch_size=batch_size)
    offsets = dict(zip(order, np.cumsum([0] + [len(a) for a in structures[:-1]])))
    rows = np.array([offsets[s] for s in sidx], dtype=np.int64) + aidx
    desc = np.ascontiguousarray(desc_s[rows])
    got = np.concatenate([np.asarray(a.numbers) for a in structures])[rows]
    if not np.array_equal(got, numbers):
        raise ConfigurationError(f"the atomic numbers in {error_log_path} do not match training_structures: the log belongs to other structures")
    if e_min is None:
        pos = errors[np.isfinite(errors) & (errors > 0)]
        e_min = max(float(pos.min()) * 0.5, 1e-6) if pos.size else 1e-6
    dists = error_distributions(errors, n_bins=n_bins, log_bins=log_bins, burn_in=burn_in, e_min=e_min, e_max=e_max)
    index = LTAUIndex(desc, numbers, kind=index_kind, per_element=per_element, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, ivf_nlist=ivf_nlist, ivf_nprobe=ivf_nprobe, exact_search=exact_search)
    spec = descriptor_spec(adapter, desc.shape[1])
    extra = {"error_log": str(error_log_path), "error_log_sha256": sha256_file(error_log_path), "n_epochs": int(errors.shape[0]), "n_atoms": int(len(sidx)), "ids": {"structure_index": sidx, "atom_index": aidx}}
    ltau = LTAU(index, dists, model_id=adapter.model_id, model_sha256=adapter.sha256, spec=spec, calibration=Calibration(k=int(k), level=level), extra=extra)
    if calibration is not None:
        structs, forces = _calibration_data(calibration)
        if not structs:
            raise ConfigurationError("the calibration data hold no structures")
        vdesc, vnum, verr, _ = reference_force_errors(adapter, structs, forces, batch_size=batch_size)
        calibrate(ltau, vdesc, vnum, verr, ks=ks, level=level)
    if out_dir is not None:
        ltau.save(out_dir)
    return ltau
