"""Laplacian spectra of radius graphs and test-time radius refinement.

Kreiman & Krishnapriyan 2025 (arXiv 2503.08674): before predicting on a test
system, pick the graph cutoff ``r*`` whose graph looks most like the model's
training graphs in spectral terms, then evaluate the model on the graph at ``r*``.
This module holds the spectra, the reference built from training graphs, and the
choice of ``r*``; :class:`mlff_calc.layers.rewiring.RewiringLayer` applies it.

Graph convention (recorded in every reference artifact as ``graph``)
---------------------------------------------------------------------
* Unweighted radius graph: atoms ``i`` and ``j`` are joined when some periodic
  image of ``j`` lies closer than ``r`` to ``i`` (strictly, ``d < r``, as
  :func:`mlff_calc.neighbors.neighbor_list`).
* Periodic cells are a **multigraph on the cell**: ``A_ij`` is the number of images
  of ``j`` closer than ``r`` to ``i`` (so a 2-atom chain of period 2 at r = 1.5 has
  ``A_01 = 2``). ``A`` is symmetric because every image pair appears both ways.
* Pairs of an atom with its own periodic images (``i == j``, non-zero shift, only
  in cells shorter than ``r``) are self-loops of that multigraph. With
  ``self_images="drop"`` (the default, and the method's "self-loops removed") they
  are left out of ``A`` **and** of the degrees ``D = rowsum(A)``. With
  ``self_images="count"`` they are kept as ``A_ii`` = number of self images; the
  spectrum is then the Γ-point spectrum of the infinite periodic graph (a
  supercell's spectrum is the union of the primitive cell's over folded k-points).
  A reference and every test graph compared with it use the same convention.
* ``L = I - D^-1/2 A D^-1/2``; its eigenvalues lie in [0, 2]. An isolated atom
  (``D_ii = 0``) has ``D^-1/2 = 0`` by definition, so it contributes eigenvalue 1.

Spectra
-------
Up to ``dense_max`` atoms (default 2,000) the spectrum is exact
(``numpy.linalg.eigvalsh``). Above, it is a spectral density from the kernel
polynomial method: Chebyshev moments of ``M = D^-1/2 A D^-1/2`` (spectrum in
[-1, 1], no rescaling needed) estimated by Hutchinson's stochastic trace with
Rademacher vectors on a ``scipy.sparse`` matrix, damped with the Jackson kernel.
Its cumulative distribution is integrated analytically, giving histograms, the
band fraction and (as quantiles) an approximate sorted spectrum.

Distances (smaller is closer to the reference)
----------------------------------------------
* ``"padded_l2"``: ascending sorted spectrum, zero-padded at the end to the
  reference's padded size ``P`` (its largest training graph), L2 distance to the
  reference's mean padded spectrum. A test graph with more than ``P`` atoms is refused.
* ``"histogram"``: total-variation distance ``0.5 * sum |p - q|`` (in [0, 1])
  between normalised eigenvalue histograms on the reference's fixed grid over [0, 2].
* ``"band_fraction"``: ``|f - f_ref|`` with ``f`` the fraction of eigenvalues in [0.9, 1.1].

Reference statistics are means over training graphs, each graph weighted once
(not pooled over atoms).

Choosing r*
-----------
:func:`choose_radius` takes the candidate with the smallest distance (ties to the
larger radius). A candidate below the native cutoff is then, by default, moved to
the middle of the interval of radii that give exactly the same graph
(:func:`same_graph_interval`): same spectrum, same prediction with a sharp cut, but the largest
margin before a moving atom crosses the sharp cut at r* (CHGNet, M3GNet; MACE
adapters switch edges off smoothly over ``switch_width_A`` below r*, so crossings
do not make their energy jump).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from ase import Atoms

from .errors import ArtifactError, ConfigurationError, InvalidStructureError

log = logging.getLogger(__name__)

SPECTRUM_FORMAT = "mlff_calc.spectrum"
SPECTRUM_VERSION = 1
DISTANCES = ("padded_l2", "histogram", "band_fraction")
SELF_IMAGES = ("drop", "count")
DEFAULT_BINS = 50
BAND = (0.9, 1.1)
DENSE_MAX = 2000
DEFAULT_N_RADII = 10
#: fraction of the native cutoff where the default candidate grid starts
GRID_START = 0.5
_CDF_POINTS = 4001


# graphs ---------------------------------------------------------------------------
@dataclass
class _Pairs:
    """Directed neighbour pairs of one structure up to some radius, with distances."""

    n: int
    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    rmax: float


def _pairs(atoms: Atoms, rmax: float) -> _Pairs:
    from .neighbors import neighbor_list

    if len(atoms) == 0:
        raise InvalidStructureError("the structure has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        raise InvalidStructureError("positions are NaN or inf")
    i, j, shifts = neighbor_list(atoms, rmax)
    vec = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array
    return _Pairs(len(atoms), i, j, np.linalg.norm(vec, axis=1), float(rmax))


def _adjacency(pairs: _Pairs, r: float, self_images: str) -> sp.csr_matrix:
    keep = pairs.d < r
    if self_images == "drop":
        keep &= pairs.i != pairs.j
    data = np.ones(int(keep.sum()))
    return sp.csr_matrix((data, (pairs.i[keep], pairs.j[keep])), shape=(pairs.n, pairs.n))  # duplicates summed: multigraph


def radius_graph(atoms: Atoms, cutoff: float, *, self_images: str = "drop") -> sp.csr_matrix:
    """Symmetric adjacency (multigraph counts, see the module docstring) of the radius graph."""
    _check_self_images(self_images)
    if not cutoff > 0:
        raise ConfigurationError(f"graph radius must be > 0 Å, not {cutoff}")
    return _adjacency(_pairs(atoms, cutoff), cutoff, self_images)


def normalized_adjacency(adjacency) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(D^-1/2 A D^-1/2, degrees)``; isolated nodes get a zero row (eigenvalue 1 of L)."""
    a = sp.csr_matrix(adjacency, dtype=float)
    if a.shape[0] != a.shape[1]:
        raise ConfigurationError(f"adjacency must be square, not {a.shape}")
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = 1.0 / np.sqrt(deg[deg > 0])
    scale = sp.diags(inv)
    return sp.csr_matrix(scale @ a @ scale), deg


