"""Training utilities shared by the distillation (and any future fine-tuning) code."""

from .trainer import EMA, TrainerConfig, Trainer, TrainHistory, only_trainable, shuffled_batches

__all__ = ["only_trainable", "shuffled_batches", "EMA", "Trainer", "TrainerConfig", "TrainHistory"]
