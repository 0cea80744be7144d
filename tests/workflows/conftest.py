import pytest


@pytest.fixture(scope="module")
def calc(chgnet_calc):
    """The workflows are tested on CHGNet, the default model."""
    return chgnet_calc
