"""Neighbour lists for every backend: one function, periodic, mixed or none."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list as _ase_neighbor_list

try:
    from matscipy.neighbours import neighbour_list as _matscipy_neighbour_list
except ImportError:  # pragma: no cover - matscipy is a declared dependency
    _matscipy_neighbour_list = None


def neighbor_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(i, j, shifts)`` for all pairs closer than ``cutoff`` (Å).

    ``shifts`` are integer lattice images such that the vector from ``i`` to ``j`` is
    ``positions[j] - positions[i] + shifts @ cell``. Self pairs at zero distance
    are excluded; self pairs with a non-zero image (small cells) are kept.
    """
    cell = atoms.cell.array
    full_rank = abs(np.linalg.det(cell)) > 1e-8
    if _matscipy_neighbour_list is not None and full_rank:
        i, j, shifts = _matscipy_neighbour_list("ijS", atoms=atoms, cutoff=float(cutoff))
    else:
        i, j, shifts = _ase_neighbor_list("ijS", atoms, float(cutoff), self_interaction=False)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), shifts[order].astype(np.int64)


def bounding_cell(atoms: Atoms, margin: float) -> np.ndarray:
    """A non-singular cell for structures without one (molecules in vacuum).

    Periodic directions keep their vectors; the others become orthogonal boxes
    long enough to hold the structure plus ``margin``.
    """
    cell = atoms.cell.array.copy()
    if abs(np.linalg.det(cell)) > 1e-8:
        return cell
    extent = np.ptp(atoms.positions, axis=0) + 2.0 * margin
    for axis in range(3):
        if not atoms.pbc[axis] or np.linalg.norm(cell[axis]) < 1e-8:
            cell[axis] = 0.0
            cell[axis, axis] = max(extent[axis], 1.0)
    if abs(np.linalg.det(cell)) < 1e-8:
        return np.diag(np.maximum(extent, 1.0))
    return cell
