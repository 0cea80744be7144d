"""Fixtures for the distillation tests: a cheap float64 teacher, samples, a label store and a student.

The teacher is the small ScaleShiftMACE of the top-level conftest (float64), so
labels and Hessian rows are exact enough for tight comparisons and fast to make.
(The top-level conftest also runs the suite on one torch thread, restored at the end.)
"""

from __future__ import annotations

import pytest
from helpers import si8


@pytest.fixture(scope="session")
def teacher(mace_adapter):
    from mlff_calc.calculator import MLFFCalculator

    return MLFFCalculator(mace_adapter)


@pytest.fixture(scope="session")
def samples(teacher):
    from mlff_calc.distill import sample

    return sample(
        [si8()], teacher, temperatures_K=(600.0,), md_frames_per_T=6, md_interval=2, md_equilibration_steps=2, n_rattle=8, rattle_std_A=0.05, n_strain=4, split=(0.6, 0.2, 0.2), seed=3, progress=False
    )


@pytest.fixture(scope="session")
def store(samples, teacher, tmp_path_factory):
    from mlff_calc.distill import label

    return label(samples, teacher, tmp_path_factory.mktemp("labels") / "store", chunk_size=4, full_hessian_max_dof=12, n_rows=6, seed=1, progress=False)


@pytest.fixture(scope="session")
def trained(store, tmp_path_factory):
    """A tiny float64 student after a few epochs, saved to a folder."""
    from mlff_calc.distill import train_student

    out = tmp_path_factory.mktemp("student") / "si"
    result = train_student(
        store,
        architecture={"channels": 8, "num_interactions": 1, "num_bessel": 6, "radial_mlp": [16]},
        dtype="float64",
        epochs=4,
        batch_size=3,
        lr=1e-2,
        kd_schedule=10.0,
        seed=0,
        out_dir=out,
        progress=False,
    )
    return result, out


def pytest_collection_modifyitems(items):
    """e3nn 0.4 warns at import about a variable mace sets for it; not ours to fix."""
    for item in items:
        if "distill" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"))