def _check_self_images(self_images: str) -> None:
    if self_images not in SELF_IMAGES:
        raise ConfigurationError(f"self_images must be one of {SELF_IMAGES}, not {self_images!r}")


# spectra --------------------------------------------------------------------------
@dataclass
class Spectrum:
    """The normalised-Laplacian spectrum of one graph, exact or as a KPM density.

    ``eigenvalues`` (ascending) is set for ``method == "dense"``; ``grid``/``cdf``
    (cumulative distribution of eigenvalues on [0, 2]) for ``method == "kpm"``.
    """

    n: int
    method: str
    n_isolated: int = 0
    eigenvalues: np.ndarray | None = None
    grid: np.ndarray | None = None
    cdf: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def cumulative(self, x) -> np.ndarray:
        """Fraction of eigenvalues ``<= x``."""
        x = np.asarray(x, dtype=float)
        if self.method == "dense":
            return np.searchsorted(self.eigenvalues, x, side="right") / self.n
        return np.interp(x, self.grid, self.cdf)

    def histogram(self, edges) -> np.ndarray:
        """Fraction of eigenvalues per bin (sums to 1 over a grid covering [0, 2])."""
        edges = np.asarray(edges, dtype=float)
        if self.method == "dense":
            counts, _ = np.histogram(np.clip(self.eigenvalues, edges[0], edges[-1]), bins=edges)
            return counts / self.n
        return np.diff(self.cumulative(edges))

    def band_fraction(self, band=BAND) -> float:
        lo, hi = band
        if self.method == "dense":
            ev = self.eigenvalues
            return float(np.count_nonzero((ev >= lo) & (ev <= hi)) / self.n)
        return float(self.cumulative(hi) - self.cumulative(lo))

    def sorted_values(self) -> np.ndarray:
        """Ascending eigenvalues (KPM: the quantiles at (k + 1/2)/n of its density)."""
        if self.method == "dense":
            return self.eigenvalues
        q = (np.arange(self.n) + 0.5) / self.n
        return np.interp(q, self.cdf, self.grid)


