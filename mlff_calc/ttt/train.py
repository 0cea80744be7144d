"""Training two-head models: :func:`train_ttt_student` and :func:`fit_prior_head`.

The student recipe follows the paper's order:

1. **Prior phase** — the backbone (``embedding`` + ``interaction_0``) and the prior
   head learn the prior's energies and forces on the training structures.
2. **Reference phase** — the backbone is frozen; the later blocks and the
   reference readouts learn the teacher's labels from the label store.

The default two-head student is the distillation student with two interactions
(the first is the shared backbone, the second belongs to the reference head).

:func:`fit_prior_head` is the *experimental* path for CHGNet, M3GNet and MACE:
their backbones were never trained with the prior, so only the head is fitted,
on frozen features, and test-time training then moves a representation the
prior never shaped. The paper warns this may not help; measure before trusting it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.labels import LabelStore
from ..errors import ConfigurationError
from ..models.two_head import DEFAULT_ADAPT_GROUPS, PriorHead, TwoHeadModel, first_layer_columns, invariant_width, save_head
from ..training.items import evaluate_items, fit_reference_energies, items_from_records, new_student, rms_force, split_records
from ..training.loss import DistillationLoss, LossWeights
from .adapt import label_items, prior_loss, trainable
from .priors import check_coverage, prior_labels, prior_spec

log = logging.getLogger(__name__)

#: the two-head student: the distillation student with a second interaction for the reference head
TTT_ARCHITECTURE = {"num_interactions": 2}


@dataclass
class TTTResult:
    model: TwoHeadModel
    history: dict
    metrics: dict
    teacher: dict
    training_data_sha256: str
    config: dict
    check_atoms: object
    wall_time_s: float


def _prior_stats(structures, labels) -> tuple[dict[int, float], float]:
    """Per-element prior energies by least squares, and the RMS prior force (the head's scale)."""
    elements = sorted({int(z) for a in structures for z in a.numbers})
    e0 = fit_reference_energies(structures, [e for e, _ in labels], elements)
    return e0, max(rms_force([f for _, f in labels]), 1e-3)


def _fit(model, params_groups, items, valid_items, *, head: str, weights: LossWeights, epochs: int, batch_size: int, lr: float, seed: int, progress):
    from ..training.trainer import Trainer, TrainerConfig, shuffled_batches

    loss_fn = DistillationLoss(weights, rows_per_structure=4 if weights.kd > 0 else 0, seed=seed)
    container = torch.nn.ModuleDict({"base": model.module, "prior_head": model.prior_head})

    def step(batch):
        with model.using(head):
            loss, parts, _ = loss_fn(model, batch, train=True)
        return loss, parts

    def validate():
        with model.using(head):
            m = evaluate_items(model, valid_items)
        return {f"val_{k}": v for k, v in m.items()} | {"val_loss": weights.energy * m["energy_mae_per_atom"] + weights.forces * m["force_l2mae"]}

    with trainable(model, params_groups):
        trainer = Trainer(container, TrainerConfig(epochs=epochs, lr=lr, ema_decay=0.99, patience=max(epochs, 1), progress=progress))
        history = trainer.fit(step, shuffled_batches(items, batch_size, np.random.default_rng(seed)), validate, steps_per_epoch=-(-len(items) // batch_size))
    return history


def train_ttt_student(
    labels,
    prior,
    *,
    architecture: Mapping | None = None,
    adapt_groups: Sequence[str] = DEFAULT_ADAPT_GROUPS,
    head_hidden: int = 32,
    dtype: str = "float32",
    device: str = "cpu",
    prior_epochs: int = 30,
    reference_epochs: int = 30,
    batch_size: int = 4,
    lr: float = 5e-3,
    lambda_energy: float = 5.0,
    lambda_forces: float = 100.0,
    lambda_kd: float = 0.0,
    seed: int = 0,
    out_dir=None,
    progress: bool | None = None,
) -> TTTResult:
    """A two-head student: prior phase on ``prior`` labels, then reference phase on ``labels``.

    ``labels``: a distillation label store (folder or :class:`LabelStore`) of teacher
    labels; its train / valid / test splits are used as in :func:`~mlff_calc.distill.train_student`.
    ``prior``: a prior name or spec (:mod:`mlff_calc.ttt.priors`). With ``out_dir`` the
    student folder (student + prior head, ``mlff_calc.load(out_dir)``) and
    ``ttt-history.json`` are written there.
    """
    from ..artifacts import write_json

    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k not in ("labels", "out_dir", "progress", "started", "write_json")}
    config["prior"] = prior_spec(prior)
    store = labels if isinstance(labels, LabelStore) else LabelStore(labels)
    train_rec, valid_rec, test_rec = split_records(store, need_hessian=lambda_kd > 0)
    elements = sorted({int(z) for r in (*train_rec, *valid_rec, *test_rec) for z in r.atoms.numbers})
    check_coverage(prior, elements)
    student = new_student(train_rec, elements, architecture={**TTT_ARCHITECTURE, **dict(architecture or {})}, dtype=dtype, device=device, seed=seed)
    if student.architecture["num_interactions"] < 2 and "interaction_0" in adapt_groups:
        raise ConfigurationError("a two-head student needs num_interactions >= 2: the first interaction is the shared backbone, the later ones belong to the reference head")

    t0 = time.perf_counter()
    train_atoms, valid_atoms = [r.atoms for r in train_rec], [r.atoms for r in valid_rec]
    train_prior = prior_labels(train_atoms, prior, progress=progress)
    valid_prior = train_prior if valid_rec is train_rec else prior_labels(valid_atoms, prior, progress=progress)
    prior_label_s = time.perf_counter() - t0
    e0, scale = _prior_stats(train_atoms, train_prior)
    head = PriorHead(first_layer_columns(student), hidden=head_hidden, e0=e0, scale=scale, seed=seed)
    model = TwoHeadModel(student, head, prior=prior_spec(prior), adapt_groups=adapt_groups)
    prior_items = label_items(train_atoms, train_prior, model.dtype, model.device)
    prior_valid = label_items(valid_atoms, valid_prior, model.dtype, model.device)
    weights = LossWeights(energy=lambda_energy, forces=lambda_forces, kd=0.0)

    phase1 = _fit(model, [*adapt_groups, "prior_head"], prior_items, prior_valid, head="prior", weights=weights, epochs=prior_epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    reference_groups = [g for g in model.base.parameter_groups() if g not in adapt_groups]
    ref_items = items_from_records(train_rec, model.dtype, model.device, offsets=True)
    ref_valid = items_from_records(valid_rec, model.dtype, model.device, offsets=False)
    ref_weights = LossWeights(energy=lambda_energy, forces=lambda_forces, kd=lambda_kd)
    phase2 = _fit(model, reference_groups, ref_items, ref_valid, head="reference", weights=ref_weights, epochs=reference_epochs, batch_size=batch_size, lr=lr, seed=seed + 1, progress=progress)

    test_items = items_from_records(test_rec, model.dtype, model.device, offsets=False)
    metrics = {"reference_test": evaluate_items(model, test_items), "reference_valid": evaluate_items(model, ref_valid), "prior_label_time_s": prior_label_s}
    with model.using("prior"):
        metrics["prior_valid"] = evaluate_items(model, prior_valid)
    history = {"prior_phase": phase1.rows, "reference_phase": phase2.rows}
    result = TTTResult(
        model=model,
        history=history,
        metrics=metrics,
        teacher=store.teacher,
        training_data_sha256=store.content_sha256(),
        config=config,
        check_atoms=train_rec[0].atoms.copy(),
        wall_time_s=time.perf_counter() - started,
    )
    if out_dir is not None:
        save_ttt_student(result, out_dir)
        write_json(Path(out_dir) / "ttt-history.json", {"history": history, "metrics": metrics, "config": config})
    log.info("two-head student trained in %.1f s: %s", result.wall_time_s, metrics)
    return result


def save_ttt_student(result: TTTResult, folder) -> Path:
    """The student (``student.json`` + ``student.pt``) and its prior head, in one folder."""
    from ..artifacts import sha256_file
    from ..models.student import WEIGHTS, save_student

    model = result.model
    save_student(model.base, folder, teacher=result.teacher, training_data_sha256=result.training_data_sha256, metrics=result.metrics, config=result.config, check_atoms=result.check_atoms)
    digest = sha256_file(Path(folder) / WEIGHTS)
    for adapter in (model.base, model):  # bind the head to the weights as saved
        adapter.sha256, adapter._model_id = digest, f"student:{digest[:16]}"
    save_head(model, folder)
    return Path(folder)


def fit_prior_head(
    adapter,
    structures,
    prior,
    *,
    columns: Sequence[int] | None = None,
    adapt_groups: Sequence[str] = DEFAULT_ADAPT_GROUPS,
    hidden: int = 32,
    epochs: int = 200,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool | None = None,
) -> TwoHeadModel:
    """EXPERIMENTAL: a prior head on a foundation model's frozen features.

    The backbone is not retrained, so the representation was never shaped by the
    prior; test-time training through such a head may not help (the paper's
    caveat). ``columns``: descriptor columns the head reads (default: the first
    interaction's for MACE-family models, all of them otherwise).
    """
    warnings.warn("a prior head fitted on a frozen foundation model is experimental: its backbone was never trained with the prior", UserWarning, stacklevel=2)
    structures = list(structures)
    labels = prior_labels(structures, prior, progress=progress)
    if columns is None:
        columns = first_layer_columns(adapter) if hasattr(adapter.module, "products") else list(range(invariant_width(adapter, structures[0])))
    e0, scale = _prior_stats(structures, labels)
    model = TwoHeadModel(adapter, PriorHead(columns, hidden=hidden, e0=e0, scale=scale, seed=seed), prior=prior_spec(prior), adapt_groups=adapt_groups, experimental=True)
    items = label_items(structures, labels, model.dtype, model.device)
    weights = LossWeights(energy=1.0, forces=100.0, kd=0.0)
    with trainable(model, ["prior_head"]) as params:
        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            loss = prior_loss(model, items, weights, train=True)[0]
            loss.backward()
            optimizer.step()
    return model
