"""Training a student on a label store: :func:`train_student`.

Outputs (when ``out_dir`` is given): the student folder itself (``student.json`` +
``student.pt``, loadable with ``mlff_calc.load(out_dir)``), ``train-history.json``
(one row of metrics per epoch) and ``error_log.npz``.

``error_log.npz`` (for LTAU-style uncertainty calibration): ``errors``
``[T_epochs, N_atoms]`` float32, the Euclidean norm of the force error (eV/Å) of
every training atom, taken from the training forward pass of each epoch (the
weights of that step, before the optimiser update and without EMA); with stable
atom ids ``structure_index`` (index in the label store) and ``atom_index`` (index
within the structure), plus ``numbers`` and ``epoch``. It is rewritten
atomically after every epoch, so an interrupted run keeps what it logged.

λ_KD schedule (``kd_schedule``): the paper halves λ_KD once the student's
validation force MAE is within 5 % of the teacher's MAE against DFT. In pure
distillation the teacher *is* the reference, so here ``kd_schedule`` is either
``None`` (constant λ_KD), a number ``x`` (halve λ_KD once, the first epoch the
student's validation force MAE against the teacher labels falls below ``x``
eV/Å — pass 1.05 × the teacher's own DFT force MAE to mimic the paper), or a
callable ``f(epoch, row, lambda_kd) -> new lambda_kd`` called after each epoch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from ase import Atoms

from ..artifacts import write_json
from ..data.error_log import ErrorLog
from ..data.labels import LabelStore
from ..models.identity import model_identity
from ..training.items import evaluate_items, fit_reference_energies, items_from_records, mean_neighbours, new_student, rms_force, split_records  # noqa: F401 (re-exported)
from ..training.loss import DistillationLoss, LossWeights

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    """A trained student and what it was trained on. ``save_student(result, folder)`` writes it."""

    adapter: object
    history: list[dict]
    metrics: dict
    teacher: dict
    training_data_sha256: str
    config: dict
    check_atoms: Atoms | None = None
    error_log: dict = field(default_factory=dict)
    wall_time_s: float = 0.0


def _kd_schedule(schedule) -> Callable | None:
    if schedule is None:
        return None
    if callable(schedule):
        return schedule
    threshold = float(schedule)
    state = {"halved": False}

    def halve_once(epoch, row, lam):
        if not state["halved"] and row.get("val_force_mae", np.inf) < threshold:
            state["halved"] = True
            log.info("epoch %d: validation force MAE %.4f < %.4f eV/Å, halving lambda_KD to %g", epoch, row["val_force_mae"], threshold, lam / 2)
            return lam / 2
        return lam

    return halve_once


def train_student(
    labels,
    *,
    architecture: Mapping | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    epochs: int = 30,
    batch_size: int = 4,
    lr: float = 5e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    ema_decay: float | None = 0.99,
    patience: int = 15,
    lambda_energy: float = 5.0,
    lambda_forces: float = 100.0,
    lambda_kd: float = 400.0,
    lambda_stress: float = 0.0,
    rows_per_structure: int = 4,
    row_method: str = "vjp",
    fd_step_A: float = 1e-4,
    kd_schedule=None,
    seed: int = 0,
    out_dir=None,
    progress: bool | None = None,
) -> DistillResult:
    """Train a student on the label store ``labels`` (a folder or :class:`LabelStore`).

    Uses the "train" split for gradient steps, "valid" for early stopping (monitor:
    ``λ_E·E_MAE + λ_F·F_L2MAE`` on the validation set, the same with or without the
    Hessian term) and reports "test" metrics with the restored best weights.
    ``lambda_kd=0`` trains without the Hessian term (the baseline). With ``out_dir``
    the student, ``error_log.npz`` and ``train-history.json`` are written there.
    """
    from ..models.student import save_student
    from ..training.trainer import Trainer, TrainerConfig, shuffled_batches

    config = {k: v for k, v in locals().items() if k not in ("labels", "out_dir", "progress", "architecture", "kd_schedule") and not callable(v)}  # the arguments, not the imports
    started = time.perf_counter()
    store = labels if isinstance(labels, LabelStore) else LabelStore(labels)
    train_rec, valid_rec, test_rec = split_records(store, need_hessian=lambda_kd > 0 and rows_per_structure > 0)
    elements = sorted({int(z) for r in (*train_rec, *valid_rec, *test_rec) for z in r.atoms.numbers})
    student = new_student(train_rec, elements, architecture=architecture, dtype=dtype, device=device, seed=seed)
    train_items = items_from_records(train_rec, student.dtype, student.device, offsets=True)
    valid_items = items_from_records(valid_rec, student.dtype, student.device, offsets=False)
    test_items = items_from_records(test_rec, student.dtype, student.device, offsets=False)
    loss_fn = DistillationLoss(
        LossWeights(energy=lambda_energy, forces=lambda_forces, kd=lambda_kd, stress=lambda_stress), rows_per_structure=rows_per_structure, row_method=row_method, fd_step_A=fd_step_A, seed=seed
    )
    schedule_fn = _kd_schedule(kd_schedule)
    error_log = ErrorLog(train_items)
    order_rng = np.random.default_rng(seed)
    out_dir = Path(out_dir) if out_dir is not None else None

    batches = shuffled_batches(train_items, batch_size, order_rng)

    def step(batch):
        loss, parts, err = loss_fn(student, batch, train=True)
        error_log.record(batch, err)
        return loss, parts

    def validate():
        m = evaluate_items(student, valid_items)
        return {f"val_{k}": v for k, v in m.items()} | {"val_loss": lambda_energy * m["energy_mae_per_atom"] + lambda_forces * m["force_l2mae"]}

    def on_epoch_end(epoch, row):
        error_log.end_epoch()
        row["lambda_kd"] = loss_fn.weights.kd
        if schedule_fn is not None and loss_fn.weights.kd > 0:
            loss_fn.weights.kd = float(schedule_fn(epoch, row, loss_fn.weights.kd))
        if out_dir is not None:
            error_log.write(out_dir / "error_log.npz")

    trainer = Trainer(student.module, TrainerConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, schedule=schedule, ema_decay=ema_decay, patience=patience, progress=progress))
    history = trainer.fit(step, batches, validate, on_epoch_end=on_epoch_end, steps_per_epoch=-(-len(train_items) // batch_size))
    metrics = {
        "valid": evaluate_items(student, valid_items),
        "test": evaluate_items(student, test_items),
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.rows),
        "stopped_early": history.stopped_early,
        "train_time_s": history.wall_time_s,
    }
    config.update(
        architecture=student.architecture,
        dtype=str(student.dtype).removeprefix("torch."),
        kd_schedule=kd_schedule if kd_schedule is None or isinstance(kd_schedule, (int, float)) else getattr(kd_schedule, "__name__", "callable"),
        label_store=str(Path(store.folder).resolve()),
        n_train=len(train_items),
        n_valid=len(valid_items),
        n_test=len(test_items),
    )
    result = DistillResult(
        adapter=student,
        history=history.rows,
        metrics=metrics,
        teacher=store.teacher,
        training_data_sha256=store.content_sha256(),
        config=config,
        check_atoms=train_rec[0].atoms.copy(),
        error_log=error_log.arrays(),
        wall_time_s=time.perf_counter() - started,
    )
    if out_dir is not None:
        save_student(result, out_dir)
        error_log.write(out_dir / "error_log.npz", identity=model_identity(student))  # bound to the final weights
        write_json(out_dir / "train-history.json", {"history": history.rows, "metrics": metrics, "config": config})
    log.info("student trained in %.1f s: valid %s, test %s", result.wall_time_s, metrics["valid"], metrics["test"])
    return result
