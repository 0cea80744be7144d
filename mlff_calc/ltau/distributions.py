"""Per-atom error distributions and what is read off them (CDF, expected error, quantiles); see :mod:`mlff_calc.ltau`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigurationError

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
