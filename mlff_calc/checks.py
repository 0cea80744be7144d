"""Input checks shared by every calculator: each failure names the problem."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .errors import InvalidStructureError, UnsupportedElementError

#: Closest approach (Å) below which a structure is treated as physically meaningless.
MIN_DISTANCE = 0.5
#: Mean neighbours per atom within a model's cutoff above which a graph is refused
#: (diamond carbon, the densest common solid, has 159 within 6 Å).
MAX_NEIGHBORS_PER_ATOM = 500


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
                raise InvalidStructureError(f"the structure is periodic along axis {axis} but its cell vector there has zero length")
        if np.linalg.matrix_rank(atoms.cell.array[atoms.pbc], tol=1e-6) < atoms.pbc.sum() or (atoms.pbc.all() and abs(atoms.cell.volume) < 1e-6):
            raise InvalidStructureError(
                f"the periodic cell has zero volume: the cell vectors of periodic axes {np.where(atoms.pbc)[0].tolist()} are linearly dependent ({atoms.cell.array[atoms.pbc].tolist()}); give those axes independent vectors"
            )
    unknown = {int(z) for z in np.unique(atoms.numbers)} - set(elements)
    if unknown:
        raise UnsupportedElementError([_symbol(z) for z in unknown], model_id)
    if min_distance:
        if atoms.pbc.all() and abs(atoms.cell.volume) / len(atoms) < min_distance**3 / np.sqrt(2):  # denser than close packing: skip the (slow) search
            raise InvalidStructureError(
                f"{len(atoms)} atoms in a periodic cell of {abs(atoms.cell.volume):.3g} Å³ cannot all be {min_distance} Å apart (denser than close packing); pass min_distance=None to evaluate anyway"
            )
        closest = closest_distance(atoms, min_distance)
        if closest is not None:
            d, i, j = closest
            raise InvalidStructureError(f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.3f} Å apart, closer than {min_distance} Å; pass min_distance=None to evaluate anyway")


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


def check_graph_size(atoms: Atoms, cutoff: float, model_id: str, limit: int = MAX_NEIGHBORS_PER_ATOM) -> None:
    """Refuse graphs far denser than any real material before a neighbour list is built.

    The mean neighbour count is estimated from the number density, ``N/V * 4/3 pi rc^3``,
    with V the volume of the (completed) cell: exact on average for periodic cells.
    """
    from .neighbors import bounding_cell

    volume = abs(np.linalg.det(bounding_cell(atoms, cutoff)))
    if volume <= 0:
        return
    estimate = len(atoms) / volume * 4.0 / 3.0 * np.pi * cutoff**3
    if estimate > limit:
        raise InvalidStructureError(
            f"about {estimate:.0f} neighbours per atom within the {cutoff:g} Å cutoff of {model_id} "
            f"(number density {len(atoms) / volume:.3f} Å^-3); more than {limit} is far denser than any real material "
            "and would exhaust memory: check the cell and positions"
        )
