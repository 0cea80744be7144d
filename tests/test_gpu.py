"""CUDA runs agree with CPU runs (skipped where no GPU is present)."""

import numpy as np
import pytest
import torch
from helpers import rattled_si

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("fixture", ["chgnet_adapter", "m3gnet_adapter", "mace_adapter"])
def test_cuda_matches_cpu(request, fixture):
    cpu = request.getfixturevalue(fixture)
    atoms = rattled_si(2)
    ref = cpu.evaluate([atoms], ("energy", "forces", "stress"))[0]
    moved = _to_cuda(cpu)
    res = moved.evaluate([atoms], ("energy", "forces", "stress"))[0]
    assert res["energy"] == pytest.approx(ref["energy"], abs=1e-3)
    np.testing.assert_allclose(res["forces"], ref["forces"], atol=1e-3)
    np.testing.assert_allclose(res["stress"], ref["stress"], atol=1e-5)


def _to_cuda(adapter):
    from mlff_calc.models.registry import load_adapter

    if adapter.family == "chgnet":
        return load_adapter("chgnet", device="cuda")
    return type(adapter).load(adapter.source, device="cuda", dtype=adapter.dtype)
