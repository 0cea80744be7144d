"""Per-element conservative softening correction.

With per-atom energies ``E_i`` and per-element reference energies ``E_ref,Z``
(the model's own; zero in ``mode="total"``) the corrected energy is

    E' = E + Σ_i (c_Z_i - 1)(E_i - E_ref,Z_i)

which is ``Σ_i [E_ref,Z_i + c_Z_i (E_i - E_ref,Z_i)]`` whenever the per-atom
energies sum to ``E``. Forces and stress are the exact gradients of ``E'`` (the
adapter differentiates the reweighted energy, see ``ModelAdapter.compute``'s
``node_weights``), so MD stays conservative. With all ``c_Z = c`` it is the scalar
correction of :mod:`mlff_calc.softening`.

The corrected forces are linear in the scales:
``F' = F + Σ_Z (c_Z - 1) F_Z`` with ``F_Z = -∇ Σ_{i: Z_i = Z} E_i`` (one backward
pass per element). The fit is ridge least squares on force components pulled
toward the global scalar ``c0``:

    min_c |F_d - F - Σ_Z (c_Z - 1) F_Z|² + λ (tr AᵀA / n_el) Σ_Z (c_Z - c0)²

``λ`` is dimensionless (1: the pull weighs as much as an average element's data).
Residual forces (minus the undisplaced supercell's) are used for phonopy data, as
in the scalar fit.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from .._version import __version__
from ..artifacts import check_manifest, read_json, write_json
from ..checks import MIN_DISTANCE
from ..data.dft import DFTDataset, chemical_system
from ..errors import ArtifactError, ConfigurationError, InvalidStructureError
from ..layers.base import Layer, Request
from .fit import MODES, _closed_form, _package_version
from .measure import _resolve_subtract

log = logging.getLogger(__name__)

FORMAT = "mlff_calc.softening.elements"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- per-element forces


def element_forces(adapter, atoms) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(forces ``-∇E`` [N, 3], ``{Z: -∇ Σ_{i: Z_i = Z} E_i}``) of one structure, eV/Å, one forward pass."""
    import torch

    rc = adapter._validate([atoms], stress=False, cutoff=None, min_distance=MIN_DISTANCE)
    with torch.enable_grad():
        fwd = adapter._forward([atoms], rc, stress=False, descriptors=False)
        if fwd.node_energy is None:
            raise ConfigurationError(f"{adapter.model_id} gives no per-atom energies; per-element softening needs them")
        positions = list(fwd.positions)
        grads = torch.autograd.grad(fwd.energy.sum(), positions, retain_graph=True, allow_unused=True)
        forces = -_cat(grads, positions)
        node = fwd.node_energy.reshape(-1)
        parts = {}
        for z in sorted({int(n) for n in atoms.numbers}):
            mask = torch.as_tensor(atoms.numbers == z, device=node.device)
            g = torch.autograd.grad(node[mask].sum(), positions, retain_graph=True, allow_unused=True)
            parts[z] = -_cat(g, positions)
    return forces, parts


def _cat(grads, positions) -> np.ndarray:
    import torch

    full = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, positions)]
    return torch.cat(full).detach().cpu().double().numpy()


@dataclass
class Design:
    """Force components of a dataset, ready for linear fits: ``F' = base + parts.T @ (c - 1)``.

    ``base`` [n], ``parts`` [n_el, n], ``dft`` [n]; ``structure`` and ``atom`` [n] say
    where each component came from; ``elements`` the atomic numbers of ``parts``' rows.
    """

    base: np.ndarray
    parts: np.ndarray
    dft: np.ndarray
    structure: np.ndarray
    atom: np.ndarray
    elements: list[int]
    subtract_reference: bool
    source: str

    def rows(self, mask: np.ndarray) -> Design:
        return Design(self.base[mask], self.parts[:, mask], self.dft[mask], self.structure[mask], self.atom[mask], self.elements, self.subtract_reference, self.source)

    def predict(self, scales: dict[int, float]) -> np.ndarray:
        c = np.array([scales.get(z, 1.0) for z in self.elements])
        return self.base + (c - 1.0) @ self.parts


