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
cheap. The small helpers below (and those of :mod:`mlff_calc._runtime` re-exported
here) are shared by every workflow module.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from ase import Atoms

from .._runtime import evaluate_structures, has_batched_evaluate, progress_bar, snapshot  # noqa: F401 (shared helpers)

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


def lattice_parameters(atoms: Atoms) -> dict[str, float]:
    """Cell lengths (Å), angles (degrees) and volume (Å³)."""
    a, b, c, alpha, beta, gamma = (float(x) for x in atoms.cell.cellpar())
    return {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma, "volume": float(atoms.get_volume())}
