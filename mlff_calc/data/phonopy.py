"""phonopy data as mlff_calc reads it: cells to and from ASE, reference Phonopy objects from yaml + FORCE_SETS + BORN."""

from __future__ import annotations

import copy
from pathlib import Path

from ase import Atoms

from ..errors import ArtifactError, ConfigurationError


def to_phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def to_ase_atoms(cell) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, masses=cell.masses, pbc=True)


def _displacements_only(dataset: dict) -> dict:
    """A phonopy dataset with its forces (and energies) removed."""
    if not dataset:
        raise ConfigurationError("the phonopy object holds no displacement dataset to reuse")
    out = copy.deepcopy(dataset)
    for key in ("forces", "supercell_energies"):
        out.pop(key, None)
    for disp in out.get("first_atoms", []):
        disp.pop("forces", None)
        disp.pop("supercell_energy", None)
    return out


def _read_yaml(path: Path):
    from phonopy.interface.phonopy_yaml import PhonopyYaml

    if not path.is_file():
        raise ArtifactError(f"phonopy file {path} does not exist")
    ph_yaml = PhonopyYaml()
    ph_yaml.read(path)
    return ph_yaml


def _load_reference_yaml(path: Path, *, born: Path | None = None, force_sets: Path | None = None):
    """phonopy.load with every file named: phonopy would otherwise look for BORN and FORCE_SETS in the current folder."""
    import phonopy
    from phonopy.structure.dataset import forces_in_dataset

    ph_yaml = _read_yaml(path)
    if forces_in_dataset(ph_yaml.dataset):
        force_sets = None
    elif force_sets is None:
        raise ArtifactError(f"{path} holds displacements without forces and no FORCE_SETS was found beside it")
    is_nac = born is not None or ph_yaml.nac_params is not None
    return phonopy.load(path, born_filename=born, force_sets_filename=force_sets, is_nac=is_nac, log_level=0)


def _beside(path: Path, name: str) -> Path | None:
    other = path / name if path.is_dir() else path.parent / name
    return other if other.is_file() else None


def load_phonopy_reference(path) -> "phonopy.Phonopy":  # noqa: F821
    """A reference Phonopy object (with force constants) from a folder or a yaml file.

    In a folder, ``phonopy_params*.yaml`` (structure, displacements and forces) is
    preferred, else ``phonopy_disp.yaml`` with ``FORCE_SETS``; a ``BORN`` file beside
    them adds the non-analytical correction.
    """
    path = Path(path)
    if path.is_dir():
        params = sorted(path.glob("phonopy_params*.yaml"))
        yaml_path = params[0] if params else path / "phonopy_disp.yaml"
        if not yaml_path.is_file():
            raise ArtifactError(f"no phonopy reference in {path}: looked for phonopy_params*.yaml and phonopy_disp.yaml (with FORCE_SETS)")
    else:
        yaml_path = path
    return _load_reference_yaml(yaml_path, born=_beside(path, "BORN"), force_sets=_beside(path, "FORCE_SETS"))
