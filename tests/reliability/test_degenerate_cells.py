"""Degenerate and needle-thin cells: a right answer or a clear error, and quickly.

Found by the property suite (test_hypothesis.py, profile ``explore``); each case
here is a fixed reproduction. Cell vectors of non-periodic directions play no
part in the physics, so any cell there must give the same numbers as a clean one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase import Atoms

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import InvalidStructureError, MLFFError

from .helpers import alarm

FAMILIES = ("chgnet", "m3gnet", "mace")


@pytest.fixture(scope="module", params=FAMILIES)
def calc(request):
    return MLFFCalculator(request.getfixturevalue(f"{request.param}_adapter"))


def energy_forces(calc, atoms):
    res = calc.evaluate([atoms], ("energy", "forces"))[0]
    return res["energy"], res["forces"]


def si_cluster():
    return np.array([[0.0, 0.3, 0.0], [1.5, 1.2, 0.2], [0.7, -0.5, 1.6], [2.2, -0.6, 1.1]])


@pytest.mark.parametrize(
    "cell",
    [
        [[0, 6, 0], [0, 3, 0], [0, 0, 3]],  # two collinear vectors
        [[3, 0, 0], [0, 3, 0], [3, 3, 0]],  # three coplanar vectors
        [[3, 0, 0], [0, 3, 0], [1, 1, 1e-3]],  # needle-thin but full rank
    ],
    ids=["collinear", "coplanar", "thin"],
)
def test_cell_of_a_molecule_is_ignored(calc, cell):
    """FAILS today for rank-deficient cells: ``numpy.linalg.LinAlgError: Singular matrix``.

    ``neighbors.neighbor_list`` hands a rank-deficient cell to ASE, whose
    ``complete_cell`` fills only zero vectors, not dependent ones; the same happens
    in ``checks.closest_distance`` before any model runs. With pbc all False the
    cell is irrelevant. Proposed fix (neighbors.py): build the neighbour search on
    a cell whose non-periodic vectors are replaced by an orthonormal completion of
    the periodic ones (``search_cell(atoms, margin)``; see the report), and use that
    same completed cell in ``bounding_cell``.
    """
    reference = Atoms("Si4", positions=si_cluster(), pbc=False)
    odd = Atoms("Si4", positions=si_cluster(), cell=cell, pbc=False)
    with alarm(20):
        e_ref, f_ref = energy_forces(calc, reference)
        e, f = energy_forces(calc, odd)
    # 1e-4: CHGNet works in float32 fractional coordinates, which lose ~5e-5 eV in the thin cell
    assert e == pytest.approx(e_ref, abs=1e-4)
    np.testing.assert_allclose(f, f_ref, atol=1e-4)


def rotated_slab(third):
    """A 2D-periodic Si layer, periodic along x and z, with ``third`` as the (non-periodic) cell vector."""
    positions = np.array([[0.0, 0.3, 0.0], [1.5, 1.2, 0.2], [0.7, -0.5, 1.6]])
    return Atoms("Si3", positions=positions, cell=[[3.0, 0, 0], [0, 0, 3.2], third], pbc=[True, True, False])


def test_slab_with_zero_third_vector_matches_full_cell(calc):
    """FAILS today, silently: the same slab gives another energy when its vacuum vector is zero.

    A layer periodic along x and z, cell rows ``[3,0,0], [0,0,3.2], [0,0,0]`` and
    pbc (T, T, F): ``neighbors.bounding_cell`` overwrites row 2 with
    ``[0, 0, extent]``, parallel to the periodic row 1, finds the result singular
    and returns ``diag(extent)``, which drops the periodic vector [0, 0, 3.2]. The
    adapters then turn correct neighbour shifts into wrong vectors. Seen here:
    MACE -5.41 vs -5.69 eV, CHGNet -6.31 vs -5.52 eV. Proposed fix: ``bounding_cell``
    keeps the periodic rows and fills the others with an orthonormal completion of
    their span scaled to the structure's extent plus margin (never per-axis boxes).
    """
    full = rotated_slab([0, 20.0, 0])
    zero = rotated_slab([0, 0, 0])
    e_full, f_full = energy_forces(calc, full)
    e_zero, f_zero = energy_forces(calc, zero)
    assert e_zero == pytest.approx(e_full, abs=1e-4)
    np.testing.assert_allclose(f_zero, f_full, atol=1e-4)


def test_chain_along_y_with_zero_other_vectors(calc):
    """FAILS today, silently: a 1D chain periodic along y in cell row 0, rows 1-2 zero, pbc (T, F, F)."""
    positions = np.array([[0.0, 0.0, 0.0], [0.3, 2.2, 0.1], [1.9, 1.0, -0.4]])
    chain = Atoms("Si3", positions=positions, cell=[[0, 4.4, 0], [0, 0, 0], [0, 0, 0]], pbc=[True, False, False])
    boxed = Atoms("Si3", positions=positions, cell=[[0, 4.4, 0], [20.0, 0, 0], [0, 0, 20.0]], pbc=[True, False, False])
    e_chain, f_chain = energy_forces(calc, chain)
    e_boxed, f_boxed = energy_forces(calc, boxed)
    assert e_chain == pytest.approx(e_boxed, abs=1e-4)
    np.testing.assert_allclose(f_chain, f_boxed, atol=1e-4)


@pytest.mark.parametrize("how", ["collinear", "zero-length"])
def test_dependent_periodic_vectors_are_refused(calc, how):
    """Collinear periodic vectors used to raise ``numpy.linalg.LinAlgError`` from the neighbour search.

    ``check_atoms`` checked zero lengths and, only for pbc all True, zero volume;
    it now also refuses periodic vectors of lower rank than the number of
    periodic axes (``np.linalg.matrix_rank(cell[pbc]) < pbc.sum()``).
    """
    b = [6.0, 0, 0] if how == "collinear" else [0, 0, 0]
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.1, 0.9]], cell=[[3.0, 0, 0], b, [0, 0, 0]], pbc=[True, True, False])
    with alarm(20), pytest.raises(InvalidStructureError) as info:
        calc.evaluate([atoms])
    assert str(info.value).strip()


@pytest.fixture(scope="module")
def mace_calc(mace_adapter):
    return MLFFCalculator(mace_adapter)


def test_thin_nonperiodic_vector_is_fast(mace_calc):
    """FAILS today: a needle-thin non-periodic cell vector makes the neighbour list crawl.

    Mixed pbc (T, T, F) with cell row 2 = [1, 1, h]: matscipy bins along the thin
    direction; its time grows as ~h^-3 (here: 0.85 s at h = 3e-3 Å, 2.5 s at 2e-3,
    21 s at 1e-3; ASE's list is slower still), so 1e-4 Å is a hang. Same fix as
    above: search on the completed cell. The model does not matter (MACE is cheapest).
    """
    calc = mace_calc
    positions = [[0.0, 0.0, 0.0], [1.0, 1.1, 1.2]]
    thin = Atoms("Si2", positions=positions, cell=[[3.0, 0, 0], [0, 3.0, 0], [1.0, 1.0, 2e-3]], pbc=[True, True, False])
    clean = Atoms("Si2", positions=positions, cell=[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 20.0]], pbc=[True, True, False])
    e_clean, _ = energy_forces(calc, clean)
    start = time.perf_counter()
    with alarm(30):
        e_thin, _ = energy_forces(calc, thin)
    # 1.6 s today on an idle core, ~0.01 s when searching on a completed cell
    assert time.perf_counter() - start < 0.5
    assert e_thin == pytest.approx(e_clean, abs=1e-4)


def test_impossibly_dense_periodic_cell_is_refused_fast(mace_calc):
    """A periodic cell 2e-3 Å thick is refused at once, not after seconds of neighbour search.

    ``closest_distance`` took 0.8 s at h = 3e-3 Å, 2.5 s at 2e-3, 35 s at 1e-3 (~h^-3)
    before refusing it. Two atoms in 0.018 Å³ must hold a pair closer than
    MIN_DISTANCE (sphere packing: volume per atom >= d^3/sqrt(2)); ``check_atoms``
    now says so before any search.
    """
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.0, 1.1, 1.2]], cell=[[3.0, 0, 0], [0, 3.0, 0], [1.0, 1.0, 2e-3]], pbc=True)
    start = time.perf_counter()
    with alarm(30), pytest.raises(MLFFError):
        mace_calc.evaluate([atoms])
    assert time.perf_counter() - start < 1.0
