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
from .base import Workflow, result_dict

log = logging.getLogger(__name__)

#: 1 eV/Å² in J/m²
EV_PER_A2_TO_J_PER_M2 = units._e * 1e20
#: the cells Miller indices may refer to
MILLER_CELLS = ("conventional", "input")


def conventional_cell(atoms: Atoms, symprec: float = 1e-3) -> tuple[Atoms, str]:
    """spglib's conventional standard cell of ``atoms`` (same orientation, not idealised) and its space group."""
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None:
        raise ConfigurationError(f"spglib found no symmetry for {atoms.get_chemical_formula()} at symprec {symprec}; pass miller_cell='input' to index the given cell")
    lattice, positions, numbers = spglib.standardize_cell(cell, to_primitive=False, no_idealize=True, symprec=symprec)
    return Atoms(numbers=numbers, cell=lattice, scaled_positions=positions, pbc=True), str(dataset.international)


def miller_in_basis(miller, from_cell: np.ndarray, to_cell: np.ndarray) -> tuple[int, int, int]:
    """The plane ``miller`` of ``from_cell`` as the smallest integer indices in the basis of ``to_cell``."""
    normal = np.asarray(miller, dtype=float) @ np.linalg.inv(from_cell).T  # reciprocal vector (no 2π)
    h = to_cell @ normal
    h = h / np.abs(h[np.abs(h) > 1e-8]).min()
    for m in range(1, 13):
        if np.allclose(h * m, np.round(h * m), atol=1e-6):
            ints = np.round(h * m).astype(int)
            return tuple(int(i) for i in ints // np.gcd.reduce(ints))
    return tuple(int(i) for i in np.round(h))


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
    miller_cell: str = "conventional"  # the cell the indices refer to: "conventional" or "input"
    spacegroup: str | None = None
    miller_input_cell: tuple[int, int, int] | None = None  # the same plane in the input cell's basis

    @property
    def plane(self) -> str:
        """The plane built, named with the cell its indices refer to, e.g. ``(100) of the conventional Fd-3m cell``."""
        hkl = "(" + "".join(str(i) for i in self.miller) + ")"
        if self.miller_cell == "input":
            return f"{hkl} of the input cell"
        return f"{hkl} of the conventional {self.spacegroup} cell"

    def to_dict(self) -> dict:
        return result_dict(self, skip=("slab",)) | {"plane": self.plane}


class SurfaceEnergy(Workflow):
    """γ = (E_slab − n·E_bulk) / (2A) for a slab with two equivalent surfaces.

    Miller indices refer to the conventional standard cell of ``bulk_atoms``
    (spglib's standardisation at ``symprec``, the cell of the International Tables,
    e.g. the cubic cell of fcc or diamond), whatever cell ``bulk_atoms`` is given
    in; ``miller_cell="input"`` takes them in the basis of ``bulk_atoms.cell``
    instead. The slab is ``ase.build.surface(cell, miller, layers, vacuum)`` on
    that cell, and ``layers`` counts repeats of its lattice planes. ``vacuum`` (Å) is added on each side. The bulk energy per atom
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
        miller_cell: str = "conventional",
        symprec: float = 1e-3,
        prefix=None,
        progress: bool | None = None,
    ):
        if miller_cell not in MILLER_CELLS:
            raise ConfigurationError(f"miller_cell must be one of {list(MILLER_CELLS)}, got {miller_cell!r}")
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
        self.miller_cell = miller_cell
        self.symprec = float(symprec)
        self.prefix = default_prefix(bulk_atoms, prefix)
        self.progress = progress
        self.result: SurfaceResult | None = None

    @property
    def output_files(self) -> dict[str, Path]:
        tag = "".join(str(i) for i in self.miller)
        return {"slab": output_path(self.prefix, f"slab-{tag}.extxyz"), "summary": output_path(self.prefix, f"surface-{tag}.json")}

    def cell(self) -> tuple[Atoms, str | None]:
        """(the cell the Miller indices refer to, its space group symbol)."""
        bulk = self.bulk_atoms.copy()
        bulk.calc = None
        if self.miller_cell == "input":
            return bulk, None
        return conventional_cell(bulk, self.symprec)

    def build(self) -> tuple[Atoms, Atoms]:
        """(slab with vacuum, oriented bulk with the same atoms and in-plane cell)."""
        bulk, _ = self.cell()
        oriented = surface(bulk, self.miller, self.layers, periodic=True)
        slab = surface(bulk, self.miller, self.layers, vacuum=self.vacuum, periodic=True)
        slab.pbc = True  # vacuum separates the periodic images along the normal
        return slab, oriented

    def run(self) -> SurfaceResult:
        slab, oriented = self.build()
        cell, spacegroup = self.cell()
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
            miller_cell=self.miller_cell,
            spacegroup=spacegroup,
            miller_input_cell=miller_in_basis(self.miller, cell.cell.array, self.bulk_atoms.cell.array),
        )
        log.info(
            "surface %s %s: %d atoms, γ = %.4f eV/Å² = %.3f J/m²%s",
            self.bulk_atoms.get_chemical_formula(empirical=True),
            self.result.plane,
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
            parameters={"miller": self.miller, "miller_cell": self.miller_cell, "layers": self.layers, "vacuum_A": self.vacuum, "relax": self.relax, "fmax_eV_per_A": self.fmax_eV_per_A},
            result=res.to_dict(),
            units=UNITS | {"area": "Å²", "surface_energy": "eV/Å² and J/m²"},
        )
