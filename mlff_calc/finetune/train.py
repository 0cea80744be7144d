"""Few-shot fine-tuning of a model adapter on DFT data (Deng et al. 2024, arXiv 2405.07105, §fine-tuning).

:func:`finetune` trains a CHGNet, M3GNet or MACE adapter *in place* on a handful
(1–100) of DFT-labelled structures (a :class:`~mlff_calc.softening.DFTDataset`):

- ``trainable="readout"``: only the adapter's ``"readout"`` parameter group is
  optimised; every other parameter stays bitwise identical. ``"all"``: every
  parameter of the module that upstream leaves trainable (``requires_grad``; CHGNet's
  fitted per-element AtomRef stays frozen). A list of group names picks groups explicitly.
- loss (squared errors, the paper's weights by default, :data:`PAPER_WEIGHTS`):
  ``w_E mean_k ((E_m,k - E_d,k) / n_k)² + w_F mean_i |F_m,i - F_d,i|²/3 + w_S mean_j (σ_m,j - σ_d,j)²``
  with energies per atom in eV, forces in eV/Å and stress in GPa (3x3, ASE sign).
  A term is used for a structure only when it carries that DFT label.
  Forces are the *absolute* DFT forces of each structure (what the paper fine-tunes
  on); no residual-force subtraction is done here.
- Adam (the generic :class:`~mlff_calc.training.Trainer`, AdamW with weight decay 0)
  with a cosine schedule, no EMA by default; the weights of the epoch with the
  lowest validation loss are restored at the end (``valid=None`` validates on
  the training set).
- the module is kept in eval mode (dropout off) during training: the loss is the
  deterministic prediction the calculator gives.
- every epoch the Euclidean force-error norm of every training atom is logged in
  the trainer's error-log format (:class:`mlff_calc.data.error_log.ErrorLog`,
  ``error_log.npz`` in ``out_dir``).

:func:`save_finetuned` and :func:`load_finetuned` (the artifact, in
:mod:`mlff_calc.models.finetuned`) write and read the fine-tuned model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigurationError
from ..models.finetuned import FORMAT, FORMAT_VERSION, MANIFEST, UNITS, WEIGHTS, _atoms_dict, _mark, save_finetuned  # noqa: F401 (re-exported)
from ..models.identity import model_identity, weights_sha256
from ..training.items import evaluate_items, items_from_dft
from ..training.loss import FinetuneLoss

log = logging.getLogger(__name__)

ERROR_LOG = "error_log.npz"
#: the loss weights of Deng et al. 2024 (energy per atom / force / stress)
PAPER_WEIGHTS = {"energy_weight": 0.1, "force_weight": 100.0, "stress_weight": 0.1}


# --------------------------------------------------------------------------- data


def dataset_sha256(dataset) -> str:
    """Hash of the structures and DFT labels of a DFTDataset."""
    digest = hashlib.sha256()
    for s in dataset.structures:
        for arr in (s.atoms.numbers, s.atoms.positions, s.atoms.cell.array, s.atoms.pbc, s.forces):
            digest.update(np.ascontiguousarray(np.asarray(arr, dtype=float)).tobytes())
        digest.update(repr(None if s.energy is None else float(s.energy)).encode())
        digest.update(b"none" if s.stress is None else np.asarray(s.stress, float).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- parameters


def _param_names(adapter) -> dict[int, str]:
    return {id(p): name for name, p in adapter.module.named_parameters()}


def resolve_trainable(adapter, trainable) -> tuple[list[str], dict[str, torch.nn.Parameter]]:
    """(group names, {parameter name: parameter}) that ``trainable`` selects."""
    groups = adapter.parameter_groups()
    if trainable == "all":
        names = ["all"]
        # parameters the upstream package keeps frozen (e.g. CHGNet's fitted AtomRef) stay frozen
        params = {n: p for n, p in adapter.module.named_parameters() if p.requires_grad}
    else:
        names = [trainable] if isinstance(trainable, str) else list(trainable)
        unknown = [g for g in names if g not in groups]
        if unknown or not names:
            raise ConfigurationError(f"trainable must be 'all', 'readout' or a list of parameter groups of {adapter.model_id} ({', '.join(groups)}); unknown: {unknown}")
        lookup = _param_names(adapter)
        params = {}
        for g in names:
            for p in groups[g]:
                if id(p) not in lookup:
                    raise ConfigurationError(f"parameter group {g!r} of {adapter.model_id} holds a parameter outside the module")
                params[lookup[id(p)]] = p
    if not params:
        raise ConfigurationError(f"trainable={trainable!r} selects no parameters of {adapter.model_id}")
    return names, params


class _EvalModule(torch.nn.Module):
    """Wraps the adapter's module so the trainer's ``train()`` does not switch dropout on."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def train(self, mode: bool = True):
        self.training = mode
        return self


def evaluate_dataset(adapter, dataset, loss: FinetuneLoss | None = None, batch_size: int = 4) -> dict[str, float]:
    """Weighted loss and force MAE / RMSE (eV/Å) of ``adapter`` on ``dataset`` (no gradients kept)."""
    loss = loss or FinetuneLoss(**PAPER_WEIGHTS)
    items = items_from_dft(dataset, adapter)
    total = 0.0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        total += loss(adapter, chunk, train=False)[1]["loss"] * len(chunk)
    metrics = evaluate_items(adapter, items, batch_size=batch_size)
    return {"loss": total / len(items), "force_mae": metrics["force_mae"], "force_rmse": metrics["force_rmse"]}


# --------------------------------------------------------------------------- training


@dataclass
class FinetuneResult:
    """The fine-tuned adapter (the one passed in, trained in place) and what it was trained on."""

    adapter: object
    trainable: list[str]
    parameter_names: list[str]
    base: dict
    history: list[dict]
    metrics: dict
    config: dict
    data_sha256: str
    error_log: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)


