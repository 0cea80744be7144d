"""CHGNet's graph inputs from a neighbour list, with numpy instead of Python objects.

chgnet's own converter (even its "fast" C path) builds a Python ``Edge`` object per
directed edge and walks them in Python for the line graph: GIL-holding work
(BENCHMARKS.md §1), and the reason two CPU threads could not evaluate two
structures at once. The arrays below carry the same content as chgnet's ``Graph.adjacency_list`` and
``Graph.line_graph_adjacency_list``:

- ``atom_graph`` [E, 2]: directed edges ``(center, neighbour)``, in neighbour-list order;
- ``directed2undirected`` [E]: each directed edge's bond; a bond joins edge
  ``i -> j`` (image S) with its reverse ``j -> i`` (image -S), numbered in order
  of first appearance;
- ``undirected2directed`` [U]: the first directed edge of each bond;
- ``bond_graph`` [A, 5]: angles ``(center, bond 1, edge 1, bond 2, edge 2)`` for
  every ordered pair of distinct edges leaving the same atom, edge 1 no longer
  than ``bond_cutoff`` and edge 2 shorter than it (chgnet's ``>``/``<`` tests).

Only the order of angles differs from chgnet's; CHGNet sums over them, so results
agree to float32 round-off (tests/models/test_chgnet_graph.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidStructureError


def bonds(i: np.ndarray, j: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(directed2undirected [E], undirected2directed [U])`` pairing each edge with its reverse."""
    shifts = np.asarray(shifts, dtype=np.int64)
    # the canonical form of an edge and its reverse is the same: smaller atom first, or for
    # an atom and its own image the shift that is lexicographically positive
    s_key = shifts[:, 0] * 1_000_000 + shifts[:, 1] * 1_000 + shifts[:, 2]
    flip = (i > j) | ((i == j) & (s_key < 0))
    a, b = np.where(flip, j, i), np.where(flip, i, j)
    s = np.where(flip[:, None], -shifts, shifts)
    n = int(max(a.max(initial=0), b.max(initial=0))) + 1
    span = 2 * int(np.abs(s).max(initial=0)) + 1
    if n * n * span**3 < 2**62:  # one int64 per edge: a 1-D unique is ~3x faster than rows
        keys = (((a * n + b) * span + s[:, 0] + span // 2) * span + s[:, 1] + span // 2) * span + s[:, 2] + span // 2
        _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    else:
        keys = np.stack([a, b, s[:, 0], s[:, 1], s[:, 2]], axis=1)
        _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
    if len(counts) and (counts != 2).any():
        raise InvalidStructureError("the neighbour list is not symmetric: an edge lacks its reverse (or appears twice)")
    order = np.argsort(first, kind="stable")  # bonds numbered by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], first[order]


def angles(i: np.ndarray, dist: np.ndarray, d2u: np.ndarray, bond_cutoff: float) -> np.ndarray:
    """``bond_graph`` [A, 5]: ordered pairs of distinct edges around each atom (see the module docstring)."""
    short = np.flatnonzero(dist <= bond_cutoff)
    if len(short) == 0:
        return np.zeros((0, 5), dtype=np.int64)
    short = short[np.argsort(i[short], kind="stable")]
    centers = i[short]
    starts = np.searchsorted(centers, centers, side="left")
    counts = np.searchsorted(centers, centers, side="right") - starts
    first = np.repeat(np.arange(len(short)), counts)  # each short edge, once per edge of its atom
    offsets = np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
    second = np.repeat(starts, counts) + offsets
    keep = (first != second) & (dist[short[second]] < bond_cutoff)
    e1, e2 = short[first[keep]], short[second[keep]]
    return np.stack([i[e1], d2u[e1], e1, d2u[e2], e2], axis=1)
