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

import numpy as np
import scipy.sparse as sp
from ase import Atoms

from ..errors import ConfigurationError, InvalidStructureError

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
    from ..neighbors import neighbor_list

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
