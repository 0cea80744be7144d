"""Softening of ML force fields (Deng et al. 2024, arXiv 2405.07105): measure it, fit a scale, store the fit.

Universal potentials trained on near-equilibrium data give forces that are
systematically too small. With model forces ``f_m`` and DFT forces ``f_d``
(flattened components, eV/Å):

- softening scale ``s = Σ f_m f_d / Σ f_d²`` (slope of model on DFT, no intercept;
  the slope with an intercept is reported too). ``s < 1`` means a softened model.
- ``MAE = mean |f_m - f_d|``; ``cMAE = mean |f_m / s - f_d|``, the error left once
  the systematic softening is divided out.
- correction scale ``c``: least squares of ``c f_m ≈ f_d``,
  ``c = Σ f_m f_d / Σ f_m²``. A fitted ``c`` is applied by
  :class:`mlff_calc.layers.softening.SofteningLayer`.

Fit with energy and stress terms (weights ``energy_weight``, ``force_weight``,
``stress_weight``; the paper's are 0.1 / 100 / 0.1, see :data:`PAPER_WEIGHTS`):

    L(c) = w_E mean_k (c a_k - b_k)² + w_F mean_i (c f_m,i - f_d,i)² + w_S mean_j (c σ_m,j - σ_d,j)²

with per-atom energies ``a_k = (E_m - E_ref) / n``, ``b_k = (E_d - E_ref) / n`` in
eV/atom (``E_ref`` = the model's own per-element reference energies summed over the
composition; ``E_ref = 0`` in ``mode="total"``), forces in eV/Å and stress in GPa
(Voigt-6 components). ``L`` is quadratic in ``c``, so
``c = (w_E ⟨ab⟩ + w_F ⟨f_m f_d⟩ + w_S ⟨σ_m σ_d⟩) / (w_E ⟨a²⟩ + w_F ⟨f_m²⟩ + w_S ⟨σ_m²⟩)``.
The energy term assumes the DFT energies are on the model's training energy scale.

Phonopy displacement data: the DFT geometry is not the model's equilibrium, so the
model's forces on the undisplaced supercell are subtracted from its forces on each
displaced one ("residual forces") before measuring or fitting. This is on by
default whenever a dataset carries its undisplaced ``reference`` structure.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.units import GPa

from .._version import __version__
from ..artifacts import check_manifest, read_json, write_json
from ..data.dft import DFTDataset
from ..errors import ArtifactError, ConfigurationError
from .measure import ForceStats, _Pairs, _pairs, _resolve_subtract

log = logging.getLogger(__name__)

FORMAT = "mlff_calc.softening"
FORMAT_VERSION = 1
MODES = ("reference", "total")
#: the loss weights of Deng et al. 2024 (energy / force / stress)
PAPER_WEIGHTS = {"energy_weight": 0.1, "force_weight": 100.0, "stress_weight": 0.1}
UNITS = {
    "forces": "eV/Å",
    "mae": "eV/Å",
    "energy_term": "eV/atom, relative to the model's per-element reference energies in mode 'reference'",
    "stress_term": "GPa",
    "c": "dimensionless",
    "s": "dimensionless",
}
#: upstream package whose version is recorded for each model family
FAMILY_PACKAGES = {"chgnet": "chgnet", "m3gnet": "matgl", "mace": "mace-torch"}


# --------------------------------------------------------------------------- fitting


@dataclass
class SofteningFit:
    """A fitted softening correction ``c`` and where it came from; saved as JSON."""

    c: float
    mode: str
    model_id: str
    chemical_system: str
    chemical_systems: list[str]
    source: str
    n_structures: int
    n_components: int
    s: float
    s_intercept: float
    mae: float
    cmae: float
    mae_corrected: float
    energy_weight: float = 0.0
    force_weight: float = 1.0
    stress_weight: float = 0.0
    n_energies: int = 0
    n_stresses: int = 0
    subtract_reference: bool = False
    model_family: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    mlff_calc_version: str = __version__
    units: dict = field(default_factory=lambda: dict(UNITS))
    path: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    def save(self, path) -> None:
        """Write the fit as JSON, atomically."""
        write_json(path, self.to_dict())
        self.path = str(path)

    @classmethod
    def load(cls, path) -> "SofteningFit":
        """Read a fit written by :meth:`save`; anything malformed raises ArtifactError."""
        data = read_json(path, kind="softening fit")
        check_manifest(data, fmt=FORMAT, versions=(FORMAT_VERSION,), path=path)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "path"}
        _validate(fields, path)
        return cls(**fields, path=str(path))


_REQUIRED = {
    "c": float,
    "mode": str,
    "model_id": str,
    "chemical_system": str,
    "chemical_systems": list,
    "source": str,
    "n_structures": int,
    "n_components": int,
    "s": float,
    "s_intercept": float,
    "mae": float,
    "cmae": float,
    "mae_corrected": float,
}
_OPTIONAL = {
    "energy_weight": float,
    "force_weight": float,
    "stress_weight": float,
    "n_energies": int,
    "n_stresses": int,
    "subtract_reference": bool,
    "model_family": str,
    "model_version": str,
    "model_sha256": str,
    "mlff_calc_version": str,
    "units": dict,
}


def _validate(fields: dict, path) -> None:
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in fields:
            if name in _REQUIRED:
                raise ArtifactError(f"softening fit {path} lacks the field '{name}'")
            continue
        if not _is_kind(fields[name], kind, optional=name in _OPTIONAL):
            raise ArtifactError(f"softening fit {path}: field '{name}' is {fields[name]!r}, not a {kind.__name__}")
        if kind is float and fields[name] is not None:
            fields[name] = float(fields[name])
    if not (math.isfinite(fields["c"]) and fields["c"] > 0):
        raise ArtifactError(f"softening fit {path}: c = {fields['c']!r} is not a finite positive number")
    if fields["mode"] not in MODES:
        raise ArtifactError(f"softening fit {path}: mode {fields['mode']!r} is not one of {MODES}")
    if not all(isinstance(x, str) for x in fields["chemical_systems"]):
        raise ArtifactError(f"softening fit {path}: chemical_systems must be a list of strings")


def _is_kind(value, kind, *, optional: bool) -> bool:
    if value is None:
        return optional
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def fit_scale(
    calc,
    dataset: DFTDataset,
    *,
    energy_weight: float = 0.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.0,
    mode: str = "reference",
    subtract_reference: bool | None = None,
    allow_mixed: bool = False,
    min_force_rms: float = 1e-3,
) -> SofteningFit:
    """Fit the correction scale ``c`` of ``calc`` (an MLFFCalculator) on DFT data; see the module docstring.

    Default: closed-form least squares on forces only. ``**PAPER_WEIGHTS`` adds the
    energy (eV/atom) and stress (GPa) terms with the paper's weights. ``mode`` picks
    the energy the layer will scale (``"reference"`` or ``"total"``) and therefore the
    energy term. ``allow_mixed=True`` accepts structures of different compositions.
    ``min_force_rms`` (eV/Å): model or DFT forces with a smaller RMS make the fit ill-conditioned.
    """
    adapter = getattr(calc, "adapter", None)
    if adapter is None:
        raise ConfigurationError("fit_scale needs an mlff_calc MLFFCalculator (the fit records the model it was made for)")
    _check_fit_options(mode, energy_weight, force_weight, stress_weight)
    _check_compositions(dataset, allow_mixed)
    subtract = _resolve_subtract(dataset, subtract_reference)
    if subtract and (energy_weight or stress_weight):
        raise ConfigurationError("energy and stress terms are not defined with residual-force subtraction; fit phonopy data on forces only")
    pairs = _pairs(calc, dataset, subtract=subtract, stress=bool(stress_weight))
    fm, fd = np.concatenate(pairs.model_forces), np.concatenate(pairs.dft_forces)
    terms = [(force_weight, fm, fd)] if force_weight else []
    if force_weight:
        _check_conditioning(fm, fd, min_force_rms, dataset.source)
    if energy_weight:
        terms.append((energy_weight, *_energy_terms(dataset, pairs, adapter, mode)))
    if stress_weight:
        terms.append((stress_weight, *_stress_terms(dataset, pairs)))
    c = _closed_form(terms, dataset.source)
    stats = ForceStats.of("fit", fm, fd)
    fit = SofteningFit(
        c=c,
        mode=mode,
        model_id=adapter.model_id,
        chemical_system="-".join(sorted({el for cs in dataset.chemical_systems for el in cs.split("-")})),
        chemical_systems=dataset.chemical_systems,
        source=dataset.source,
        n_structures=len(dataset),
        n_components=int(fm.size),
        s=stats.s,
        s_intercept=stats.s_intercept,
        mae=stats.mae,
        cmae=stats.cmae,
        mae_corrected=float(np.mean(np.abs(c * fm - fd))),
        energy_weight=float(energy_weight),
        force_weight=float(force_weight),
        stress_weight=float(stress_weight),
        n_energies=int(energy_weight and len(dataset)),
        n_stresses=int(stress_weight and len(dataset)),
        subtract_reference=subtract,
        model_family=getattr(adapter, "family", None) or None,
        model_version=_package_version(getattr(adapter, "family", "")),
        model_sha256=getattr(adapter, "sha256", None),
    )
    log.info("softening fit on %s: c = %.5f (s = %.5f, MAE %.5f -> %.5f eV/Å, %d components)", dataset.source, c, fit.s, fit.mae, fit.mae_corrected, fit.n_components)
    return fit


def _check_fit_options(mode, energy_weight, force_weight, stress_weight) -> None:
    if mode not in MODES:
        raise ConfigurationError(f"mode {mode!r} is not one of {MODES}")
    weights = {"energy_weight": energy_weight, "force_weight": force_weight, "stress_weight": stress_weight}
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ConfigurationError(f"{name} must be a finite number >= 0, not {w!r}")
    if not any(weights.values()):
        raise ConfigurationError("all fit weights are zero; give force_weight, energy_weight or stress_weight > 0")


def _check_compositions(dataset: DFTDataset, allow_mixed: bool) -> None:
    formulas = sorted({s.atoms.get_chemical_formula(empirical=True) for s in dataset.structures})
    if len(formulas) > 1 and not allow_mixed:
        raise ConfigurationError(
            f"{dataset.source} mixes {len(formulas)} compositions ({', '.join(formulas[:5])}); one softening scale per composition is the default: pass allow_mixed=True to fit them together"
        )


def _check_conditioning(fm: np.ndarray, fd: np.ndarray, min_force_rms: float, source: str) -> None:
    rms_m, rms_d = float(np.sqrt(np.mean(fm**2))), float(np.sqrt(np.mean(fd**2)))
    if min(rms_m, rms_d) < min_force_rms:
        raise ConfigurationError(
            f"the softening fit on {source} is ill-conditioned: forces are near zero "
            f"(RMS model {rms_m:.2e}, DFT {rms_d:.2e} eV/Å, below min_force_rms={min_force_rms:g}); "
            "fit on displaced or rattled structures"
        )


def _energy_terms(dataset: DFTDataset, pairs: _Pairs, adapter, mode: str):
    refs = adapter.reference_energies() if mode == "reference" else {}
    a, b = [], []
    for k, (s, e_model) in enumerate(zip(dataset.structures, pairs.model_energy)):
        if s.energy is None:
            raise ConfigurationError(f"energy_weight > 0 but structure {k} of {dataset.source} has no DFT energy")
        e_ref = composition_energy(s.atoms.numbers, refs) if mode == "reference" else 0.0
        a.append((e_model - e_ref) / len(s.atoms))
        b.append((s.energy - e_ref) / len(s.atoms))
    return np.array(a), np.array(b)


def _stress_terms(dataset: DFTDataset, pairs: _Pairs):
    a, b = [], []
    for k, (s, model) in enumerate(zip(dataset.structures, pairs.model_stress)):
        if s.stress is None or model is None:
            raise ConfigurationError(f"stress_weight > 0 but structure {k} of {dataset.source} has no DFT stress or is not periodic in 3D")
        a.append(np.asarray(model) / GPa)
        b.append(np.asarray(s.stress) / GPa)
    return np.concatenate(a), np.concatenate(b)


def _closed_form(terms, source: str) -> float:
    num = sum(w * float(np.mean(m * d)) for w, m, d in terms)
    den = sum(w * float(np.mean(m * m)) for w, m, d in terms)
    if not den > 0:
        raise ConfigurationError(f"the softening fit on {source} is ill-conditioned: the model's terms are all zero")
    c = num / den
    if not (math.isfinite(c) and c > 0):
        raise ConfigurationError(f"the softening fit on {source} gave c = {c:.4g} <= 0: model and DFT forces do not correlate; check the data (units, atom order, residual-force subtraction)")
    return c


def composition_energy(numbers, refs: dict[int, float]) -> float:
    """Σ of per-element reference energies (eV) over the atoms; unknown elements raise ConfigurationError."""
    missing = sorted({int(z) for z in numbers} - set(refs))
    if missing:
        raise ConfigurationError(f"the model has no reference energy for atomic numbers {missing}; use mode='total'")
    return float(sum(refs[int(z)] for z in numbers))


def _package_version(family: str) -> str | None:
    """``"<package> <version>"`` of the upstream package that runs ``family``."""
    package = FAMILY_PACKAGES.get(family)
    if package is None:
        return None
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return None
