"""The generic trainer: EMA, schedules, early stopping and restoring the best weights."""

import pytest
import torch

from mlff_calc.errors import ConfigurationError
from mlff_calc.training import EMA, Trainer, TrainerConfig


def quadratic_problem(target=3.0):
    module = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(module.weight)

    def step(batch):
        loss = (module.weight - target).pow(2).sum()
        return loss, {"loss": float(loss.detach())}

    def validate():
        return {"val_loss": float((module.weight - target).pow(2).sum())}

    return module, step, validate


@pytest.mark.parametrize("schedule", ["cosine", "plateau", "constant"])
def test_converges_and_restores_best(schedule):
    module, step, validate = quadratic_problem()
    trainer = Trainer(module, TrainerConfig(epochs=30, lr=0.3, schedule=schedule, ema_decay=0.5, patience=30, progress=False))
    hist = trainer.fit(step, lambda epoch: range(5), validate)
    assert len(hist.rows) == 30
    best = min(r["val_loss"] for r in hist.rows)
    assert hist.best_value == pytest.approx(best) and hist.rows[hist.best_epoch]["best"]
    assert validate()["val_loss"] == pytest.approx(best)  # the best (EMA) weights are in the module
    assert best < 1e-2


def test_early_stopping_keeps_best_weights():
    module, _, _ = quadratic_problem()
    values = iter([5.0, 1.0, 2.0, 3.0, 4.0, 0.5])
    snapshots = []

    def step(batch):
        loss = (module.weight - 1.0).pow(2).sum()
        return loss, {}

    def validate():
        snapshots.append(module.weight.detach().clone())
        return {"val_loss": next(values)}

    trainer = Trainer(module, TrainerConfig(epochs=6, lr=0.1, ema_decay=None, patience=3, progress=False))
    hist = trainer.fit(step, lambda epoch: [None], validate)
    assert hist.stopped_early and len(hist.rows) == 5 and hist.best_epoch == 1
    assert torch.equal(module.weight.detach(), snapshots[1])


def test_ema_average_and_swap():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], decay=0.9)
    for _ in range(50):
        with torch.no_grad():
            p.add_(1.0)
        ema.update()
    assert float(ema.shadow[0][0]) < 50.0
    with ema.applied():
        assert torch.equal(p.detach(), ema.shadow[0])
    assert float(p[0]) == 50.0


def test_bad_config():
    module, step, validate = quadratic_problem()
    with pytest.raises(ConfigurationError):
        Trainer(module, TrainerConfig(schedule="linear"))
    trainer = Trainer(module, TrainerConfig(epochs=1, monitor="val_force_mae", progress=False))
    with pytest.raises(ConfigurationError, match="val_force_mae"):
        trainer.fit(step, lambda e: [None], validate)
