"""Training shared by every method that trains (distillation, test-time training, fine-tuning).

- :mod:`.trainer`: the one generic trainer (AdamW, schedules, EMA, early stopping).
- :mod:`.loss`: the loss terms (:class:`DistillationLoss`, :class:`FinetuneLoss`) over :class:`TrainItem` batches.
- :mod:`.items`: training sets as TrainItems (from label stores or DFT data) and their evaluation.
"""

from .items import evaluate_items, items_from_dft, items_from_records
from .loss import DistillationLoss, FinetuneLoss, LossWeights, TrainItem
from .trainer import EMA, Trainer, TrainerConfig, TrainHistory, only_trainable, shuffled_batches

__all__ = [
    "EMA",
    "DistillationLoss",
    "FinetuneLoss",
    "LossWeights",
    "TrainHistory",
    "TrainItem",
    "Trainer",
    "TrainerConfig",
    "evaluate_items",
    "items_from_dft",
    "items_from_records",
    "only_trainable",
    "shuffled_batches",
]
