"""A small generic trainer for the ``nn.Module`` of a model adapter.

It knows nothing about force fields: the caller passes a ``step(batch)`` that
returns ``(loss, info)``, the batches of each epoch, and a ``validate()`` that
returns a dict of metrics (computed with the EMA weights swapped in). The trainer
does AdamW, a cosine / plateau / constant learning-rate schedule, an exponential
moving average (EMA) of the weights, gradient clipping, early stopping on a
monitored validation metric, a tqdm progress bar, and keeps the best (EMA)
weights in memory and restores them at the end.

It leaves global state alone: no thread counts, default dtypes or RNG seeds are
set (seed your own batch order and initialisation).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..errors import ConfigurationError

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "plateau", "constant")


@contextlib.contextmanager
def only_trainable(params: Iterable[torch.nn.Parameter], chosen: Iterable[torch.nn.Parameter]):
    """Inside the block, of ``params`` exactly ``chosen`` require gradients (yielded as a list); every flag is restored after."""
    params = list(params)
    picked = {id(p) for p in chosen}
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(id(p) in picked)
    try:
        yield [p for p in params if id(p) in picked]
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def shuffled_batches(items: Sequence, batch_size: int, rng) -> Callable[[int], Iterator[list]]:
    """``batches(epoch)`` for :meth:`Trainer.fit`: a fresh permutation of ``items`` each epoch."""

    def batches(epoch):
        perm = rng.permutation(len(items))
        for start in range(0, len(perm), batch_size):
            yield [items[k] for k in perm[start : start + batch_size]]

    return batches


@dataclass
class TrainerConfig:
    """Optimiser and schedule settings.

    ``lr``: peak learning rate; ``min_lr_ratio``: cosine floor as a fraction of it.
    ``plateau_factor`` / ``plateau_patience``: ReduceLROnPlateau on the monitor.
    ``ema_decay``: ``None`` or 0 switches EMA off. ``patience``: epochs without an
    improvement of ``monitor`` by more than ``min_delta`` before stopping early.
    ``grad_clip``: max gradient norm (``None``: off).
    """

    epochs: int = 50
    lr: float = 5e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.02
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    ema_decay: float | None = 0.99
    patience: int = 15
    min_delta: float = 0.0
    monitor: str = "val_loss"
    grad_clip: float | None = 10.0
    progress: bool | None = None

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigurationError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.epochs < 1 or not self.lr > 0 or self.patience < 1:
            raise ConfigurationError(f"need epochs >= 1, lr > 0 and patience >= 1; got {self.epochs}, {self.lr}, {self.patience}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigurationError(f"ema_decay must lie in [0, 1); got {self.ema_decay}")


class EMA:
    """Exponential moving average of parameters, with the usual warm-up ``min(d, (1+n)/(10+n))``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.detach().clone() for p in self.params]
        self.n = 0

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def applied(self):
        """Swap the averaged weights in for the duration of the block."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)


@dataclass
class TrainHistory:
    """One row of metrics per epoch; ``best_epoch`` is the epoch whose weights were restored."""

    rows: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = math.inf
    stopped_early: bool = False
    wall_time_s: float = 0.0


class Trainer:
    """Trains ``module`` in place; see the module docstring for the protocol."""

    def __init__(self, module: torch.nn.Module, config: TrainerConfig | None = None, *, params: Iterable[torch.nn.Parameter] | None = None):
        self.module = module
        self.config = config or TrainerConfig()
        self.config.check()
        self.params = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
        if not self.params:
            raise ConfigurationError("the module has no trainable parameters")
        c = self.config
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, weight_decay=c.weight_decay)
        if c.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs, eta_min=c.lr * c.min_lr_ratio)
        elif c.schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=c.plateau_factor, patience=c.plateau_patience)
        else:
            self.scheduler = None
        self.ema = EMA(self.params, c.ema_decay) if c.ema_decay else None

    def averaged(self):
        """Context in which the module holds the EMA weights (a no-op without EMA)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def fit(
        self, step: Callable, batches: Callable[[int], Iterable], validate: Callable[[], dict], *, on_epoch_end: Callable[[int, dict], None] | None = None, steps_per_epoch: int | None = None
    ) -> TrainHistory:
        """Train for up to ``config.epochs`` epochs; returns the history with the best weights restored.

        ``step(batch) -> (loss tensor, info dict of floats)``; ``batches(epoch)`` yields the
        epoch's batches; ``validate()`` returns metrics including ``config.monitor``;
        ``on_epoch_end(epoch, row)`` sees each epoch's row (and may change the loss).
        """
        from tqdm.auto import tqdm

        c = self.config
        history = TrainHistory()
        best_state = None
        since_best = 0
        started = time.perf_counter()
        was_training = self.module.training
        with tqdm(total=c.epochs * (steps_per_epoch or 0) or None, desc="train", disable=None if c.progress is None else not c.progress, leave=False) as bar:
            for epoch in range(c.epochs):
                t0 = time.perf_counter()
                self.module.train()
                sums: dict[str, float] = {}
                n_steps = 0
                for batch in batches(epoch):
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, info = step(batch)
                    if not torch.isfinite(loss.detach()):
                        from ..errors import CalculationFailed

                        raise CalculationFailed(f"training loss became {float(loss.detach())} at epoch {epoch}; lower the learning rate")
                    loss.backward()
                    if c.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                    self.optimizer.step()
                    if self.ema is not None:
                        self.ema.update()
                    for k, v in info.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n_steps += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.4g}")
                self.module.eval()
                with self.averaged():
                    metrics = validate()
                if c.monitor not in metrics:
                    raise ConfigurationError(f"validate() returned {sorted(metrics)}, without the monitored metric {c.monitor!r}")
                row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], **{f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()}, **metrics, "epoch_time_s": time.perf_counter() - t0}
                value = float(metrics[c.monitor])
                if value < history.best_value - c.min_delta:
                    history.best_value, history.best_epoch, since_best = value, epoch, 0
                    with self.averaged():
                        best_state = copy.deepcopy(self.module.state_dict())
                else:
                    since_best += 1
                row["best"] = history.best_epoch == epoch
                history.rows.append(row)
                log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, row)
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(value)
                elif self.scheduler is not None:
                    self.scheduler.step()
                if since_best >= c.patience:
                    history.stopped_early = True
                    log.info("early stop after epoch %d: no improvement of %s for %d epochs", epoch, c.monitor, c.patience)
                    break
        if best_state is not None:
            self.module.load_state_dict(best_state)
        self.module.train(was_training)
        history.wall_time_s = time.perf_counter() - started
        return history
