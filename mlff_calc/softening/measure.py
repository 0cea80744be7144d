"""Softening of a model against DFT forces: scale ``s``, MAE and cMAE per structure and pooled (see :mod:`mlff_calc.softening`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms

from ..data.dft import DFTDataset
from ..errors import ConfigurationError, InvalidStructureError

MAX_ATOMS_PER_BATCH = 4096


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
        raise ConfigurationError(f"subtract_reference=True needs the undisplaced structure, but {dataset.source} has none; read phonopy data with read_phonopy_dataset")
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
