"""Surface energy of a slab cut from a bulk crystal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import surface

from ..errors import ConfigurationError
from . import UNITS, default_prefix, evaluate_structures, output_path
from .base import Workflow

log = logging.getLogger(__name__)

#: 1 eV/Å² in J/m²
EV_PER_A2_TO_J_PER_M2 = units._e * 1e20


@dataclass
class SurfaceResult:
    """Outcome of :meth:`SurfaceEnergy.run`; ``surface_energy_*`` is γ per surface."""

    slab: Atoms
    miller: tuple[int, int, int]
    n_atoms: int
    area_A2: float
    slab_energy_eV: float
    bulk_energy_per_atom_eV: float
    surface_energy_eV_per_A2: float
    surface_energy_J_per_m2: float
    relaxed: bool
    relax_converged: bool | None = None


class SurfaceEnergy(Workflow):
    """γ = (E_slab − n·E_bulk) / (2A) for a slab with two equivalent surfaces.

    The slab is ``ase.build.surface(bulk_atoms, miller, layers, vacuum)``: Miller
    indices refer to the cell of ``bulk_atoms`` (pass the conventional cubic cell
    for the usual cubic indices) and ``layers`` counts repeats of that cell's
    lattice planes. ``vacuum`` (Å) is added on each side. The bulk energy per atom
    comes from the same calculator on the oriented bulk (the same cut without
    vacuum, periodic along the normal), so in-plane cells match exactly. With
    ``relax`` the slab's positions are relaxed at fixed cell (the bulk is taken as
    already relaxed).
    """

    name = "surface"

    def __init__(
        self,
        bulk_atoms: Atoms,
        calc,
        *,
        miller=(1, 0, 0),
        layers: int = 6,
        vacuum: float = 10.0,
        relax: bool = False,
        fmax_eV_per_A: float = 0.02,
        max_steps: int = 300,
        optimizer: str = "FIRE",
        prefix=None,
        progress: bool | None = None,
    ):
        if not bulk_atoms.pbc.all():
            raise ConfigurationError(f"bulk_atoms must be periodic in all directions; got pbc={bulk_atoms.pbc.tolist()}")
        if layers < 1 or not vacuum > 0:
            raise ConfigurationError(f"need layers >= 1 and vacuum > 0 Å; got {layers}, {vacuum}")
        self.bulk_atoms = bulk_atoms
        self.calc = calc
        self.miller = tuple(int(i) for i in miller)
        self.layers = int(layers)
        self.vacuum = float(vacuum)
        self.relax = relax
        self.fmax_eV_per_A = float(fmax_eV_per_A)
        self.max_steps = int(max_steps)
        self.optimizer = optimizer
        self.prefix = default_prefix(bulk_atoms, prefix)
        self.progress = progress
        self.result: SurfaceResult | None = None

    @property
    def output_files(self) -> dict[str, Path]:
        tag = "".join(str(i) for i in self.miller)
        return {"slab": output_path(self.prefix, f"slab-{tag}.extxyz"), "summary": output_path(self.prefix, f"surface-{tag}.json")}

    def build(self) -> tuple[Atoms, Atoms]:
        """(slab with vacuum, oriented bulk with the same atoms and in-plane cell)."""
        bulk = self.bulk_atoms.copy()
        bulk.calc = None
        oriented = surface(bulk, self.miller, self.layers, periodic=True)
        slab = surface(bulk, self.miller, self.layers, vacuum=self.vacuum, periodic=True)
        slab.pbc = True  # vacuum separates the periodic images along the normal
        return slab, oriented

    def run(self) -> SurfaceResult:
        slab, oriented = self.build()
        converged = None
        if self.relax:
            from .relax import Relax

            bulk_res = evaluate_structures(self.calc, [oriented], ("energy",))[0]
            relaxed = Relax(slab, self.calc, relax_cell=False, optimizer=self.optimizer, fmax_eV_per_A=self.fmax_eV_per_A, max_steps=self.max_steps, progress=self.progress).run()
            slab, e_slab, converged = relaxed.atoms, relaxed.energy, relaxed.converged
        else:
            bulk_res, slab_res = evaluate_structures(self.calc, [oriented, slab], ("energy",))
            e_slab = float(slab_res["energy"])
        e_bulk = float(bulk_res["energy"]) / len(oriented)
        area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))
        gamma = (e_slab - len(slab) * e_bulk) / (2.0 * area)
        self.result = SurfaceResult(
            slab=slab,
            miller=self.miller,
            n_atoms=len(slab),
            area_A2=area,
            slab_energy_eV=e_slab,
            bulk_energy_per_atom_eV=e_bulk,
            surface_energy_eV_per_A2=gamma,
            surface_energy_J_per_m2=gamma * EV_PER_A2_TO_J_PER_M2,
            relaxed=self.relax,
            relax_converged=converged,
        )
        log.info(
            "surface %s (%s): %d atoms, γ = %.4f eV/Å² = %.3f J/m²%s",
            self.bulk_atoms.get_chemical_formula(empirical=True),
            "".join(map(str, self.miller)),
            len(slab),
            gamma,
            self.result.surface_energy_J_per_m2,
            " (relaxed)" if self.relax else "",
        )
        return self.result

    def write_slab(self, path=None) -> Path:
        return self._write_frame(self._need_result().slab, path or self.output_files["slab"])

    def write_summary(self, path=None) -> Path:
        res = self._need_result()
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={"miller": self.miller, "layers": self.layers, "vacuum_A": self.vacuum, "relax": self.relax, "fmax_eV_per_A": self.fmax_eV_per_A},
            result={
                "n_atoms": res.n_atoms,
                "area_A2": res.area_A2,
                "slab_energy_eV": res.slab_energy_eV,
                "bulk_energy_per_atom_eV": res.bulk_energy_per_atom_eV,
                "surface_energy_eV_per_A2": res.surface_energy_eV_per_A2,
                "surface_energy_J_per_m2": res.surface_energy_J_per_m2,
                "relax_converged": res.relax_converged,
            },
            units=UNITS | {"area": "Å²", "surface_energy": "eV/Å² and J/m²"},
        )
