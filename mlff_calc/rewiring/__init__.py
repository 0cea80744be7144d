"""Test-time rewiring: the graph cutoff refined per system from Laplacian spectra; the method is described in :mod:`.spectrum`.

- :mod:`.spectrum`: radius graphs, normalised Laplacian spectra (dense or KPM), distances between spectra.
- :mod:`.reference`: :class:`SpectrumReference` of a training set and :func:`choose_radius`.
- :mod:`.layer`: :class:`RewiringLayer`, which sets the cutoff of a calculator per system.
"""

from .layer import NARROW_GAP, RewiringLayer, system_key
from .reference import RadiusChoice, SpectrumReference, candidate_radii, choose_radius, same_graph_interval
from .spectrum import (
    BAND,
    DEFAULT_BINS,
    DEFAULT_N_RADII,
    DENSE_MAX,
    DISTANCES,
    GRID_START,
    SELF_IMAGES,
    SPECTRUM_FORMAT,
    SPECTRUM_VERSION,
    Spectrum,
    histogram_distance,
    histogram_edges,
    jackson_kernel,
    kpm_moments,
    laplacian_spectrum,
    normalized_adjacency,
    radius_graph,
    spectrum_from_adjacency,
)

__all__ = [
    "BAND",
    "DEFAULT_BINS",
    "DEFAULT_N_RADII",
    "DENSE_MAX",
    "DISTANCES",
    "GRID_START",
    "NARROW_GAP",
    "SELF_IMAGES",
    "SPECTRUM_FORMAT",
    "SPECTRUM_VERSION",
    "RadiusChoice",
    "RewiringLayer",
    "Spectrum",
    "SpectrumReference",
    "candidate_radii",
    "choose_radius",
    "histogram_distance",
    "histogram_edges",
    "jackson_kernel",
    "kpm_moments",
    "laplacian_spectrum",
    "normalized_adjacency",
    "radius_graph",
    "same_graph_interval",
    "spectrum_from_adjacency",
    "system_key",
]
