"""A tiny two-head student for the TTT tests.

Teacher: the small float64 ScaleShiftMACE of the top-level conftest. Prior: a
Lennard-Jones potential (covers Si, costs nothing). The student is float64 so
finite-difference and bitwise checks are tight.
"""

from __future__ import annotations

import pytest
from helpers import si8
from ttt_helpers import ARCH, LJ


@pytest.fixture(scope="session")
def ttt_store(mace_adapter, tmp_path_factory):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.distill import label, sample

    teacher = MLFFCalculator(mace_adapter)
    samples = sample(
        [si8()], teacher, temperatures_K=(600.0,), md_frames_per_T=6, md_interval=2, md_equilibration_steps=2, n_rattle=8, rattle_std_A=0.05, n_strain=4, split=(0.6, 0.2, 0.2), seed=5, progress=False
    )
    return label(samples, teacher, tmp_path_factory.mktemp("ttt") / "labels", chunk_size=8, n_rows=0, full_hessian_max_dof=0, seed=1, progress=False)


@pytest.fixture(scope="session")
def ttt_folder(ttt_store, tmp_path_factory):
    from mlff_calc.ttt import train_ttt_student

    out = tmp_path_factory.mktemp("ttt") / "student"
    result = train_ttt_student(ttt_store, LJ, architecture=ARCH, dtype="float64", prior_epochs=4, reference_epochs=4, batch_size=3, lr=1e-2, seed=0, out_dir=out, progress=False)
    return result, out


@pytest.fixture
def ttt_calc(ttt_folder):
    """A fresh calculator with a TTT layer (a few large steps, so weights visibly move)."""
    import mlff_calc
    from mlff_calc.layers.ttt import TTTLayer

    return mlff_calc.load(ttt_folder[1], device="cpu", layers=[TTTLayer(steps=6, batch_size=4, lr=1e-3, progress=False)])


@pytest.fixture(scope="session")
def shifted():
    """Compressed, rattled Si8 cells: off the training distribution."""
    out = []
    for k in range(5):
        a = si8()
        a.set_cell(a.cell.array * 0.94, scale_atoms=True)
        a.rattle(0.06, seed=10 + k)
        out.append(a)
    return out


def pytest_collection_modifyitems(items):
    for item in items:
        if "ttt" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"))
