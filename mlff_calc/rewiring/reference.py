"""The spectrum reference of a training set and the choice of the cutoff r* per system (see :mod:`mlff_calc.rewiring`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ..errors import ArtifactError, ConfigurationError, InvalidStructureError
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
    _adjacency,
    _check_self_images,
    _Pairs,
    _pairs,
    histogram_distance,
    histogram_edges,
    laplacian_spectrum,
    spectrum_from_adjacency,
)

log = logging.getLogger(__name__)


# the reference --------------------------------------------------------------------
class SpectrumReference:
    """Spectral statistics of a model's training graphs at its native cutoff.

    ``mean_sorted``: mean ascending spectrum, each zero-padded at the end to
    ``padded_size`` (the largest training graph); ``histogram``: mean normalised
    histogram on ``edges``; ``band_fraction``: mean fraction of eigenvalues in ``band``.
    A reference belongs to one model (``model_id``, optionally ``model_sha256``) and
    one cutoff; :meth:`check` refuses any other with ArtifactError.
    """

    def __init__(
        self,
        *,
        model_id: str,
        cutoff: float,
        mean_sorted,
        histogram,
        edges,
        band_fraction: float,
        sizes,
        band=BAND,
        self_images: str = "drop",
        model_sha256: str | None = None,
        source: str | None = None,
        path: str | None = None,
    ):
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
    def build(
        cls,
        structures: Sequence[Atoms],
        *,
        model_id: str | None = None,
        cutoff: float | None = None,
        adapter=None,
        n_bins: int = DEFAULT_BINS,
        band=BAND,
        self_images: str = "drop",
        source: str | None = None,
        method: str = "dense",
        **spectrum_kwargs,
    ) -> "SpectrumReference":
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
        return cls(
            model_id=model_id,
            cutoff=float(cutoff),
            mean_sorted=padded.mean(axis=0),
            histogram=hist,
            edges=edges,
            band_fraction=frac,
            sizes=sizes,
            band=band,
            self_images=self_images,
            model_sha256=sha,
            source=source,
        )

    # binding ------------------------------------------------------------------------
    def check(self, adapter) -> None:
        """Raise ArtifactError unless this reference was built for ``adapter``'s model and native cutoff."""
        where = self.path or self.source or "spectrum reference"
        if self.model_id != adapter.model_id:
            raise ArtifactError(f"{where} was built for model '{self.model_id}', not '{adapter.model_id}'; build a reference from this model's training graphs")
        if self.model_sha256 and adapter.sha256 and self.model_sha256 != adapter.sha256:
            raise ArtifactError(f"{where} was built for '{self.model_id}' with weights sha256 {self.model_sha256[:12]}..., but the loaded weights have {adapter.sha256[:12]}...")
        if abs(self.cutoff - adapter.cutoff) > 1e-9:
            raise ArtifactError(
                f"{where} was built at cutoff {self.cutoff} Å, but {adapter.model_id} has native cutoff {adapter.cutoff} Å; the reference must describe the training graphs at the native cutoff"
            )

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
        from .._version import __version__

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
        from ..artifacts import sha256_file, write_json, write_npz

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
        from ..artifacts import check_manifest, read_json, read_npz, sha256_file

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
        ref = cls(
            model_id=model_id,
            cutoff=cutoff,
            mean_sorted=arrays["mean_sorted"],
            histogram=arrays["histogram"],
            edges=arrays["edges"],
            band_fraction=float(data["band_fraction"]),
            sizes=arrays["sizes"],
            band=band,
            self_images=graph["self_images"],
            model_sha256=data.get("model_sha256"),
            source=data.get("source"),
            path=str(path),
        )
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
        return {
            "r_star": self.r_star,
            "r_grid": self.r_grid,
            "gap": gap,
            "radii": self.radii.tolist(),
            "distances": self.distances.tolist(),
            "n_isolated": self.n_isolated.tolist(),
            "distance": self.distance,
            "methods": self.methods,
        }


def same_graph_interval(pairs: _Pairs, r: float, native: float, self_images: str = "drop") -> tuple[float, float]:
    """``(lo, hi)``: every radius in ``(lo, hi]`` gives the graph at ``r`` (pairs listed up to ``native``)."""
    d = pairs.d if self_images == "count" else pairs.d[pairs.i != pairs.j]
    below, above = d[d < r], d[d >= r]
    lo = float(below.max()) if below.size else 0.0
    hi = float(min(above.min(), native)) if above.size else float(native)
    return lo, hi


def choose_radius(
    atoms: Atoms,
    reference: SpectrumReference,
    *,
    distance: str = "padded_l2",
    radii=None,
    n_radii: int = DEFAULT_N_RADII,
    centre: bool = True,
    method: str = "auto",
    dense_max: int = DENSE_MAX,
    **spectrum_kwargs,
) -> RadiusChoice:
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