def spectrum_from_adjacency(adjacency, *, method: str = "auto", dense_max: int = DENSE_MAX, n_moments: int = 400, n_vectors: int | None = None, seed: int = 0) -> Spectrum:
    """Spectrum of ``L = I - D^-1/2 A D^-1/2`` for a symmetric adjacency (self-loops as given)."""
    m, deg = normalized_adjacency(adjacency)
    n = m.shape[0]
    if n == 0:
        raise InvalidStructureError("a graph without nodes has no spectrum")
    isolated = int(np.count_nonzero(deg == 0))
    if method == "auto":
        method = "dense" if n <= dense_max else "kpm"
    if method == "dense":
        lap = np.eye(n) - m.toarray()
        ev = np.clip(np.linalg.eigvalsh(lap), 0.0, 2.0)
        return Spectrum(n, "dense", isolated, eigenvalues=ev)
    if method == "kpm":
        return _kpm_spectrum(m, isolated, n_moments=n_moments, n_vectors=n_vectors, seed=seed)
    raise ConfigurationError(f"spectrum method must be 'auto', 'dense' or 'kpm', not {method!r}")


def laplacian_spectrum(atoms: Atoms, cutoff: float, *, self_images: str = "drop", **kwargs) -> Spectrum:
    """Spectrum of the radius graph of ``atoms`` at ``cutoff`` Å (kwargs: see :func:`spectrum_from_adjacency`)."""
    return spectrum_from_adjacency(radius_graph(atoms, cutoff, self_images=self_images), **kwargs)


def jackson_kernel(n_moments: int) -> np.ndarray:
    """Jackson damping factors g_0..g_{K-1} (Weisse et al., Rev. Mod. Phys. 78, 275 (2006), eq. 71)."""
    k = np.arange(n_moments)
    q = math.pi / (n_moments + 1)
    return ((n_moments - k + 1) * np.cos(q * k) + np.sin(q * k) / math.tan(q)) / (n_moments + 1)


