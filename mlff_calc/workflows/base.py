"""What every workflow class shares: the result guard and the writers of its files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from ..artifacts import atomic_path, write_json
from ..errors import ConfigurationError


class Workflow:
    """Base of Relax, EquationOfState, Phonons, MolecularDynamics, SurfaceEnergy and PointDefect.

    A subclass sets ``name`` (the ``"workflow"`` entry of its summary), keeps its
    calculator in ``calc`` and its result in ``result`` once ``run()`` has finished.
    """

    name = ""
    calc = None
    result = None

    def _need_result(self):
        if self.result is None:
            raise ConfigurationError(f"{type(self).__name__}.run() has to be called first")
        return self.result

    @staticmethod
    def _write_frame(atoms, path) -> Path:
        """One structure as extxyz (with its results), written atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            write(tmp, atoms, format="extxyz")
        return path

    def _write_summary(self, path, *, parameters: dict, result: dict, units: dict, **extra) -> Path:
        """``<name>-summary.json``: parameters, the calculator's parameters, results, units."""
        path = Path(path)
        write_json(path, {"workflow": self.name, "parameters": parameters, "calculator": dict(getattr(self.calc, "parameters", None) or {}), "result": result, "units": units, **extra})
        return path


def result_dict(result, *, skip: tuple[str, ...] = ()) -> dict:
    """The fields of a result dataclass as plain data (structures left out, arrays as lists)."""
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name in skip or isinstance(value, Atoms):
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
