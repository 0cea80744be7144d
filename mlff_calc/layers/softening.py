"""Re-export: the softening layer lives in :mod:`mlff_calc.softening.layer`."""

from ..softening.layer import SofteningLayer

__all__ = ["SofteningLayer"]