def build_design(calc, dataset: DFTDataset, *, subtract_reference: bool | None = None) -> Design:
    """Per-element force components of ``calc``'s bare model on every structure of ``dataset``."""
    adapter = getattr(calc, "adapter", calc)
    subtract = _resolve_subtract(dataset, subtract_reference)
    if len(dataset) == 0:
        raise ConfigurationError(f"{dataset.source} holds no structures to fit")
    elements = sorted({int(z) for s in dataset.structures for z in s.atoms.numbers})
    ref_f, ref_parts = element_forces(adapter, dataset.reference) if subtract else (0.0, {})
    base, parts, dft, where, atom = [], [], [], [], []
    for k, s in enumerate(dataset.structures):
        if subtract and (len(s.atoms) != len(dataset.reference) or (s.atoms.numbers != dataset.reference.numbers).any()):
            raise ConfigurationError(f"structure {k} of {dataset.source} does not have the atoms of its undisplaced reference")
        fd = np.asarray(s.forces, float).reshape(-1)
        if fd.size != 3 * len(s.atoms):
            raise InvalidStructureError(f"structure {k} of {dataset.source} has {fd.size // 3} DFT force rows for {len(s.atoms)} atoms")
        f, p = element_forces(adapter, s.atoms)
        base.append((f - ref_f).reshape(-1))
        zero = np.zeros_like(f)
        parts.append(np.stack([(p.get(z, zero) - ref_parts.get(z, 0.0)).reshape(-1) for z in elements]))
        dft.append(fd)
        where.append(np.full(fd.size, k))
        atom.append(np.repeat(np.arange(len(s.atoms)), 3))
    return Design(np.concatenate(base), np.concatenate(parts, axis=1), np.concatenate(dft), np.concatenate(where), np.concatenate(atom), elements, subtract, dataset.source)


def solve_scales(design: Design, ridge: float) -> tuple[dict[int, float], float]:
    """(``{Z: c_Z}``, global ``c0``) of the ridge fit in the module docstring."""
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ConfigurationError(f"ridge must be a finite number >= 0, not {ridge!r}")
    c0 = _closed_form([(1.0, design.base, design.dft)], design.source)
    a = design.parts.T
    b = design.dft - design.base + a.sum(axis=1)
    ata = a.T @ a
    strength = ridge * float(np.trace(ata)) / len(design.elements)
    c = np.linalg.solve(ata + strength * np.eye(len(design.elements)) + 1e-12 * np.eye(len(design.elements)), a.T @ b + strength * c0)
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ConfigurationError(f"the per-element softening fit on {design.source} gave scales {np.round(c, 4).tolist()}; use a stronger ridge or the scalar fit")
    return {z: float(v) for z, v in zip(design.elements, c)}, float(c0)


# --------------------------------------------------------------------------- the fit artifact


@dataclass
class ElementFit:
    """Fitted per-element scales (keyed by element symbol) and where they came from; saved as JSON."""

    scales: dict[str, float]
    c_global: float
    ridge: float
    mode: str
    model_id: str
    chemical_systems: list[str]
    source: str
    n_structures: int
    n_components: int
    mae: float
    mae_corrected: float
    subtract_reference: bool = False
    model_family: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    mlff_calc_version: str = __version__
    path: str | None = field(default=None, compare=False)

    @property
    def by_number(self) -> dict[int, float]:
        return {atomic_numbers[s]: c for s, c in self.scales.items()}

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    def save(self, path) -> None:
        """Write the fit as JSON, atomically, with a content checksum."""
        write_json(path, self.to_dict())
        self.path = str(path)

    @classmethod
    def load(cls, path) -> ElementFit:
        data = read_json(path, kind="per-element softening fit")
        check_manifest(data, fmt=FORMAT, versions=(FORMAT_VERSION,), path=path)
        missing = [k for k in ("scales", "c_global", "ridge", "mode", "model_id", "chemical_systems", "source") if k not in data]
        if missing:
            raise ArtifactError(f"per-element softening fit {path} lacks {', '.join(missing)}")
        scales = data["scales"]
        if not isinstance(scales, dict) or not scales or any(s not in atomic_numbers or not _positive(c) for s, c in scales.items()):
            raise ArtifactError(f"per-element softening fit {path}: scales {scales!r} are not element symbols with finite positive numbers")
        if not _positive(data["c_global"]) or data["mode"] not in MODES:
            raise ArtifactError(f"per-element softening fit {path}: c_global {data['c_global']!r} or mode {data['mode']!r} is invalid")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "path"}
        return cls(**fields, path=str(path))


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def fit_element_scales(calc, dataset: DFTDataset, *, ridge: float = 0.3, mode: str = "reference", subtract_reference: bool | None = None, design: Design | None = None) -> ElementFit:
    """Fit per-element scales of ``calc``'s model on ``dataset`` (forces only); see the module docstring."""
    adapter = getattr(calc, "adapter", None)
    if adapter is None:
        raise ConfigurationError("fit_element_scales needs an mlff_calc MLFFCalculator (the fit records the model it was made for)")
    if mode not in MODES:
        raise ConfigurationError(f"mode {mode!r} is not one of {MODES}")
    design = design or build_design(calc, dataset, subtract_reference=subtract_reference)
    scales, c0 = solve_scales(design, ridge)
    fit = ElementFit(
        scales={chemical_symbols[z]: c for z, c in scales.items()},
        c_global=c0,
        ridge=float(ridge),
        mode=mode,
        model_id=adapter.model_id,
        chemical_systems=dataset.chemical_systems,
        source=dataset.source,
        n_structures=len(dataset),
        n_components=int(design.dft.size),
        mae=float(np.mean(np.abs(design.base - design.dft))),
        mae_corrected=float(np.mean(np.abs(design.predict(scales) - design.dft))),
        subtract_reference=design.subtract_reference,
        model_family=getattr(adapter, "family", None) or None,
        model_version=_package_version(getattr(adapter, "family", "")),
        model_sha256=getattr(adapter, "sha256", None),
    )
    log.info("per-element softening fit on %s: %s (c0 = %.4f, MAE %.5f -> %.5f eV/Å)", dataset.source, fit.scales, c0, fit.mae, fit.mae_corrected)
    return fit


