"""A forward pass that breaks (out of memory, NaN) surfaces as CalculationFailed with a next step.

Out of memory: ``ModelAdapter.compute`` turns ``torch.OutOfMemoryError`` and
``MemoryError`` into CalculationFailed, but FAILS today for the error a real CPU
out-of-memory raises: torch's CPU allocator throws ``RuntimeError: [enforce fail
at alloc_cpu.cpp:127] ... DefaultCPUAllocator: can't allocate memory`` (seen with
CHGNet on a dense lattice under an 8 GB address-space limit, test_graph_limits.py),
which escapes as a plain RuntimeError. Proposed fix in ``ModelAdapter.compute``,
next to the existing clause::

    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
            raise
        raise CalculationFailed(<the same message>) from exc

Other RuntimeErrors must propagate unchanged (test below).
"""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import CalculationFailed

FAMILIES = ("chgnet", "m3gnet", "mace")

OOM_ERRORS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "MemoryError": lambda: MemoryError(),
    "cpu-allocator": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 560885760 bytes. Error code 12 (Cannot allocate memory)"
    ),
}


def si64():
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=31)
    return atoms


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("error", sorted(OOM_ERRORS))
def test_out_of_memory_becomes_calculation_failed(request, monkeypatch, family, error):
    adapter = request.getfixturevalue(f"{family}_adapter")
    raised = OOM_ERRORS[error]()

    def forward(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(adapter, "_forward", forward)
    atoms = si64()
    atoms.calc = MLFFCalculator(adapter)
    with pytest.raises(CalculationFailed) as info:
        atoms.get_potential_energy()
    message = str(info.value)
    assert "memory" in message.lower(), message
    assert "64 atoms" in message, message  # says how big the job was
    assert "batch" in message.lower() or "smaller" in message.lower(), message  # and what to do next
    assert info.value.__cause__ is raised


def test_out_of_memory_in_a_batch_names_the_batch(monkeypatch, mace_adapter):
    def forward(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(mace_adapter, "_forward", forward)
    # the batch backs off (halving, with a warning naming it) until one structure alone fails
    with pytest.warns(RuntimeWarning, match=r"3 structures \(192 atoms\)"), pytest.raises(CalculationFailed) as info:
        MLFFCalculator(mace_adapter).evaluate([si64(), si64(), si64()])
    assert "64 atoms" in str(info.value) and "1 structure" in str(info.value), str(info.value)


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch, mace_adapter):
    """Only memory errors are translated; anything else keeps its type and message."""

    def forward(*_args, **_kwargs):
        raise RuntimeError("shape mismatch in some kernel")

    monkeypatch.setattr(mace_adapter, "_forward", forward)
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        MLFFCalculator(mace_adapter).evaluate([si64()])
    assert not isinstance(info.value, CalculationFailed)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_output_becomes_calculation_failed(request, monkeypatch, family, bad):
    adapter = request.getfixturevalue(f"{family}_adapter")
    real = adapter._forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        out.energy = out.energy * bad
        return out

    monkeypatch.setattr(adapter, "_forward", forward)
    atoms = si64()
    atoms.calc = MLFFCalculator(adapter)
    with pytest.raises(CalculationFailed, match="non-finite"):
        atoms.get_forces()
