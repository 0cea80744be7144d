"""Helpers shared by the reliability tests (imported as ``from .helpers import ...``).

Kept here rather than imported from ``tests/conftest.py``: with several
``conftest.py`` files outside packages, ``from helpers import ...`` resolves to
whichever was imported last (tests/distill/conftest.py shadows the top-level one).
"""

from __future__ import annotations

import contextlib
import signal

import numpy as np


class Hang(Exception):
    """A guarded block ran longer than allowed."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise Hang in the main thread after ``seconds`` (checked between Python bytecodes,
    so between torch ops; a single long C call is interrupted only when it returns)."""

    def handler(_signum, _frame):
        raise Hang(f"ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fd_forces(calc, atoms, h=1e-3, indices=None):
    """Central-difference forces -dE/dx for the atoms in ``indices``."""
    indices = list(range(len(atoms)) if indices is None else indices)
    out = np.zeros((len(indices), 3))
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
    """Central-difference stress (1/V) dE/dε in Voigt-6 order (xx, yy, zz, yz, xz, xy)."""
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    out = np.zeros(6)
    for k, (i, j) in enumerate(voigt):
        e = []
        for s in (h, -h):
            eps = np.zeros((3, 3))
            if i == j:
                eps[i, i] = s
            else:
                eps[i, j] = eps[j, i] = s / 2
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            a.calc = calc
            e.append(a.get_potential_energy())
        out[k] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    return out
