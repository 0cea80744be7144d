"""phonopy <-> ASE conversions, reference datasets and band-path helpers of the Phonons workflow."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from ase import Atoms

from ..errors import ArtifactError, ConfigurationError

try:
    from phonopy.structure.cells import (
        PrimitiveMatrixAutoDefaultWarning as _AUTO_WARNING,
    )
except ImportError:  # phonopy < 4
    _AUTO_WARNING = None


def cell_widths(cell) -> np.ndarray:
    """Distances between opposite faces of a cell (Å)."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def special_point_frequencies(labels, band_frequencies_THz, path_connections) -> dict[str, float]:
    """The highest frequency (THz) at each labelled end of the band path, e.g. Γ, X, L (first occurrence)."""
    names = [_pretty(label) for label in labels]
    out: dict[str, float] = {}
    k = 0
    for i, freqs in enumerate(band_frequencies_THz):
        ends = [freqs[0]] if i == 0 or not path_connections[i - 1] else []
        ends.append(freqs[-1])
        for f in ends:
            if k < len(names):
                out.setdefault(names[k], float(max(f)))
            k += 1
    return out


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


def load_phonopy_reference(path) -> phonopy.Phonopy:  # noqa: F821
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


def _reference_bands(reference, phonon, res) -> list[np.ndarray]:
    """The reference's frequencies on our band path (same primitive reciprocal basis required)."""
    ours, theirs = np.asarray(phonon.primitive.cell), np.asarray(reference.primitive.cell)
    shape = lambda c: c / abs(np.linalg.det(c)) ** (1 / 3)
    if ours.shape != theirs.shape or not np.allclose(shape(ours), shape(theirs), atol=2e-2):
        raise ConfigurationError(
            "the reference's primitive cell is not oriented like ours, so q-points cannot be shared; build the workflow with Phonons.from_phonopy_dataset(reference, calc)",
        )
    if reference.force_constants is None:
        raise ConfigurationError("the reference Phonopy object has no force constants (load it with forces, e.g. load_phonopy_reference)")
    reference.run_band_structure(res.band_qpoints, path_connections=res.band_path_connections, labels=res.band_labels or None)
    return [np.array(f) for f in reference.get_band_structure_dict()["frequencies"]]


def _band_ticks(res) -> tuple[list[float], list[str]]:
    """Tick positions and labels at the ends of the band segments (``A|B`` at a jump)."""
    labels = [_pretty(label) for label in res.band_labels]
    ticks = [float(res.band_distances[0][0])]
    names = [labels[0] if labels else ""]
    k = 1
    n = len(res.band_distances)
    for i, d in enumerate(res.band_distances):
        ticks.append(float(d[-1]))
        if not labels:
            names.append("")
        elif res.band_path_connections[i] or i == n - 1:
            names.append(labels[k] if k < len(labels) else "")
            k += 1
        else:
            names.append(f"{labels[k]}|{labels[k + 1]}" if k + 1 < len(labels) else labels[k])
            k += 2
    return ticks, names


def _pretty(label: str) -> str:
    return label.replace("$\\mathrm{", "").replace("}$", "").replace("$\\Gamma$", "Γ").replace("$", "").replace("\\Gamma", "Γ").replace("\\Sigma", "Σ").replace("\\Delta", "Δ").replace("\\Lambda", "Λ")
