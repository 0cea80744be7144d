"""Re-export: the distillation loss lives in :mod:`mlff_calc.training.loss` (shared by distill, ttt and finetune)."""

from ..training.loss import DistillationLoss, LossWeights, TrainItem, energy_per_atom_mae, force_error_norms, voigt_to_matrix

__all__ = ["DistillationLoss", "LossWeights", "TrainItem", "energy_per_atom_mae", "force_error_norms", "voigt_to_matrix"]
