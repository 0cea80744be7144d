"""Re-export: exact nearest-neighbour search lives in :mod:`mlff_calc.ltau.knn`."""

from .ltau.knn import BlockedSearch, KDTreeSearch

__all__ = ["BlockedSearch", "KDTreeSearch"]