# --------------------------------------------------------------------------- the layer


class ElementSofteningLayer(Layer):
    """Scale each element's share of the learned energy by its own ``c_Z``; forces stay ``-∇E'``.

    ``scales``: ``{Z or symbol: c}``; elements not named get ``default`` (the fit's
    global scalar when built from a fit, else 1). ``fit`` binds the layer to the
    model it was made for; other chemical systems warn once, or raise with ``strict``.
    """

    name = "softening"
    changes_outputs = True

    def __init__(self, scales: dict, *, mode: str = "reference", default: float | None = None, fit: ElementFit | None = None, strict: bool = False):
        parsed = {}
        for key, c in dict(scales).items():
            z = atomic_numbers.get(key) if isinstance(key, str) else int(key)
            if z is None or not _positive(c):
                raise ConfigurationError(f"per-element softening scale {key!r}: {c!r} must be an element with a finite number > 0")
            parsed[z] = float(c)
        if not parsed:
            raise ConfigurationError("per-element softening needs at least one scale")
        if mode not in MODES:
            raise ConfigurationError(f"softening mode {mode!r} is not one of {MODES}")
        default = (fit.c_global if fit is not None else 1.0) if default is None else default
        if not _positive(default):
            raise ConfigurationError(f"default scale must be a finite number > 0, not {default!r}")
        self.scales, self.mode, self.default, self.fit, self.strict = parsed, mode, float(default), fit, bool(strict)
        self._weights: dict[int, float] = {}
        self._refs: dict[int, float] = {}
        self._warned: set[str] = set()

    @classmethod
    def from_file(cls, path, strict: bool = False) -> ElementSofteningLayer:
        fit = ElementFit.load(path)
        return cls(fit.by_number, mode=fit.mode, fit=fit, strict=strict)

    def bind(self, adapter) -> None:
        if self.fit is not None:
            where = self.fit.path or self.fit.source
            if self.fit.model_id != adapter.model_id or (self.fit.model_sha256 and adapter.sha256 and self.fit.model_sha256 != adapter.sha256):
                raise ArtifactError(
                    f"per-element softening fit {where} was made for model '{self.fit.model_id}', not the loaded '{adapter.model_id}' (or its weights changed); fit it again for this model"
                )
        self._weights = {int(z): self.scales.get(int(z), self.default) for z in adapter.elements}
        self._refs = dict(adapter.reference_energies()) if self.mode == "reference" else {}
        if self.mode == "reference" and not self._refs:
            raise ConfigurationError(f"model {adapter.model_id} has no per-element reference energies; use mode='total'")

    def before(self, atoms_list, request: Request) -> Request:
        if self.fit is not None:
            for atoms in atoms_list:
                self._check_system(atoms)
        request.properties = set(request.properties) | {"energies"}
        request.node_weights = {**(request.node_weights or {}), **self._weights}
        return request

    def _check_system(self, atoms) -> None:
        system = chemical_system(atoms)
        if system in self.fit.chemical_systems:
            return
        message = f"per-element softening scales were fitted on {', '.join(self.fit.chemical_systems)} ({self.fit.source}); applying them to {system} is an extrapolation"
        if self.strict:
            raise InvalidStructureError(message + "; strict=True refuses it")
        if system not in self._warned:
            self._warned.add(system)
            warnings.warn(message, UserWarning, stacklevel=4)

    def after(self, atoms_list, results: list[dict], request: Request | None = None) -> list[dict]:
        out = []
        for atoms, res in zip(atoms_list, results):
            res = dict(res)
            w = np.array([self._weights.get(int(z), 1.0) for z in atoms.numbers])
            ref = np.array([self._refs.get(int(z), 0.0) for z in atoms.numbers])
            site = np.asarray(res["energies"], float)
            excess = (w - 1.0) * (site - ref)
            energy = float(res["energy"])
            res["energy"] = energy + float(excess.sum())
            res["energies"] = site + excess
            res["contributions"] = {**res.get("contributions", {}), self.name: res["energy"] - energy}
            out.append(res)
        return out

    def reset(self) -> None:
        self._warned.clear()

    def describe(self) -> dict:
        info = {"name": self.name, "kind": "per-element", "scales": {chemical_symbols[z]: c for z, c in self.scales.items()}, "default": self.default, "mode": self.mode}
        if self.fit is not None:
            info.update(fit=self.fit.path or self.fit.source, model_id=self.fit.model_id)
        return info


__all__ = ["Design", "ElementFit", "ElementSofteningLayer", "build_design", "element_forces", "fit_element_scales", "solve_scales"]
