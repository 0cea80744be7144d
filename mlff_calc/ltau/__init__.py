"""LTAU-FF: force uncertainty from the loss trajectory (Vita et al. 2024); the method is described in :mod:`.estimator`.

- :mod:`.distributions`: per-atom error distributions and what is read off them.
- :mod:`.index` (+ :mod:`.knn`): the nearest-neighbour index over training descriptors.
- :mod:`.estimator`: :class:`LTAU` (index + distributions + calibration, saved as a folder) and :func:`calibrate`.
- :mod:`.build`: :func:`build_ltau` from a training run's error log.
- :mod:`.layer`: :class:`LTAULayer`, per-atom uncertainties on a calculator, and :class:`UncertaintyMonitor`.
"""

from .build import build_ltau, compute_descriptors, reference_force_errors
from .distributions import CDF_TOL, ErrorDistributions, cdf_below, central_interval, error_distributions, expected_error, make_edges, quantile, quantile_from_cdf
from .estimator import DISTRIBUTIONS, LTAU, LTAU_FORMAT, LTAU_VERSION, MANIFEST, Calibration, Prediction, calibrate, descriptor_spec, interval_score
from .index import EXACT_SEARCH, HNSW_EF_CONSTRUCTION, INDEX_KINDS, KDTREE_MAX_DIM, LTAUIndex, as_float32
from .layer import PER_ATOM, PER_STRUCTURE, LTAULayer, UncertaintyMonitor, UncertaintyThresholdExceeded

__all__ = [
    "CDF_TOL",
    "DISTRIBUTIONS",
    "EXACT_SEARCH",
    "HNSW_EF_CONSTRUCTION",
    "INDEX_KINDS",
    "KDTREE_MAX_DIM",
    "LTAU",
    "LTAU_FORMAT",
    "LTAU_VERSION",
    "MANIFEST",
    "PER_ATOM",
    "PER_STRUCTURE",
    "Calibration",
    "ErrorDistributions",
    "LTAUIndex",
    "LTAULayer",
    "Prediction",
    "UncertaintyMonitor",
    "UncertaintyThresholdExceeded",
    "as_float32",
    "build_ltau",
    "calibrate",
    "cdf_below",
    "central_interval",
    "compute_descriptors",
    "descriptor_spec",
    "error_distributions",
    "expected_error",
    "interval_score",
    "make_edges",
    "quantile",
    "quantile_from_cdf",
    "reference_force_errors",
]
