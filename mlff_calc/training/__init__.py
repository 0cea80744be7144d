"""Training utilities shared by the distillation (and any future fine-tuning) code."""

from .trainer import EMA, TrainerConfig, Trainer, TrainHistory, shuffled_batches

__all__ = ["shuffled_batches", "EMA", "Trainer", "TrainerConfig", "TrainHistory"]