def kpm_moments(m: sp.spmatrix, n_moments: int, n_vectors: int, seed: int = 0) -> np.ndarray:
    """Hutchinson estimates of ``tr T_k(M) / n`` for k < n_moments (Rademacher vectors).

    Uses T_2k = 2 T_k² - 1 and T_2k+1 = 2 T_k+1 T_k - T_1, so only n_moments/2 products.
    """
    n = m.shape[0]
    rng = np.random.default_rng(seed)
    z = rng.choice(np.array([-1.0, 1.0]), size=(n, n_vectors))
    mu = np.zeros(n_moments)
    t_prev, t_cur = z, m @ z
    zz = float(np.sum(z * z))
    zm = float(np.sum(z * t_cur))
    mu[0] = 1.0
    if n_moments > 1:
        mu[1] = float(m.diagonal().sum()) / n  # exact: tr T_1(M) = tr M (0 without self images)
    for k in range(1, (n_moments + 1) // 2):
        # t_prev = T_{k-1} z, t_cur = T_k z
        mu[2 * k] = (2.0 * float(np.sum(t_cur * t_cur)) - zz) / zz
        if 2 * k + 1 < n_moments:
            t_next = 2.0 * (m @ t_cur) - t_prev
            mu[2 * k + 1] = (2.0 * float(np.sum(t_next * t_cur)) - zm) / zz
            t_prev, t_cur = t_cur, t_next
    return mu


def _kpm_spectrum(m, isolated: int, *, n_moments: int, n_vectors: int | None, seed: int) -> Spectrum:
    n = m.shape[0]
    if n_moments < 2:
        raise ConfigurationError(f"KPM needs at least 2 moments, not {n_moments}")
    if n_vectors is None:
        # the relative noise of a moment is about sqrt(2 / (n * n_vectors)): aim at ~0.005
        n_vectors = int(min(64, max(8, math.ceil(80_000 / n))))
    mu = kpm_moments(m, n_moments, n_vectors, seed)
    g = jackson_kernel(n_moments) * mu
    grid = np.linspace(0.0, 2.0, _CDF_POINTS)
    theta = np.arccos(np.clip(1.0 - grid, -1.0, 1.0))  # eigenvalue x = 1 - λ of M
    k = np.arange(1, n_moments)
    # F_M(x) = P(eig M <= x) = g0 (π - θ)/π - (2/π) Σ g_k sin(kθ)/k; P(λ <= λ0) = 1 - F_M(1 - λ0)
    f_m = g[0] * (math.pi - theta) / math.pi - (2.0 / math.pi) * (np.sin(np.outer(theta, k)) / k) @ g[1:]
    cdf = np.maximum.accumulate(np.clip(1.0 - f_m, 0.0, 1.0))
    cdf[0], cdf[-1] = 0.0, 1.0
    return Spectrum(n, "kpm", isolated, grid=grid, cdf=cdf, info={"n_moments": n_moments, "n_vectors": n_vectors, "seed": seed})


def histogram_edges(n_bins: int = DEFAULT_BINS) -> np.ndarray:
    return np.linspace(0.0, 2.0, int(n_bins) + 1)


def histogram_distance(p, q) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` of two normalised histograms."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


# the reference --------------------------------------------------------------------
class SpectrumReference:
    """Spectral statistics of a model's training graphs at its native cutoff.

    ``mean_sorted``: mean ascending spectrum, each zero-padded at the end to
    ``padded_size`` (the largest training graph); ``histogram``: mean normalised
    histogram on ``edges``; ``band_fraction``: mean fraction of eigenvalues in ``band``.
    A reference belongs to one model (``model_id``, optionally ``model_sha256``) and
    one cutoff; :meth:`check` refuses any other with ArtifactError.
    """

    def __init__(self, *, model_id: str, cutoff: float, mean_sorted, histogram, edges, band_fraction: float, sizes, band=BAND, self_images: str = "drop", model_sha256: str | None = None, source: str | None = None, path: str | None = None):
        _check_self_images(self_images)
        self.model_id = str(model_id)
        self.cutoff = float(cutoff)
        self.mean_sorted = np.asarray(mean_sorted, dtype=float)
        self.histogram = np.asarray(histogram, dtype=float)
        self.edges = np.asarray(edges, dtype=float)
        self.band_fraction = float(band_fraction)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.band = (float(band[0]), float(band[1]))
        self.self_images = self_images
        self.model_sha256 = model_sha256
        self.source = source
        self.path = path

    padded_size = property(lambda self: int(self.mean_sorted.size), doc="length of the padded spectra (largest training graph)")
    n_structures = property(lambda self: int(self.sizes.size))

    def __repr__(self) -> str:
        return f"SpectrumReference({self.model_id!r}, cutoff={self.cutoff} Å, {self.n_structures} graphs, padded size {self.padded_size})"

    @classmethod
    def build(cls, structures: Sequence[Atoms], *, model_id: str | None = None, cutoff: float | None = None, adapter=None, n_bins: int = DEFAULT_BINS, band=BAND, self_images: str = "drop", source: str | None = None, method: str = "dense", **spectrum_kwargs) -> "SpectrumReference":
        """Statistics of ``structures`` (the model's training graphs) at ``cutoff``.

        Give ``adapter`` (model id, sha256 and native cutoff are taken from it) or
        ``model_id`` and ``cutoff``. Training graphs are diagonalised exactly by
        default (``method="dense"``) since the padded mean needs every eigenvalue.
        """
        if adapter is not None:
            if model_id is not None and model_id != adapter.model_id:
                raise ConfigurationError(f"model_id {model_id!r} differs from the adapter's {adapter.model_id!r}")
            if cutoff is not None and abs(cutoff - adapter.cutoff) > 1e-9:
                raise ConfigurationError(f"a reference is built at the model's native cutoff {adapter.cutoff} Å, not {cutoff} Å")
            model_id, cutoff, sha = adapter.model_id, adapter.cutoff, adapter.sha256
        else:
            sha = None
        if model_id is None or cutoff is None:
            raise ConfigurationError("SpectrumReference.build needs an adapter, or both model_id and cutoff")
        if not (isinstance(cutoff, (int, float, np.floating)) and math.isfinite(cutoff) and cutoff > 0):
            raise ConfigurationError(f"cutoff must be a finite number > 0 Å, not {cutoff!r}")
        _check_self_images(self_images)
        structures = list(structures)
        if not structures:
            raise ConfigurationError("a spectrum reference needs at least one structure")
        edges = histogram_edges(n_bins)
        spectra = [laplacian_spectrum(a, cutoff, self_images=self_images, method=method, **spectrum_kwargs) for a in structures]
        sizes = np.array([s.n for s in spectra])
        padded = np.zeros((len(spectra), int(sizes.max())))
        for row, s in zip(padded, spectra):
            row[: s.n] = s.sorted_values()
        hist = np.mean([s.histogram(edges) for s in spectra], axis=0)
        frac = float(np.mean([s.band_fraction(band) for s in spectra]))
        isolated = sum(s.n_isolated for s in spectra)
        if isolated:
            log.warning("%d isolated atoms in the reference graphs at %.3f Å (eigenvalue 1 each)", isolated, cutoff)
        return cls(model_id=model_id, cutoff=float(cutoff), mean_sorted=padded.mean(axis=0), histogram=hist, edges=edges, band_fraction=frac, sizes=sizes, band=band, self_images=self_images, model_sha256=sha, source=source)

    # binding ------------------------------------------------------------------------
    def check(self, adapter) -> None:
        """Raise ArtifactError unless this reference was built for ``adapter``'s model and native cutoff."""
        where = self.path or self.source or "spectrum reference"
        if self.model_id != adapter.model_id:
            raise ArtifactError(f"{where} was built for model '{self.model_id}', not '{adapter.model_id}'; build a reference from this model's training graphs")
        if self.model_sha256 and adapter.sha256 and self.model_sha256 != adapter.sha256:
            raise ArtifactError(f"{where} was built for '{self.model_id}' with weights sha256 {self.model_sha256[:12]}..., but the loaded weights have {adapter.sha256[:12]}...")
        if abs(self.cutoff - adapter.cutoff) > 1e-9:
            raise ArtifactError(f"{where} was built at cutoff {self.cutoff} Å, but {adapter.model_id} has native cutoff {adapter.cutoff} Å; the reference must describe the training graphs at the native cutoff")

    # distances ----------------------------------------------------------------------
    def check_size(self, n_atoms: int) -> None:
        """Padded L2 needs ``n_atoms <= padded_size``; raise InvalidStructureError otherwise."""
        if n_atoms > self.padded_size:
            raise InvalidStructureError(
                f"the test graph has {n_atoms} atoms, more than the reference's padded size {self.padded_size} "
                "(its largest training graph); padded L2 cannot compare it: use distance='histogram' or 'band_fraction'"
            )

    def distance(self, spectrum: Spectrum, kind: str = "padded_l2") -> float:
        if kind == "padded_l2":
            self.check_size(spectrum.n)
            padded = np.zeros(self.padded_size)
            padded[: spectrum.n] = spectrum.sorted_values()
            return float(np.linalg.norm(padded - self.mean_sorted))
        if kind == "histogram":
            return histogram_distance(spectrum.histogram(self.edges), self.histogram)
        if kind == "band_fraction":
            return abs(spectrum.band_fraction(self.band) - self.band_fraction)
        raise ConfigurationError(f"unknown spectral distance {kind!r}; use one of {DISTANCES}")

    # artifact -----------------------------------------------------------------------
    def _manifest(self, npz_name: str, npz_sha: str) -> dict:
        from . import __version__

        return {
            "format": SPECTRUM_FORMAT,
            "format_version": SPECTRUM_VERSION,
            "mlff_calc_version": __version__,
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "cutoff_A": self.cutoff,
            "graph": {
                "laplacian": "L = I - D^-1/2 A D^-1/2, unweighted radius graph, d < r",
                "periodic": "multigraph on the cell: A_ij = number of images of j within r of i",
                "self_images": self.self_images,
                "isolated": "D^-1/2 = 0: eigenvalue 1",
            },
            "padded_size": self.padded_size,
            "n_structures": self.n_structures,
            "histogram": {"n_bins": int(self.edges.size - 1), "range": [float(self.edges[0]), float(self.edges[-1])], "statistic": "mean over graphs of per-graph fractions"},
            "band": list(self.band),
            "band_fraction": self.band_fraction,
            "source": self.source,
            "units": {"length": "Å"},
            "arrays": {"file": npz_name, "sha256": npz_sha},
        }

    def save(self, path) -> Path:
        """Write ``path`` (JSON manifest, ``.json`` added if missing) and the arrays beside it (``.npz``)."""
        from .artifacts import sha256_file, write_json, write_npz

        path = Path(path)
        if path.suffix != ".json":
            path = path.with_name(path.name + ".json")
        npz = path.with_suffix(".npz")
        write_npz(npz, mean_sorted=self.mean_sorted, histogram=self.histogram, edges=self.edges, sizes=self.sizes)
        write_json(path, self._manifest(npz.name, sha256_file(npz)))
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path, *, adapter=None) -> "SpectrumReference":
        """Read a reference written by :meth:`save`; with ``adapter``, also :meth:`check` it."""
        from .artifacts import check_manifest, read_json, read_npz, sha256_file

        path = Path(path)
        data = read_json(path, kind="spectrum reference")
        check_manifest(data, fmt=SPECTRUM_FORMAT, versions=(SPECTRUM_VERSION,), path=path)
        try:
            arrays_entry = data["arrays"]
            npz = path.with_name(Path(arrays_entry["file"]).name)
            graph = data["graph"]
            model_id, cutoff, band = data["model_id"], float(data["cutoff_A"]), data["band"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"spectrum reference {path} lacks or garbles entry {exc}; it is incomplete or corrupt") from exc
        if not npz.is_file():
            raise ArtifactError(f"spectrum reference arrays {npz} do not exist")
        if sha256_file(npz) != arrays_entry.get("sha256"):
            raise ArtifactError(f"spectrum reference arrays {npz} do not match the sha256 in {path}; the file was changed or is corrupt")
        arrays = read_npz(npz, kind="spectrum reference")
        missing = {"mean_sorted", "histogram", "edges", "sizes"} - set(arrays)
        if missing:
            raise ArtifactError(f"spectrum reference arrays {npz} lack {sorted(missing)}")
        if graph.get("self_images") not in SELF_IMAGES:
            raise ArtifactError(f"spectrum reference {path} names an unknown self-image convention {graph.get('self_images')!r}")
        ref = cls(model_id=model_id, cutoff=cutoff, mean_sorted=arrays["mean_sorted"], histogram=arrays["histogram"], edges=arrays["edges"], band_fraction=float(data["band_fraction"]), sizes=arrays["sizes"], band=band, self_images=graph["self_images"], model_sha256=data.get("model_sha256"), source=data.get("source"), path=str(path))
        if adapter is not None:
            ref.check(adapter)
        return ref


# choosing r* ----------------------------------------------------------------------
def candidate_radii(native: float, radii=None, n: int = DEFAULT_N_RADII) -> np.ndarray:
    """Sorted candidate radii: ``radii`` or ``n`` values from ``0.5 rc`` to ``rc``; ``rc`` always included.

    Any radius outside (0, rc] raises ConfigurationError (the model cannot look further than rc).
    """
    native = float(native)
    if radii is None:
        if int(n) < 1:
            raise ConfigurationError(f"need at least one candidate radius, not {n}")
        grid = np.linspace(GRID_START * native, native, int(n)) if n > 1 else np.array([native])
    else:
        grid = np.atleast_1d(np.asarray(radii, dtype=float))
        if grid.size == 0 or not np.all(np.isfinite(grid)):
            raise ConfigurationError(f"candidate radii must be finite numbers, not {radii!r}")
        bad = grid[(grid <= 0) | (grid > native + 1e-9)]
        if bad.size:
            raise ConfigurationError(f"candidate radii {bad.tolist()} Å lie outside (0, {native}] Å, the model's native cutoff; the graph cannot be wider than the model's cutoff")
    grid = np.unique(np.concatenate([np.minimum(grid, native), [native]]))
    return grid


@dataclass
class RadiusChoice:
    """The refined radius of one system and the evidence for it.

    ``r_grid`` is the best candidate radius; ``r_star`` the radius used, which is
    ``r_grid`` or, when centred, the middle of ``gap``: the interval of radii
    ``(d_below, d_above]`` that all give the same graph as ``r_grid`` (the largest
    pair distance below ``r_grid`` and the smallest at or above it).
    """

    r_star: float
    radii: np.ndarray
    distances: np.ndarray
    n_isolated: np.ndarray
    distance: str
    methods: list[str]
    r_grid: float | None = None
    gap: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        gap = None if self.gap is None else [float(self.gap[0]), float(self.gap[1])]
        return {"r_star": self.r_star, "r_grid": self.r_grid, "gap": gap, "radii": self.radii.tolist(), "distances": self.distances.tolist(), "n_isolated": self.n_isolated.tolist(), "distance": self.distance, "methods": self.methods}


def same_graph_interval(pairs: _Pairs, r: float, native: float, self_images: str = "drop") -> tuple[float, float]:
    """``(lo, hi)``: every radius in ``(lo, hi]`` gives the graph at ``r`` (pairs listed up to ``native``)."""
    d = pairs.d if self_images == "count" else pairs.d[pairs.i != pairs.j]
    below, above = d[d < r], d[d >= r]
    lo = float(below.max()) if below.size else 0.0
    hi = float(min(above.min(), native)) if above.size else float(native)
    return lo, hi


def choose_radius(atoms: Atoms, reference: SpectrumReference, *, distance: str = "padded_l2", radii=None, n_radii: int = DEFAULT_N_RADII, centre: bool = True, method: str = "auto", dense_max: int = DENSE_MAX, **spectrum_kwargs) -> RadiusChoice:
    """Pick the candidate radius whose graph's spectrum is closest to ``reference``.

    The neighbour list is built once at the largest radius and filtered for the others.
    Ties go to the larger radius (the one nearer the native cutoff). The native
    cutoff, when chosen, is kept as it is. A smaller choice is, with ``centre``
    (the default), moved to the middle of the interval of radii that give the
    same graph (:func:`same_graph_interval`): the graph, and so the spectral
    distance and (for a sharp cut at ``r*``) the model's prediction for ``atoms``,
    are unchanged, but atoms
    that then move (MD, relaxation) are as far as possible from crossing ``r*``,
    where a sharply cut graph makes the energy jump (MACE adapters instead switch
    edges off smoothly below ``r*``; see ``MACEAdapter.switch_width_A``).
    """
    if distance not in DISTANCES:
        raise ConfigurationError(f"unknown spectral distance {distance!r}; use one of {DISTANCES}")
    grid = candidate_radii(reference.cutoff, radii, n_radii)
    if distance == "padded_l2":
        reference.check_size(len(atoms))  # before any neighbour list or spectrum
    pairs = _pairs(atoms, float(grid[-1]))
    dists, isolated, methods = [], [], []
    for r in grid:
        spec = spectrum_from_adjacency(_adjacency(pairs, float(r), reference.self_images), method=method, dense_max=dense_max, **spectrum_kwargs)
        dists.append(reference.distance(spec, distance))
        isolated.append(spec.n_isolated)
        methods.append(spec.method)
    dists = np.asarray(dists)
    k = len(dists) - 1 - int(np.argmin(dists[::-1]))
    isolated = np.asarray(isolated, dtype=np.int64)
    if isolated[k]:
        log.warning("%s: %d isolated atoms in the graph at r* = %.3f Å (eigenvalue 1 each)", atoms.get_chemical_formula(), isolated[k], grid[k])
    r_grid = float(grid[k])
    gap = same_graph_interval(pairs, r_grid, float(grid[-1]), reference.self_images)
    r_star = r_grid if not centre or k == len(grid) - 1 else 0.5 * (gap[0] + gap[1])
    return RadiusChoice(r_star, grid, dists, isolated, distance, methods, r_grid=r_grid, gap=gap)
