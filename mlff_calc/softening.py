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
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from . import __version__
from .artifacts import check_manifest, read_json, write_json
from .errors import ArtifactError, ConfigurationError, InvalidStructureError

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
FORCES_KEYS = ("dft_forces", "forces", "REF_forces")
ENERGY_KEYS = ("dft_energy", "energy", "REF_energy")
STRESS_KEYS = ("dft_stress", "stress", "REF_stress")
#: upstream package whose version is recorded for each model family
FAMILY_PACKAGES = {"chgnet": "chgnet", "m3gnet": "matgl", "mace": "mace-torch"}
MAX_ATOMS_PER_BATCH = 4096


# --------------------------------------------------------------------------- data


@dataclass
class DFTStructure:
    """One structure with DFT labels: forces (eV/Å), optional energy (eV) and stress (Voigt-6, eV/Å³, ASE sign)."""

    atoms: Atoms
    forces: np.ndarray
    energy: float | None = None
    stress: np.ndarray | None = None
    label: str = ""


@dataclass
class DFTDataset:
    """DFT-labelled structures from one source; ``reference`` is the undisplaced supercell of phonopy data."""

    structures: list[DFTStructure]
    source: str
    reference: Atoms | None = None

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.structures[index]
        return self.subset(range(len(self))[index] if isinstance(index, slice) else index)

    def subset(self, indices: Sequence[int]) -> "DFTDataset":
        """The same source restricted to ``indices`` (the reference structure is kept)."""
        indices = [int(i) for i in indices]
        label = ",".join(str(i) for i in indices)
        return DFTDataset([self.structures[i] for i in indices], f"{self.source}[{label}]", self.reference)

    @property
    def chemical_systems(self) -> list[str]:
        return sorted({chemical_system(s.atoms) for s in self.structures})


def chemical_system(atoms: Atoms) -> str:
    """Sorted element symbols joined by '-', e.g. ``"Cl-Na"``."""
    return "-".join(sorted(set(atoms.get_chemical_symbols())))


# --------------------------------------------------------------------------- reading