def finetune(
    adapter,
    train,
    valid=None,
    *,
    trainable="readout",
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 1,
    energy_weight: float = PAPER_WEIGHTS["energy_weight"],
    force_weight: float = PAPER_WEIGHTS["force_weight"],
    stress_weight: float = PAPER_WEIGHTS["stress_weight"],
    min_lr_ratio: float = 0.01,
    ema_decay: float | None = None,
    patience: int | None = None,
    grad_clip: float | None = 10.0,
    seed: int = 0,
    out_dir=None,
    progress: bool | None = None,
) -> FinetuneResult:
    """Fine-tune ``adapter`` in place on ``train`` (a DFTDataset of 1–100 structures); see the module docstring.

    ``valid``: a DFTDataset for checkpoint selection (default: ``train``).
    ``patience``: early stopping after that many epochs without improvement (default: off).
    With ``out_dir`` the fine-tuned model is saved there (:func:`save_finetuned`) with
    ``error_log.npz`` (rewritten every epoch).
    """
    from ..data.error_log import ErrorLog
    from ..training.trainer import Trainer, TrainerConfig, only_trainable, shuffled_batches

    if getattr(adapter, "finetune_info", None) is not None:
        raise ConfigurationError(f"{adapter.model_id} is already fine-tuned; fine-tune its base model instead (pass both datasets)")
    if len(train) == 0:
        raise ConfigurationError("the fine-tuning set holds no structures")
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, not {batch_size}")
    if valid is None:
        log.warning("fine-tuning without a validation set: the checkpoint is chosen on the training loss")
        valid = train
    started = time.perf_counter()
    base = {
        "model_id": adapter.model_id,
        "family": adapter.family,
        "source": adapter.source,
        "sha256": adapter.sha256,
        "weights_sha256": weights_sha256(adapter),
        "dtype": str(adapter.dtype).removeprefix("torch."),
    }
    groups, params = resolve_trainable(adapter, trainable)
    loss_fn = FinetuneLoss(energy_weight, force_weight, stress_weight)
    train_items = items_from_dft(train, adapter)
    error_log = ErrorLog(train_items)
    before = {"train": evaluate_dataset(adapter, train, loss_fn), "valid": evaluate_dataset(adapter, valid, loss_fn)}
    config = {
        "trainable": trainable if isinstance(trainable, str) else list(trainable),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": "Adam",
        "schedule": "cosine",
        "min_lr_ratio": min_lr_ratio,
        "ema_decay": ema_decay,
        "patience": patience,
        "grad_clip": grad_clip,
        "seed": seed,
        "energy_weight": energy_weight,
        "force_weight": force_weight,
        "stress_weight": stress_weight,
        "n_train": len(train),
        "n_valid": len(valid),
        "train_source": train.source,
        "valid_source": valid.source,
        "forces": "absolute DFT forces (no residual-force subtraction)",
    }
    out_dir = Path(out_dir) if out_dir is not None else None
    order = np.random.default_rng(seed)

    batches = shuffled_batches(train_items, batch_size, order)

    def step(batch):
        loss, parts, err = loss_fn(adapter, batch, train=True)
        error_log.record(batch, err)
        return loss, parts

    def validate():
        m = evaluate_dataset(adapter, valid, loss_fn)
        return {f"val_{k}": v for k, v in m.items()}

    def on_epoch_end(epoch, row):
        error_log.end_epoch()
        if out_dir is not None:
            error_log.write(out_dir / ERROR_LOG)

    trainer_config = TrainerConfig(
        epochs=epochs,
        lr=lr,
        weight_decay=0.0,
        schedule="cosine",
        min_lr_ratio=min_lr_ratio,
        ema_decay=ema_decay,
        patience=patience or epochs + 1,
        grad_clip=grad_clip,
        monitor="val_loss",
        progress=progress,
    )
    try:
        with only_trainable(adapter.module.parameters(), params.values()):
            trainer = Trainer(_EvalModule(adapter.module), trainer_config, params=list(params.values()))
            history = trainer.fit(step, batches, validate, on_epoch_end=on_epoch_end, steps_per_epoch=-(-len(train_items) // batch_size))
    finally:
        adapter.module.eval()
    after = {"train": evaluate_dataset(adapter, train, loss_fn), "valid": evaluate_dataset(adapter, valid, loss_fn)}
    metrics = {"before": before, "after": after, "best_epoch": history.best_epoch, "best_val_loss": history.best_value, "epochs_run": len(history.rows), "train_time_s": time.perf_counter() - started}
    state = {name: p.detach().cpu().clone() for name, p in params.items()}
    _mark(adapter, base, state, source=str(out_dir) if out_dir is not None else None)
    check_atoms = train.structures[0].atoms
    check = {"energy": float(adapter.evaluate([check_atoms], ("energy",), min_distance=None)[0]["energy"]), "dtype": str(adapter.dtype).removeprefix("torch."), "atoms": _atoms_dict(check_atoms)}
    result = FinetuneResult(adapter, groups, sorted(state), base, history.rows, metrics, config, dataset_sha256(train), error_log.arrays(), check)
    log.info(
        "fine-tuned %s (%s) on %d structures in %.1f s: force MAE train %.4f -> %.4f, valid %.4f -> %.4f eV/Å",
        base["model_id"],
        groups,
        len(train),
        metrics["train_time_s"],
        before["train"]["force_mae"],
        after["train"]["force_mae"],
        before["valid"]["force_mae"],
        after["valid"]["force_mae"],
    )
    if out_dir is not None:
        save_finetuned(result, out_dir)
        error_log.write(out_dir / ERROR_LOG, identity=model_identity(adapter))  # bound to the final weights
    return result
