"""mlff_calc: ASE calculators for machine-learning force fields, with correction and uncertainty layers."""

from __future__ import annotations

import logging

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):
    # the root is a facade: load() lives in mlff_calc.calculator and is imported on first use
    if name == "load":
        from .calculator import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load", "__version__"]
