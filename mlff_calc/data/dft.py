"""DFT-labelled structures and their readers: any ASE-readable file, or phonopy displacement data.

Forces in eV/Å, energies in eV, stress Voigt-6 in eV/Å³ with ASE's sign. Used by
the softening fit, fine-tuning and the screening tasks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from ..errors import ConfigurationError, InvalidStructureError

log = logging.getLogger(__name__)

FORCES_KEYS = ("dft_forces", "forces", "REF_forces")
ENERGY_KEYS = ("dft_energy", "energy", "REF_energy")
STRESS_KEYS = ("dft_stress", "stress", "REF_stress")


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
            f"{where or label} has no DFT forces (looked in calculator results and per-atom arrays {looked}); a softening fit needs forces: pass forces_key= if they are stored under another name"
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
            f"the displacements in {force_sets} ({len(from_forces)} supercells) do not match those of {disp_yaml} ({len(from_yaml)} supercells); pass the FORCE_SETS made from this displacement yaml"
        )
