"""Re-export: the LTAU layer lives in :mod:`mlff_calc.ltau.layer`."""

from ..ltau.layer import PER_ATOM, PER_STRUCTURE, LTAULayer, UncertaintyMonitor, UncertaintyThresholdExceeded, annotate

__all__ = ["PER_ATOM", "PER_STRUCTURE", "LTAULayer", "UncertaintyMonitor", "UncertaintyThresholdExceeded", "annotate"]
