"""The nearest-neighbour index over training descriptors (faiss flat / HNSW / IVF, exact k-d tree or blocked search)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..artifacts import atomic_path, sha256_file
from ..errors import ArtifactError, ConfigurationError

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivf")
EXACT_SEARCH = ("auto", "faiss", "kdtree", "blocked")
#: ``exact_search="auto"`` uses a k-d tree up to this descriptor dimension (faster than
#: faiss's brute force up to CHGNet's 64-d descriptors: BENCHMARKS.md §7.1).
KDTREE_MAX_DIM = 64
#: HNSW build breadth: a wider build lowers the efSearch needed for recall@10 >= 0.95; the graph
#: is built once and searched every call (benchmarks/ltau_hnsw_build.py, BENCHMARKS.md §7.1).
HNSW_EF_CONSTRUCTION = 200


# nearest neighbours ------------------------------------------------------------


def _faiss():
    from .._runtime import backend

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
    matrix products with pruned top-k (:mod:`mlff_calc.ltau.knn`; exact, re-ranked
    in float64, fast for wider descriptors); ``"auto"`` (default): kdtree when
    ``dim <= KDTREE_MAX_DIM``, blocked above.
    """

    def __init__(
        self,
        descriptors,
        numbers,
        *,
        kind: str = "flat",
        per_element: bool = False,
        hnsw_m: int = 32,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = 64,
        ivf_nlist: int | None = None,
        ivf_nprobe: int = 8,
        center=None,
        exact_search: str = "auto",
        _indexes=None,
    ):
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
        """The exact search (:mod:`mlff_calc.ltau.knn`) over the vectors of faiss index ``key``, built on first use."""
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
        return {
            "kind": self.kind,
            "per_element": self.per_element,
            "hnsw": self.hnsw,
            "ivf": self.ivf,
            "dim": self.dim,
            "n_atoms": self.ntotal,
            "exact_search": self.exact_search,
            "centred": bool(np.any(self.center != 0)),
        }
