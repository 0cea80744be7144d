"""Band-path helpers of the Phonons workflow (phonopy I/O lives in mlff_calc.data.phonopy)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigurationError

try:
    from phonopy.structure.cells import (
        PrimitiveMatrixAutoDefaultWarning as _AUTO_WARNING,
    )
except ImportError:  # phonopy < 4
    _AUTO_WARNING = None


def cell_widths(cell) -> np.ndarray:
    """Distances between opposite faces of a cell (Å)."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def special_point_frequencies(labels, band_frequencies_THz, path_connections) -> dict[str, float]:
    """The highest frequency (THz) at each labelled end of the band path, e.g. Γ, X, L (first occurrence)."""
    names = [_pretty(label) for label in labels]
    out: dict[str, float] = {}
    k = 0
    for i, freqs in enumerate(band_frequencies_THz):
        ends = [freqs[0]] if i == 0 or not path_connections[i - 1] else []
        ends.append(freqs[-1])
        for f in ends:
            if k < len(names):
                out.setdefault(names[k], float(max(f)))
            k += 1
    return out


def _reference_bands(reference, phonon, res) -> list[np.ndarray]:
    """The reference's frequencies on our band path (same primitive reciprocal basis required)."""
    ours, theirs = np.asarray(phonon.primitive.cell), np.asarray(reference.primitive.cell)
    shape = lambda c: c / abs(np.linalg.det(c)) ** (1 / 3)
    if ours.shape != theirs.shape or not np.allclose(shape(ours), shape(theirs), atol=2e-2):
        raise ConfigurationError(
            "the reference's primitive cell is not oriented like ours, so q-points cannot be shared; build the workflow with Phonons.from_phonopy_dataset(reference, calc)",
        )
    if reference.force_constants is None:
        raise ConfigurationError("the reference Phonopy object has no force constants (load it with forces, e.g. load_phonopy_reference)")
    reference.run_band_structure(res.band_qpoints, path_connections=res.band_path_connections, labels=res.band_labels or None)
    return [np.array(f) for f in reference.get_band_structure_dict()["frequencies"]]


def _band_ticks(res) -> tuple[list[float], list[str]]:
    """Tick positions and labels at the ends of the band segments (``A|B`` at a jump)."""
    labels = [_pretty(label) for label in res.band_labels]
    ticks = [float(res.band_distances[0][0])]
    names = [labels[0] if labels else ""]
    k = 1
    n = len(res.band_distances)
    for i, d in enumerate(res.band_distances):
        ticks.append(float(d[-1]))
        if not labels:
            names.append("")
        elif res.band_path_connections[i] or i == n - 1:
            names.append(labels[k] if k < len(labels) else "")
            k += 1
        else:
            names.append(f"{labels[k]}|{labels[k + 1]}" if k + 1 < len(labels) else labels[k])
            k += 2
    return ticks, names


def _pretty(label: str) -> str:
    return label.replace("$\\mathrm{", "").replace("}$", "").replace("$\\Gamma$", "Γ").replace("$", "").replace("\\Gamma", "Γ").replace("\\Sigma", "Σ").replace("\\Delta", "Δ").replace("\\Lambda", "Λ")
