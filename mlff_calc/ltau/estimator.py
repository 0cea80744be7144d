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
from typing import Sequence

import numpy as np

from ..artifacts import check_manifest, read_json, read_npz, sha256_file, write_json, write_npz
from ..errors import ArtifactError, ConfigurationError
from .distributions import ErrorDistributions, cdf_below, central_interval, expected_error, quantile_from_cdf
from .index import LTAUIndex, _faiss, as_float32

log = logging.getLogger(__name__)

LTAU_FORMAT = "mlff_calc.ltau"
LTAU_VERSION = 1
MANIFEST = "ltau.json"
DISTRIBUTIONS = "distributions.npz"


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
        return {
            "scale": self.scale,
            "k": self.k,
            "level": self.level,
            "interval_level": self.interval_level,
            "coverage": self.coverage,
            "coverage_uncalibrated": self.coverage_uncalibrated,
            "n_atoms": self.n_atoms,
            "table": self.table,
        }


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

    def __init__(
        self,
        index: LTAUIndex,
        dists: ErrorDistributions,
        *,
        model_id: str,
        model_sha256: str | None,
        spec: dict,
        calibration: Calibration | None = None,
        path: Path | None = None,
        extra: dict | None = None,
    ):
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
            raise ArtifactError(
                f"LTAU index {where} was built for weights sha256 {self.model_sha256[:12]}..., but '{adapter.model_id}' has weights sha256 {adapter.sha256[:12]}...; build it again for these weights"
            )
        if adapter.family != self.spec.get("family"):
            raise ArtifactError(f"LTAU index {where} holds descriptors of a '{self.spec.get('family')}' model, not '{adapter.family}'")
        if dim is not None and dim != self.spec.get("dim"):
            raise ArtifactError(f"LTAU index {where} holds {self.spec.get('dim')}-dimensional descriptors ({self.spec.get('layer')}); the model gives {dim}")

    # persistence ---------------------------------------------------------------

    def save(self, folder) -> Path:
        from .._version import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = self.index.write(folder)
        d = self.dists
        write_npz(
            folder / DISTRIBUTIONS,
            edges=d.edges,
            probabilities=self._probs,
            n_epochs=np.asarray(d.n_epochs if d.n_epochs is not None else np.zeros(0), dtype=np.int64),
            numbers=self.index.numbers,
            center=self.index.center,
            **{k: np.asarray(v) for k, v in self.extra.get("ids", {}).items()},
        )
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
            index = LTAUIndex(
                None,
                arrays["numbers"],
                kind=info["kind"],
                per_element=info["per_element"],
                hnsw_m=info["hnsw"]["m"],
                ef_construction=info["hnsw"]["ef_construction"],
                ef_search=info["hnsw"]["ef_search"],
                ivf_nlist=info.get("ivf", {}).get("nlist"),
                ivf_nprobe=info.get("ivf", {}).get("nprobe", 8),
                center=arrays.get("center"),
                exact_search=info.get("exact_search", "auto"),
                _indexes=indexes,
            )
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
    ltau.calibration = Calibration(
        scale=pick["scale"],
        k=pick["k"],
        level=level,
        interval_level=pick["interval_level"],
        coverage=pick["coverage"],
        coverage_uncalibrated=pick["coverage_uncalibrated"],
        n_atoms=len(errors),
        table=table,
    )
    log.info(
        "LTAU calibration: k=%d scale=%.3g nominal level %.2f: coverage %.3f (uncalibrated %.3f) on %d atoms",
        pick["k"],
        pick["scale"],
        pick["interval_level"],
        pick["coverage"],
        pick["coverage_uncalibrated"],
        len(errors),
    )
    return ltau.calibration
