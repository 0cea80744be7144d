"""Re-export: the test-time training layer lives in :mod:`mlff_calc.ttt.layer`."""

from ..ttt.layer import ADAPTED_FORMAT, ADAPTED_MANIFEST, ADAPTED_VERSION, ADAPTED_WEIGHTS, NO_HEAD, TTTLayer

__all__ = ["ADAPTED_FORMAT", "ADAPTED_MANIFEST", "ADAPTED_VERSION", "ADAPTED_WEIGHTS", "NO_HEAD", "TTTLayer"]
