"""Workflows: relaxation, equation of state, phonons, MD, surfaces and point defects.

Each workflow is a class that takes an ``Atoms``, an ASE calculator (ours or any
other) and explicit keyword parameters with units in their names. ``run()``
returns a plain result dataclass; ``output_files`` lists, before anything runs,
the paths the ``write_*()`` methods will use (all derived from one ``prefix``).

Calculators that offer ``evaluate(atoms_list, properties)`` (our
:class:`~mlff_calc.calculator.MLFFCalculator`) are used in batches, one forward
pass for many structures; any other ASE calculator is called structure by
structure.

The workflow classes are imported lazily, so ``import mlff_calc.workflows`` stays
cheap. The small helpers below are shared by every workflow module.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..errors import ConfigurationError

log = logging.getLogger(__name__)

#: units written into every summary file of a workflow
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³", "pressure": "GPa", "time": "fs", "temperature": "K", "frequency": "THz"}

_LAZY = {
    "Relax": "relax",
    "RelaxResult": "relax",
    "EquationOfState": "eos",
    "EOSResult": "eos",
    "fit_birch_murnaghan": "eos",
    "Phonons": "phonons",
    "PhononResult": "phonons",
    "load_phonopy_reference": "phonons",
    "MolecularDynamics": "md",
    "MDResult": "md",
    "SurfaceEnergy": "surface",
    "SurfaceResult": "surface",
    "PointDefect": "defects",
    "DefectResult": "defects",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# shared helpers -------------------------------------------------------------------


def default_prefix(atoms: Atoms, prefix) -> Path:
    """``prefix`` as a Path, or ``mlff_results/<formula>`` when none was given."""
    if prefix is not None:
        return Path(prefix)
    return Path("mlff_results") / atoms.get_chemical_formula(mode="metal", empirical=False)


def output_path(prefix: Path, suffix: str) -> Path:
    """``<prefix>-<suffix>``; ``prefix`` may contain folders."""
    return prefix.parent / f"{prefix.name}-{suffix}"


def progress_bar(iterable=None, *, total=None, desc: str = "", enabled: bool | None = None):
    """A tqdm bar; ``enabled=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=None if enabled is None else not enabled, leave=False)


def has_batched_evaluate(calc) -> bool:
    """Whether ``calc`` offers mlff_calc's batched ``evaluate(atoms_list, properties)``."""
    return callable(getattr(calc, "evaluate", None))


def evaluate_structures(
    calc,
    structures: Sequence[Atoms],
    properties: Iterable[str] = ("energy", "forces"),
    *,
    batch_size: int = 32,
    progress: bool | None = None,
    desc: str = "evaluate",
) -> list[dict]:
    """Energy/forces/stress of many structures: batched through ``calc.evaluate`` when available.

    Returns one dict per structure with float64 numpy values. With a plain ASE
    calculator each structure is copied and evaluated on its own; the inputs are
    never modified.
    """
    properties = tuple(properties)
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    results: list[dict] = []
    structures = list(structures)
    with progress_bar(total=len(structures), desc=desc, enabled=progress) as bar:
        if has_batched_evaluate(calc):
            for start in range(0, len(structures), batch_size):
                batch = structures[start : start + batch_size]
                for res in calc.evaluate(batch, properties):
                    results.append({k: res[k] for k in properties if k in res})
                bar.update(len(batch))
        else:
            for atoms in structures:
                work = atoms.copy()
                work.calc = calc
                res = {}
                if "energy" in properties:
                    res["energy"] = float(work.get_potential_energy())
                if "forces" in properties:
                    res["forces"] = np.asarray(work.get_forces(), dtype=float)
                if "stress" in properties:
                    res["stress"] = np.asarray(work.get_stress(voigt=True), dtype=float)
                results.append(res)
                bar.update(1)
    return results


def lattice_parameters(atoms: Atoms) -> dict[str, float]:
    """Cell lengths (Å), angles (degrees) and volume (Å³)."""
    a, b, c, alpha, beta, gamma = (float(x) for x in atoms.cell.cellpar())
    return {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma, "volume": float(atoms.get_volume())}


#: results that go to a SinglePointCalculator (and so to extxyz as standard fields)
_SINGLE_POINT = ("energy", "free_energy", "forces", "stress", "energies", "stresses", "magmom", "magmoms", "charges", "dipole")


def snapshot(atoms: Atoms, results: dict | None = None) -> Atoms:
    """A copy of ``atoms`` that keeps its calculator's results through an extxyz round trip.

    Standard ASE properties (energy, forces, stress, ...) go to a
    SinglePointCalculator; any other per-atom array goes to ``atoms.arrays`` and any
    other scalar to ``atoms.info`` (nested dicts such as ``contributions`` are
    flattened with ``_``). Momenta are kept in ``arrays["momenta"]``.
    """
    frame = atoms.copy()  # copies arrays (momenta included), info and constraints
    if results is None:
        calc = atoms.calc
        if calc is not None and hasattr(calc, "complete_results"):
            calc.complete_results()  # outputs deferred by on-demand layers belong in the frame
        results = calc.results if calc is not None else {}
    standard, extras = {}, {}
    for key, value in _flatten(results):
        if key in _SINGLE_POINT:
            standard[key] = np.array(value, dtype=float) if np.ndim(value) else float(value)
        else:
            extras[key] = value
    n = len(frame)
    for key, value in extras.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            continue
        if arr.ndim == 0:
            frame.info[key] = arr.item()
        elif arr.shape[0] == n and arr.ndim <= 2 and key not in ("numbers", "positions"):
            frame.arrays[key] = np.array(arr, dtype=float) if arr.dtype.kind == "f" else np.array(arr)
    frame.calc = SinglePointCalculator(frame, **standard) if standard else None
    return frame


def _flatten(results: dict, parent: str = ""):
    for key, value in results.items():
        name = f"{parent}_{key}" if parent else str(key)
        if isinstance(value, dict):
            yield from _flatten(value, name)
        elif value is not None:
            yield name, value
