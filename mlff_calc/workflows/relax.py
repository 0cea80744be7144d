"""Geometry optimisation of positions and, optionally, the cell."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.io import write
from ase.optimize import BFGS, FIRE, LBFGS

from ..artifacts import atomic_path
from ..errors import ConfigurationError
from . import UNITS, default_prefix, lattice_parameters, output_path, progress_bar, snapshot
from .base import Workflow, result_dict

log = logging.getLogger(__name__)

#: optimiser name -> ASE class
OPTIMIZERS = {"FIRE": FIRE, "LBFGS": LBFGS, "BFGS": BFGS}


@dataclass
class RelaxResult:
    """Outcome of :meth:`Relax.run`. Energies in eV, lengths in Å, angles in degrees."""

    atoms: Atoms
    energy: float
    converged: bool
    n_steps: int
    max_force_eV_per_A: float
    lattice_parameters: dict[str, float]
    stress_GPa: np.ndarray | None = None
    spacegroup: str | None = None
    energies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        n = len(self.atoms)
        return {"formula": self.atoms.get_chemical_formula(), "n_atoms": n, "energy_per_atom_eV": self.energy / n} | result_dict(self)


class Relax(Workflow):
    """Relax ``atoms`` with any ASE calculator.

    Parameters
    ----------
    optimizer: ``"FIRE"``, ``"LBFGS"`` or ``"BFGS"``.
    relax_cell: also relax the cell through :class:`ase.filters.FrechetCellFilter`
        (needs a calculator that gives stress).
    keep_symmetry: symmetrise the input (``refine_symmetry`` at ``symprec``) and keep
        its space group with :class:`ase.constraints.FixSymmetry`.
    fmax_eV_per_A: convergence threshold on the largest force; with ``relax_cell``
        it also bounds the cell "forces" of the filter (virial / number of atoms).
    max_steps: optimiser steps at most; ``result.converged`` says whether that sufficed.
    pressure_GPa: external hydrostatic pressure for the cell relaxation.
    trajectory: extxyz path for every step (energy, forces, stress and any extra
        per-atom result kept); ``None`` writes none. Written atomically when the run ends.
    prefix: stem of ``output_files`` (default ``mlff_results/<formula>``).
    progress: tqdm bar over steps (``None``: only on a terminal).

    The input ``atoms`` is not modified; ``result.atoms`` is a relaxed copy.
    """

    name = "relax"

    def __init__(
        self,
        atoms: Atoms,
        calc,
        *,
        optimizer: str = "FIRE",
        relax_cell: bool = True,
        keep_symmetry: bool = False,
        fmax_eV_per_A: float = 0.01,
        max_steps: int = 500,
        pressure_GPa: float = 0.0,
        symprec: float = 1e-3,
        trajectory=None,
        prefix=None,
        progress: bool | None = None,
    ):
        if optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"optimizer {optimizer!r} is not known; choose one of {sorted(OPTIMIZERS)}")
        if not fmax_eV_per_A > 0:
            raise ConfigurationError(f"fmax_eV_per_A must be positive, got {fmax_eV_per_A}")
        if max_steps < 0:
            raise ConfigurationError(f"max_steps must be >= 0, got {max_steps}")
        if relax_cell and not atoms.pbc.all():
            raise ConfigurationError(f"relax_cell=True needs a cell periodic in all directions; this one has pbc={atoms.pbc.tolist()}")
        self.atoms = atoms
        self.calc = calc
        self.optimizer = optimizer
        self.relax_cell = relax_cell
        self.keep_symmetry = keep_symmetry
        self.fmax_eV_per_A = float(fmax_eV_per_A)
        self.max_steps = int(max_steps)
        self.pressure_GPa = float(pressure_GPa)
        self.symprec = float(symprec)
        self.trajectory = Path(trajectory) if trajectory is not None else None
        self.prefix = default_prefix(atoms, prefix)
        self.progress = progress
        self.result: RelaxResult | None = None

    @property
    def output_files(self) -> dict[str, Path | None]:
        return {
            "trajectory": self.trajectory,
            "structure": output_path(self.prefix, "relaxed.extxyz"),
            "summary": output_path(self.prefix, "relax-summary.json"),
        }

    def _prepare(self) -> Atoms:
        work = self.atoms.copy()
        work.calc = self.calc
        if self.keep_symmetry:
            work.set_constraint(list(work.constraints) + [FixSymmetry(work, symprec=self.symprec)])
        return work

    def run(self) -> RelaxResult:
        work = self._prepare()
        target = FrechetCellFilter(work, scalar_pressure=self.pressure_GPa * units.GPa) if self.relax_cell else work
        opt = OPTIMIZERS[self.optimizer](target, logfile=None)
        frames: list[Atoms] = []
        energies: list[float] = []

        def observe():
            energies.append(float(work.get_potential_energy()))
            if self.trajectory is not None:
                frames.append(snapshot(work))

        opt.attach(observe, interval=1)
        converged = False
        with progress_bar(total=self.max_steps, desc=f"relax {work.get_chemical_formula()}", enabled=self.progress, unit="step") as bar:
            for converged in opt.irun(fmax=self.fmax_eV_per_A, steps=self.max_steps):
                bar.update(1 if opt.nsteps else 0)
                if not bar.disable:
                    fmax = float(np.linalg.norm(target.get_forces(), axis=1).max())
                    bar.set_postfix_str(f"step {opt.nsteps}, E={work.get_potential_energy() / len(work):.5f} eV/atom, fmax={fmax:.2e} eV/Å", refresh=False)
        if self.trajectory is not None:
            with atomic_path(self.trajectory) as tmp:
                write(tmp, frames, format="extxyz")
        forces = target.get_forces()
        max_force = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
        final = snapshot(work)
        final.set_constraint([c for c in work.constraints if not isinstance(c, FixSymmetry)])
        stress = None
        if work.pbc.all() and "stress" in (work.calc.results or {}):
            stress = np.asarray(work.calc.results["stress"]) / units.GPa
        self.result = RelaxResult(
            atoms=final,
            energy=float(work.get_potential_energy()),
            converged=bool(converged),
            n_steps=int(opt.nsteps),
            max_force_eV_per_A=max_force,
            lattice_parameters=lattice_parameters(work),
            stress_GPa=stress,
            spacegroup=_spacegroup(work, self.symprec),
            energies=energies,
        )
        level = logging.INFO if converged else logging.WARNING
        log.log(
            level,
            "relax %s: %s after %d steps, E = %.6f eV, max force %.2e eV/Å",
            work.get_chemical_formula(),
            "converged" if converged else "NOT converged",
            opt.nsteps,
            self.result.energy,
            max_force,
        )
        return self.result

    def write_structure(self, path=None) -> Path:
        """The relaxed structure (extxyz, with its energy, forces and stress)."""
        return self._write_frame(self._need_result().atoms, path or self.output_files["structure"])

    def write_summary(self, path=None) -> Path:
        res = self._need_result()
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={
                "optimizer": self.optimizer,
                "relax_cell": self.relax_cell,
                "keep_symmetry": self.keep_symmetry,
                "fmax_eV_per_A": self.fmax_eV_per_A,
                "max_steps": self.max_steps,
                "pressure_GPa": self.pressure_GPa,
            },
            result=res.to_dict(),
            units=UNITS | {"angles": "degree", "volume": "Å³"},
            output_files={k: v for k, v in self.output_files.items() if v is not None},
        )


def _spacegroup(atoms: Atoms, symprec: float) -> str | None:
    if not atoms.pbc.all():
        return None
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    return spglib.get_spacegroup(cell, symprec=symprec)
