"""mlff_calc: ASE calculators for machine-learning force fields, with correction and uncertainty layers."""

from __future__ import annotations

import logging

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _load(model="chgnet", device="auto", dtype=None, *, layers=(), family=None, min_distance=0.5, verify=True):
    """:func:`mlff_calc.calculator.load`; a folder written by ``mlff_calc.softening.correct`` gives its corrected model."""
    from .calculator import load
    from .softening.correct import is_correction, load_corrected

    if is_correction(model):
        return load_corrected(model, device=device, dtype=dtype, layers=layers, min_distance=min_distance, verify=verify)
    return load(model, device=device, dtype=dtype, layers=layers, family=family, min_distance=min_distance, verify=verify)


def __getattr__(name: str):
    # the root is a facade: load() lives in mlff_calc.calculator and is imported on first use
    if name == "load":
        return _load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load", "__version__"]
