"""Training utilities shared by the distillation (and any future fine-tuning) code."""

from .trainer import EMA, TrainerConfig, Trainer, TrainHistory

__all__ = ["EMA", "Trainer", "TrainerConfig", "TrainHistory"]