def read_dft_structures(path, *, index=":", forces_key: str | None = None, energy_key: str | None = None, stress_key: str | None = None, format: str | None = None) -> DFTDataset:
    """Read DFT-labelled structures from any ASE-readable file (extxyz, vasprun.xml, OUTCAR, ...).

    Forces come from the file's calculator results or, for extxyz, from the
    per-atom array ``forces_key`` (default: the first of ``dft_forces``, ``forces``,
    ``REF_forces``). Energies and stresses likewise (``dft_energy``, ``dft_stress``, ...).
    A frame without forces raises InvalidStructureError.
    """
    import ase.io

    path = Path(path)
    if not path.exists():
        raise ConfigurationError(f"DFT file {path} does not exist")
    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as exc:  # ASE raises many types for unreadable files
        raise InvalidStructureError(f"could not read DFT structures from {path}: {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise InvalidStructureError(f"{path} holds no structures")
    structures = [dft_structure(atoms, f"{path.name}:{k}", where=f"frame {k} of {path}", forces_key=forces_key, energy_key=energy_key, stress_key=stress_key) for k, atoms in enumerate(frames)]
    log.info("read %d DFT structures from %s", len(structures), path)
    return DFTDataset(structures, str(path))


def dft_structure(atoms: Atoms, label: str, *, where: str | None = None, forces_key: str | None = None, energy_key: str | None = None, stress_key: str | None = None) -> DFTStructure:
    """One DFT-labelled structure from an Atoms with forces in its calculator results or arrays.

    Keys are looked up as in :func:`read_dft_structures`; ``label`` names the
    structure in reports, ``where`` (default ``label``) in the error when forces are missing.
    """
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    forces = _find(results, atoms.arrays, "forces", forces_key, FORCES_KEYS)
    if forces is None:
        looked = forces_key or ", ".join(FORCES_KEYS)
        raise InvalidStructureError(
            f"{where or label} has no DFT forces (looked in calculator results and per-atom arrays {looked}); "
            "a softening fit needs forces: pass forces_key= if they are stored under another name"
        )
    forces = np.asarray(forces, dtype=float).reshape(len(atoms), 3)
    energy = _find(results, atoms.info, "energy", energy_key, ENERGY_KEYS)
    stress = _find(results, atoms.info, "stress", stress_key, STRESS_KEYS)
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        stress = full_3x3_to_voigt_6_stress(stress.reshape(3, 3)) if stress.size == 9 else stress.reshape(6)
    bare = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if atoms.has("masses"):
        bare.set_masses(atoms.get_masses())
    return DFTStructure(bare, forces, None if energy is None else float(energy), stress, label)


def _find(results: dict, store: dict, result_name: str, key: str | None, defaults: tuple[str, ...]):
    if key is not None:
        return store.get(key, results.get(key))
    if results.get(result_name) is not None:
        return results[result_name]
    for name in defaults:
        if store.get(name) is not None:
            return store[name]
    return None


def read_phonopy_dataset(disp_yaml, force_sets=None) -> DFTDataset:
    """Displaced supercells with DFT forces from a phonopy displacement yaml and its FORCE_SETS.

    ``force_sets=None`` takes the forces from the yaml itself (``phonopy_params.yaml``).
    Type-1 (one atom displaced) and type-2 (random displacements) datasets are read;
    lengths and forces are converted to Å and eV/Å with phonopy's own unit table.
    The dataset's ``reference`` is the undisplaced supercell.
    """
    from phonopy.interface.phonopy_yaml import read_phonopy_yaml

    disp_yaml = Path(disp_yaml)
    if not disp_yaml.exists():
        raise ConfigurationError(f"phonopy yaml {disp_yaml} does not exist")
    try:
        data = read_phonopy_yaml(disp_yaml)
    except Exception as exc:
        raise InvalidStructureError(f"could not read phonopy yaml {disp_yaml}: {exc}") from exc
    if data.supercell is None or not data.dataset:
        raise InvalidStructureError(f"{disp_yaml} holds no supercell and displacement dataset; pass phonopy_disp.yaml or phonopy_params.yaml")
    units = data.physical_units
    supercell = _phonopy_to_ase(data.supercell, units.distance_to_A)
    dataset = _force_dataset(data.dataset, force_sets, len(supercell), disp_yaml)
    displacements, forces, energies = _unpack(dataset, len(supercell))
    _check_same_displacements(displacements, _unpack(data.dataset, len(supercell), need_forces=False)[0], disp_yaml, force_sets)
    structures = []
    for k, (disp, force, energy) in enumerate(zip(displacements, forces, energies)):
        atoms = supercell.copy()
        atoms.positions += disp * units.distance_to_A
        e = None if energy is None else float(energy) * units.energy_to_eV
        structures.append(DFTStructure(atoms, np.asarray(force, float) * units.force_to_eVperA, e, label=f"disp-{k + 1:03d}"))
    source = f"{disp_yaml}" + (f" + {force_sets}" if force_sets is not None else "")
    log.info("read %d displaced supercells of %d atoms from %s", len(structures), len(supercell), source)
    return DFTDataset(structures, source, reference=supercell)


def _phonopy_to_ase(cell, distance_to_A: float) -> Atoms:
    return Atoms(
        symbols=list(cell.symbols),
        cell=np.asarray(cell.cell) * distance_to_A,
        scaled_positions=cell.scaled_positions,
        masses=cell.masses,
        pbc=True,
    )


def _force_dataset(yaml_dataset: dict, force_sets, natom: int, disp_yaml) -> dict:
    from phonopy.file_IO import parse_FORCE_SETS

    if force_sets is None:
        return yaml_dataset
    force_sets = Path(force_sets)
    if not force_sets.exists():
        raise ConfigurationError(f"FORCE_SETS file {force_sets} does not exist")
    try:
        return parse_FORCE_SETS(force_sets, natom=natom)
    except Exception as exc:
        raise InvalidStructureError(f"could not read {force_sets} for the {natom}-atom supercell of {disp_yaml}: {exc}") from exc


def _unpack(dataset: dict, natom: int, need_forces: bool = True):
    """(displacements [n, natom, 3], forces [n, natom, 3] or None, energies) of a type-1 or type-2 dataset."""
    if "first_atoms" in dataset:
        entries = dataset["first_atoms"]
        disps = np.zeros((len(entries), natom, 3))
        for k, entry in enumerate(entries):
            disps[k, entry["number"]] = entry["displacement"]
        forces = [e.get("forces") for e in entries]
        energies = [e.get("supercell_energy") for e in entries]
    else:
        disps = np.asarray(dataset.get("displacements", np.zeros((0, natom, 3))), float).reshape(-1, natom, 3)
        raw = dataset.get("forces")
        forces = [None] * len(disps) if raw is None else list(np.asarray(raw, float).reshape(-1, natom, 3))
        raw_e = dataset.get("supercell_energies")
        energies = [None] * len(disps) if raw_e is None else list(raw_e)
    if need_forces and (len(forces) == 0 or any(f is None for f in forces)):
        raise InvalidStructureError("the phonopy dataset has no DFT forces for its displacements; pass the FORCE_SETS file")
    return disps, forces, energies


def _check_same_displacements(from_forces, from_yaml, disp_yaml, force_sets) -> None:
    if force_sets is None:
        return
    if from_forces.shape != from_yaml.shape or not np.allclose(from_forces, from_yaml, atol=1e-5):
        raise ConfigurationError(
            f"the displacements in {force_sets} ({len(from_forces)} supercells) do not match those of {disp_yaml} "
            f"({len(from_yaml)} supercells); pass the FORCE_SETS made from this displacement yaml"
        )


# --------------------------------------------------------------------------- model evaluation


@dataclass
class _Pairs:
    """Model and DFT labels of one dataset, flattened per structure."""

    model_forces: list[np.ndarray]
    dft_forces: list[np.ndarray]
    model_energy: list[float]
    model_stress: list[np.ndarray | None]


def _evaluate(calc, atoms_list: list[Atoms], properties: set[str]) -> list[dict]:
    """Batched ``calc.evaluate`` in chunks; plain ASE calculators are called one structure at a time."""
    if not hasattr(calc, "evaluate"):
        return [_evaluate_ase(calc, atoms, properties) for atoms in atoms_list]
    results, chunk, n = [], [], 0
    for atoms in atoms_list:
        if chunk and n + len(atoms) > MAX_ATOMS_PER_BATCH:
            results += calc.evaluate(chunk, properties)
            chunk, n = [], 0
        chunk.append(atoms)
        n += len(atoms)
    return results + calc.evaluate(chunk, properties)


def _evaluate_ase(calc, atoms: Atoms, properties: set[str]) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if "stress" in properties:
        out["stress"] = atoms.get_stress()
    return out


def _resolve_subtract(dataset: DFTDataset, subtract_reference: bool | None) -> bool:
    if subtract_reference is None:
        return dataset.reference is not None
    if subtract_reference and dataset.reference is None:
        raise ConfigurationError(
            f"subtract_reference=True needs the undisplaced structure, but {dataset.source} has none; "
            "read phonopy data with read_phonopy_dataset"
        )
    return bool(subtract_reference)


def _pairs(calc, dataset: DFTDataset, *, subtract: bool, stress: bool) -> _Pairs:
    if len(dataset) == 0:
        raise ConfigurationError(f"{dataset.source} holds no structures to compare")
    atoms_list = [s.atoms for s in dataset.structures]
    if subtract:
        for k, atoms in enumerate(atoms_list):
            if len(atoms) != len(dataset.reference) or (atoms.numbers != dataset.reference.numbers).any():
                raise ConfigurationError(f"structure {k} of {dataset.source} does not have the atoms of its undisplaced reference")
        atoms_list = atoms_list + [dataset.reference]
    props = {"energy", "forces"} | ({"stress"} if stress else set())
    results = _evaluate(calc, atoms_list, props)
    ref_forces = results.pop()["forces"] if subtract else 0.0
    model_forces = [(r["forces"] - ref_forces).reshape(-1) for r in results]
    dft_forces = [np.asarray(s.forces, float).reshape(-1) for s in dataset.structures]
    for k, (fm, fd) in enumerate(zip(model_forces, dft_forces)):
        if fm.shape != fd.shape:
            raise InvalidStructureError(f"structure {k} of {dataset.source} has {fd.size // 3} DFT force rows for {fm.size // 3} atoms")
    return _Pairs(model_forces, dft_forces, [float(r["energy"]) for r in results], [r.get("stress") for r in results])


# --------------------------------------------------------------------------- measurement


@dataclass
class ForceStats:
    """Softening statistics of one set of force components (forces in eV/Å)."""

    label: str
    n_components: int
    s: float
    s_intercept: float
    intercept: float
    mae: float
    cmae: float
    rmse: float

    @classmethod
    def of(cls, label: str, model: np.ndarray, dft: np.ndarray) -> "ForceStats":
        s = softening_scale(model, dft)
        if dft.size > 1 and np.ptp(dft) > 0:
            slope, intercept = np.polyfit(dft, model, 1)
        else:
            slope, intercept = float("nan"), float("nan")
        cmae = float(np.mean(np.abs(model / s - dft))) if s != 0 and math.isfinite(s) else float("nan")
        return cls(label, int(model.size), s, float(slope), float(intercept), float(np.mean(np.abs(model - dft))), cmae, float(np.sqrt(np.mean((model - dft) ** 2))))


def softening_scale(model: np.ndarray, dft: np.ndarray) -> float:
    """``s = Σ f_m f_d / Σ f_d²``: the slope of model on DFT force components through the origin."""
    denom = float(np.dot(dft, dft))
    return float(np.dot(model, dft) / denom) if denom > 0 else float("nan")


@dataclass
class SofteningReport:
    """Per-structure and pooled softening statistics of a model against DFT.

    Per-structure cMAE divides by that structure's own ``s``; pooled cMAE by the pooled ``s``.
    """

    source: str
    model_id: str | None
    subtract_reference: bool
    structures: list[ForceStats]
    pooled: ForceStats

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        """The statistics as a markdown table."""
        head = "| structure | n | s | s (with intercept) | MAE (eV/Å) | cMAE (eV/Å) |\n|---|---|---|---|---|---|"
        rows = [f"| {r.label} | {r.n_components} | {r.s:.4f} | {r.s_intercept:.4f} | {r.mae:.5f} | {r.cmae:.5f} |" for r in [*self.structures, self.pooled]]
        return "\n".join([head, *rows])


def measure(calc, dataset: DFTDataset, *, subtract_reference: bool | None = None) -> SofteningReport:
    """Compare ``calc``'s forces with DFT: softening scale, MAE and cMAE per structure and pooled.

    ``subtract_reference``: use residual model forces (minus those on the undisplaced
    structure); ``None`` does so when the dataset has a reference.
    """
    subtract = _resolve_subtract(dataset, subtract_reference)
    pairs = _pairs(calc, dataset, subtract=subtract, stress=False)
    rows = [ForceStats.of(s.label or f"{k}:{s.atoms.get_chemical_formula()}", fm, fd) for k, (s, fm, fd) in enumerate(zip(dataset.structures, pairs.model_forces, pairs.dft_forces))]
    pooled = ForceStats.of("pooled", np.concatenate(pairs.model_forces), np.concatenate(pairs.dft_forces))
    return SofteningReport(dataset.source, _model_id(calc), subtract, rows, pooled)


def _model_id(calc) -> str | None:
    adapter = getattr(calc, "adapter", None)
    return getattr(adapter, "model_id", None)


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
    "c": float, "mode": str, "model_id": str, "chemical_system": str, "chemical_systems": list, "source": str,
    "n_structures": int, "n_components": int, "s": float, "s_intercept": float, "mae": float, "cmae": float, "mae_corrected": float,
}
_OPTIONAL = {
    "energy_weight": float, "force_weight": float, "stress_weight": float, "n_energies": int, "n_stresses": int,
    "subtract_reference": bool, "model_family": str, "model_version": str, "model_sha256": str,
    "mlff_calc_version": str, "units": dict,
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
            f"{dataset.source} mixes {len(formulas)} compositions ({', '.join(formulas[:5])}); "
            "one softening scale per composition is the default: pass allow_mixed=True to fit them together"
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
        raise ConfigurationError(
            f"the softening fit on {source} gave c = {c:.4g} <= 0: model and DFT forces do not correlate; "
            "check the data (units, atom order, residual-force subtraction)"
        )
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
