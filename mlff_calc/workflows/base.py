"""What every workflow class shares: the result guard and the writers of its files."""

from __future__ import annotations

from pathlib import Path

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
