"""Structures for the executor tests (a uniquely named module: every test folder has its own conftest)."""

from __future__ import annotations

from helpers import si8


def rattled_cells(n: int, seed: int = 0):
    """``n`` rattled 8-atom Si cells with slightly different lattice constants."""
    out = []
    for k in range(n):
        atoms = si8(5.43 + 0.01 * (k % 5))
        atoms.rattle(0.05, seed=seed + k)
        out.append(atoms)
    return out
