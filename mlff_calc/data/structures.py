"""Structures as plain arrays (no pickle) and their content hash."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms


def pack_structures(structures: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """Concatenated arrays of many structures: atoms stacked, one cell/pbc row per structure.

    ``fixed`` marks atoms held by a ``FixAtoms`` constraint (their rows are not free DOF).
    """
    n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
    fixed = []
    for atoms in structures:
        mask = np.zeros(len(atoms), dtype=bool)
        for constraint in atoms.constraints:
            if isinstance(constraint, FixAtoms):
                mask[constraint.get_indices()] = True
        fixed.append(mask)
    return {
        "numbers": np.concatenate([a.numbers for a in structures]).astype(np.int64),
        "positions": np.concatenate([a.positions for a in structures]).astype(np.float64),
        "cell": np.stack([a.cell.array for a in structures]).astype(np.float64),
        "pbc": np.stack([a.pbc for a in structures]).astype(bool),
        "n_atoms": n_atoms,
        "fixed": np.concatenate(fixed),
    }


def unpack_structures(arrays: dict[str, np.ndarray]) -> list[Atoms]:
    """Inverse of :func:`pack_structures`."""
    bounds = np.cumsum([0, *arrays["n_atoms"].tolist()])
    out = []
    for b in range(len(arrays["n_atoms"])):
        sl = slice(bounds[b], bounds[b + 1])
        atoms = Atoms(numbers=arrays["numbers"][sl], positions=arrays["positions"][sl], cell=arrays["cell"][b], pbc=arrays["pbc"][b])
        if "fixed" in arrays and arrays["fixed"][sl].any():
            atoms.set_constraint(FixAtoms(mask=arrays["fixed"][sl]))
        out.append(atoms)
    return out


def structures_sha256(arrays: dict[str, np.ndarray]) -> str:
    """A content hash of packed structures (independent of how they were stored)."""
    digest = hashlib.sha256()
    for key in ("numbers", "positions", "cell", "pbc", "n_atoms"):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()
