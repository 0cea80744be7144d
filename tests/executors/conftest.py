"""Fixtures for the executor tests: the small float64 MACE as a calculator and as a recipe workers can load."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mace_calc(mace_adapter):
    from mlff_calc.calculator import MLFFCalculator

    return MLFFCalculator(mace_adapter)


@pytest.fixture(scope="session")
def mace_recipe(mace_small_path):
    from mlff_calc.executors import ModelRecipe

    return ModelRecipe(str(mace_small_path), device="cpu", dtype="float64")


def pytest_collection_modifyitems(items):
    """e3nn 0.4 warns at import about a variable mace sets for it; not ours to fix."""
    for item in items:
        if "executors" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"))
