"""Neighbour lists for every backend: one function, periodic, mixed or none."""

from __future__ import annotations

import logging

import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as _ase_neighbor_list

try:
    from matscipy.neighbours import neighbour_list as _matscipy_neighbour_list
except ImportError:  # pragma: no cover - matscipy is a declared dependency
    _matscipy_neighbour_list = None

log = logging.getLogger(__name__)
BACKENDS = ("auto", "matscipy", "vesin")
_WARNED: list = []


def neighbor_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(i, j, shifts)`` for all pairs closer than ``cutoff`` (Å).

    ``shifts`` are integer lattice images such that the vector from ``i`` to ``j`` is
    ``positions[j] - positions[i] + shifts @ cell``. Self pairs at zero distance
    are excluded; self pairs with a non-zero image (small cells) are kept.
    Shifts along non-periodic directions are always zero, so any cell vector there
    (zero, tiny or parallel to a periodic one) gives the same list.
    """
    search = atoms
    if not atoms.pbc.all():
        search = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=bounding_cell(atoms, cutoff), pbc=atoms.pbc)
    if _matscipy_neighbour_list is not None:
        i, j, shifts = _matscipy_neighbour_list("ijS", atoms=search, cutoff=float(cutoff))
    else:  # pragma: no cover
        i, j, shifts = _ase_neighbor_list("ijS", search, float(cutoff), self_interaction=False)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), shifts[order].astype(np.int64)


def device_neighbor_list(atoms: Atoms, cutoff: float, device, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`neighbor_list` as int64 tensors on ``device``: the same pairs, sorted by ``(i, j)``.

    ``backend``: ``"vesin"`` searches on the device itself (vesin-torch, CPU or CUDA);
    ``"matscipy"`` searches on the CPU and copies the list over; ``"auto"`` picks vesin
    on CUDA and matscipy on the CPU (where the list costs well under a millisecond
    per hundred atoms either way, and stays bitwise what it was). Pairs with the same
    ``(i, j)`` but different images may come in another order than matscipy's.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"neighbour-list backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        backend = "vesin" if device.type == "cuda" and _vesin() is not None else "matscipy"
        if device.type == "cuda" and backend == "matscipy" and not _WARNED:
            _WARNED.append(True)
            log.warning("vesin-torch is not installed: neighbour lists on %s are searched on the CPU (pip install 'mlff_calc[gpu]')", device)
    if backend == "matscipy":
        return tuple(torch.as_tensor(x, device=device) for x in neighbor_list(atoms, cutoff))
    nl_cls = _vesin()
    if nl_cls is None:
        raise ImportError("the vesin neighbour-list backend needs vesin-torch: pip install 'mlff_calc[gpu]'")
    cell = atoms.cell.array if atoms.pbc.all() else bounding_cell(atoms, cutoff)
    points = torch.as_tensor(atoms.positions, dtype=torch.float64, device=device)
    box = torch.as_tensor(cell, dtype=torch.float64, device=device)
    periodic = torch.as_tensor(atoms.pbc, dtype=torch.bool, device=device)
    i, j, shifts = nl_cls(cutoff=float(cutoff), full_list=True).compute(points, box, periodic, "ijS")
    i, j, shifts = i.long(), j.long(), shifts.long()
    order = torch.sort(i * max(len(atoms), 1) + j, stable=True).indices
    return i[order], j[order], shifts[order]


def _vesin():
    """vesin-torch's NeighborList class, or None when it is not installed."""
    try:
        from vesin_torch import NeighborList
    except ImportError:
        return None
    return NeighborList


def bounding_cell(atoms: Atoms, margin: float) -> np.ndarray:
    """A well-conditioned cell: the periodic vectors, completed for the other directions.

    Each non-periodic vector is replaced by a unit vector orthogonal to the periodic
    ones (from an SVD), scaled to the structure's extent along it plus ``2 * margin``.
    A fully periodic cell is returned unchanged.
    """
    cell = atoms.cell.array.copy()
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        return cell
    periodic = cell[pbc]
    complement = np.linalg.svd(periodic)[2][len(periodic) :] if len(periodic) else np.eye(3)
    for axis, direction in zip(np.where(~pbc)[0], complement):
        along = atoms.positions @ direction
        span = float(np.ptp(along)) if len(atoms) else 0.0
        cell[axis] = direction * max(span + 2.0 * margin, 1.0)
    if np.linalg.det(cell) < 0:  # keep a right-handed cell
        axis = np.where(~pbc)[0][0]
        cell[axis] *= -1
    return cell
