"""Re-export: the high-energy sampler lives in :mod:`mlff_calc.softening.sampler`."""

from .softening.sampler import random_strain, sample_high_energy, strained, write_proposals

__all__ = ["random_strain", "sample_high_energy", "strained", "write_proposals"]
