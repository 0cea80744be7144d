"""Re-export: the rewiring layer lives in :mod:`mlff_calc.rewiring.layer`."""

from ..rewiring.layer import NARROW_GAP, RewiringLayer, system_key

__all__ = ["NARROW_GAP", "RewiringLayer", "system_key"]
