"""Input checks shared by every calculator: each failure names the problem."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .errors import InvalidStructureError, UnsupportedElementError

#: Closest approach (Å) below which a structure is treated as physically meaningless.
MIN_DISTANCE = 0.5


def check_atoms(atoms: Atoms, elements: frozenset[int], model_id: str, *, min_distance: float | None = MIN_DISTANCE) -> None:
    """Raise a clear error for inputs no model can evaluate meaningfully."""
    if len(atoms) == 0:
        raise InvalidStructureError("the structure has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        bad = np.where(~np.isfinite(atoms.positions).all(axis=1))[0]
        raise InvalidStructureError(f"positions of atoms {bad[:10].tolist()} are NaN or inf")
    if not np.all(np.isfinite(atoms.cell.array)):
        raise InvalidStructureError("the cell holds NaN or inf")
    if atoms.pbc.any():
        lengths = atoms.cell.lengths()
        for axis in np.where(atoms.pbc)[0]:
            if lengths[axis] < 1e-6:
                raise InvalidStructureError(
                    f"the structure is periodic along axis {axis} but its cell vector there has zero length"
                )
        if atoms.pbc.all() and abs(atoms.cell.volume) < 1e-6:
            raise InvalidStructureError("the periodic cell has zero volume")
    unknown = {int(z) for z in np.unique(atoms.numbers)} - set(elements)
    if unknown:
        raise UnsupportedElementError([_symbol(z) for z in unknown], model_id)
    if min_distance:
        closest = closest_distance(atoms, min_distance)
        if closest is not None:
            d, i, j = closest
            raise InvalidStructureError(
                f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.3f} Å apart, "
                f"closer than {min_distance} Å; pass min_distance=None to evaluate anyway"
            )


def closest_distance(atoms: Atoms, below: float):
    """``(distance, i, j)`` of the closest pair nearer than ``below``, else ``None``."""
    from .neighbors import neighbor_list

    i, j, shifts = neighbor_list(atoms, below)
    if len(i) == 0:
        return None
    vec = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array
    d = np.linalg.norm(vec, axis=1)
    k = int(np.argmin(d))
    return float(d[k]), int(i[k]), int(j[k])


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
