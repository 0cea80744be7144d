"""Test-time training: gradient steps on the prior loss through the shared backbone.

Recipe (Kreiman & Krishnapriyan 2025, arXiv 2503.08674) and this module's
defaults: SGD, lr 1e-5, momentum 0.9, weight decay 1e-3, 500 steps at batch 32
(structures drawn without replacement, reshuffled when used up), loss = per-atom
energy MAE + 1000 x force L2-MAE against the prior's labels, evaluated through
the prior head. Only the model's ``adapt_groups`` (default: ``embedding`` and
``interaction_0``) change; the prior head and every other parameter are frozen.
Adaptation is done once for a set of test configurations, never per structure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import CalculationFailed, ConfigurationError
from ..training.loss import DistillationLoss, LossWeights, TrainItem
from ..training.trainer import only_trainable
from .priors import prior_labels


@dataclass
class AdaptConfig:
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 1e-3
    energy_weight: float = 1.0
    force_weight: float = 1000.0
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigurationError(f"test-time training needs steps >= 1, batch_size >= 1 and lr > 0; got {self.steps}, {self.batch_size}, {self.lr}")


def label_items(structures, labels, dtype, device) -> list[TrainItem]:
    """Prior labels as loss items (no stress, no Hessian rows)."""
    empty = np.zeros(0, dtype=np.int64)
    return [
        TrainItem(
            index=k,
            atoms=a,
            energy=torch.tensor(e, dtype=dtype, device=device),
            forces=torch.as_tensor(f, dtype=dtype, device=device),
            stress=None,
            hessian_rows=empty,
            hessian=torch.zeros((0, 3 * len(a)), dtype=dtype, device=device),
        )
        for k, (a, (e, f)) in enumerate(zip(structures, labels))
    ]


def trainable(model, groups: Sequence[str]):
    """Context in which only the parameters of ``groups`` require gradients (restored after)."""
    table = model.parameter_groups()
    return only_trainable((p for params in table.values() for p in params), (p for g in groups for p in table[g]))


def prior_loss(model, items, weights: LossWeights, *, train: bool):
    with model.using("prior"):
        return DistillationLoss(weights, rows_per_structure=0)(model, items, train=train)


def adapt(model, structures, config: AdaptConfig | None = None, *, labels=None, progress: bool | None = None) -> dict:
    """Adapt ``model`` (a :class:`~mlff_calc.ttt.head.TwoHeadModel`) in place; return the history.

    ``labels``: precomputed ``(energy, forces)`` per structure; by default the
    model's own prior labels them here.
    """
    from tqdm.auto import tqdm

    config = config or AdaptConfig()
    config.check()
    structures = list(structures)
    if not structures:
        raise ConfigurationError("test-time training needs at least one structure to adapt on")
    started = time.perf_counter()
    labels = labels if labels is not None else prior_labels(structures, model.prior, progress=progress)
    labelled_s = time.perf_counter() - started
    items = label_items(structures, labels, model.dtype, model.device)
    weights = LossWeights(energy=config.energy_weight, forces=config.force_weight, kd=0.0)
    rng = np.random.default_rng(config.seed)
    order: list[int] = []
    losses = []
    with torch.no_grad():
        initial = float(prior_loss(model, items, weights, train=False)[0])
    with trainable(model, model.adapt_groups) as params:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        with tqdm(range(config.steps), desc="test-time training", disable=None if progress is None else not progress, leave=False) as bar:
            for step in bar:
                if len(order) < config.batch_size:
                    order.extend(rng.permutation(len(items)).tolist())
                batch = [items[k] for k in order[: min(config.batch_size, len(items))]]
                del order[: len(batch)]
                optimizer.zero_grad(set_to_none=True)
                loss, parts, _ = prior_loss(model, batch, weights, train=True)
                if not torch.isfinite(loss.detach()):
                    raise CalculationFailed(f"the prior loss became {float(loss.detach())} at step {step}; lower the learning rate (now {config.lr})")
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    with torch.no_grad():
        final = float(prior_loss(model, items, weights, train=False)[0])
    return {
        "config": asdict(config),
        "n_structures": len(items),
        "n_atoms": int(sum(len(a) for a in structures)),
        "prior_loss_initial": initial,
        "prior_loss_final": final,
        "step_losses": losses,
        "label_time_s": labelled_s,
        "wall_time_s": time.perf_counter() - started,
    }
