"""Shared test helpers: reference-data paths, structures, finite differences."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule

ROOT = Path(__file__).resolve().parents[1]
#: the licensed DFT reference files the tests read (phonopy, janus-core), shipped in the repository
DATA = ROOT / "tests" / "data"
#: weights that cannot ship with the project (``models/``), and the full reference data (``data/``)
SHARED = Path(os.environ.get("MLFF_CALC_SHARED", ROOT.parent / "shared"))


def shared_path(*parts) -> Path:
    """``data/...`` from tests/data, else ../shared/data; ``models/...`` from ../shared, else the model
    directories (where ``mlff-calc models fetch`` writes); else skip, saying how to get the file."""
    if parts and parts[0] == "data" and DATA.joinpath(*parts[1:]).exists():
        return DATA.joinpath(*parts[1:])
    path = SHARED.joinpath(*parts)
    if path.exists():
        return path
    if parts and parts[0] == "models":
        from mlff_calc.models.registry import KNOWN_MODELS, model_dirs

        for folder in model_dirs():  # where `mlff-calc models fetch` writes
            if folder.joinpath(*parts[1:]).exists():
                return folder.joinpath(*parts[1:])
        names = {spec.filename: spec.name for spec in KNOWN_MODELS.values()}
        name = names.get(parts[1]) if len(parts) == 2 else None
        how = f"get them with `mlff-calc models fetch {name}`" if name else "set MLFF_CALC_SHARED to the folder holding models/"
        pytest.skip(f"model weights {path} are absent: {how}")
    pytest.skip(f"reference data {path} is absent from tests/data and {SHARED} (set MLFF_CALC_SHARED to the shared folder)")


def require_backend(module: str, extra: str):
    """The optional backend ``module``, or skip the test naming the pip extra that installs it."""
    return pytest.importorskip(module, reason=f"optional backend {module} is not installed: pip install 'mlff_calc[{extra}]'")


def si8(a: float = 5.43):
    """The 8-atom conventional diamond Si cell."""
    return bulk("Si", "diamond", a, cubic=True)


def si8_frames(count: int, amp: float = 0.05, seed: int = 0) -> list:
    """``count`` Si8 cells, frame k rattled by ``amp`` Å with seed ``seed + k``."""
    frames = []
    for k in range(count):
        atoms = si8()
        atoms.rattle(amp, seed=seed + k)
        frames.append(atoms)
    return frames


def rattled_si(n=2, amp=0.05, seed=1):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (n, n, n)
    atoms.rattle(amp, seed=seed)
    return atoms


def rattled_nacl(amp=0.05, seed=2):
    atoms = bulk("NaCl", "rocksalt", 5.64) * (2, 2, 2)
    atoms.rattle(amp, seed=seed)
    return atoms


def methane_in_box():
    atoms = molecule("CH4")
    atoms.cell = [12.0, 12.0, 12.0]
    atoms.center()
    atoms.pbc = True
    return atoms


def cu_slab():
    atoms = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    atoms.pbc = True
    atoms.rattle(0.02, seed=3)
    return atoms


STRUCTURES = {"si64": rattled_si, "nacl16": rattled_nacl, "ch4_box": methane_in_box, "cu111_slab": cu_slab}


def fd_forces(calc, atoms, h=1e-3, indices=None):
    """Central-difference forces -dE/dx for a few atoms."""
    indices = range(len(atoms)) if indices is None else indices
    out = np.zeros((len(list(indices)), 3))
    for k, i in enumerate(indices):
        for c in range(3):
            e = []
            for s in (h, -h):
                a = atoms.copy()
                a.positions[i, c] += s
                a.calc = calc
                e.append(a.get_potential_energy())
            out[k, c] = -(e[0] - e[1]) / (2 * h)
    return out


def fd_stress(calc, atoms, h=1e-4):
    """Central-difference stress (1/V) dE/dε in Voigt-6 order."""
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    out = np.zeros(6)
    for k, (i, j) in enumerate(voigt):
        e = []
        for s in (h, -h):
            eps = np.zeros((3, 3))
            eps[i, j] += s / (1 if i == j else 2)
            eps[j, i] += 0 if i == j else s / 2
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            a.calc = calc
            e.append(a.get_potential_energy())
        out[k] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    return out


class CountingCalc:
    """Wraps our calculator's batched ``evaluate``, recording the size of every call."""

    def __init__(self, calc):
        self.calc = calc
        self.calls: list[int] = []

    def evaluate(self, atoms_list, properties):
        self.calls.append(len(atoms_list))
        return self.calc.evaluate(atoms_list, properties)
