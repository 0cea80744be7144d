"""Training sets as tensors, and their evaluation: shared by distillation, test-time training and fine-tuning."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch
from ase import Atoms

from ..data.labels import LabelRecord, LabelStore
from ..errors import ConfigurationError
from ..neighbors import neighbor_list
from .loss import TrainItem, voigt_to_matrix

log = logging.getLogger(__name__)


def items_from_records(records: Sequence[LabelRecord], dtype, device, *, offsets: bool) -> list[TrainItem]:
    """Label-store records as TrainItems (``offsets``: positions in the epoch error log, for training items)."""
    items, offset = [], 0
    for r in records:
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)  # noqa: E731
        items.append(
            TrainItem(
                index=r.index,
                atoms=r.atoms,
                energy=t(r.energy),
                forces=t(r.forces),
                stress=None if r.stress is None else t(voigt_to_matrix(r.stress)),
                hessian_rows=r.hessian_rows,
                hessian=t(r.hessian),
                atom_offset=offset if offsets else 0,
            )
        )
        offset += len(r.atoms)
    return items


def items_from_dft(dataset, adapter) -> list[TrainItem]:
    """The structures of a DFTDataset as TrainItems in ``adapter``'s dtype and device (energy or stress may be None)."""
    items, offset = [], 0
    t = lambda x: torch.as_tensor(np.asarray(x, float), dtype=adapter.dtype, device=adapter.device)  # noqa: E731
    for k, s in enumerate(dataset.structures):
        stress = None if s.stress is None else t(voigt_to_matrix(np.asarray(s.stress, float).reshape(6)))
        items.append(TrainItem(k, s.atoms, None if s.energy is None else t(s.energy), t(s.forces), stress, atom_offset=offset))
        offset += len(s.atoms)
    return items


def fit_reference_energies(structures: Sequence[Atoms], energies: Sequence[float], elements: Sequence[int]) -> dict[int, float]:
    """Per-element energies (eV/atom) by least squares of ``energies`` on the structures' compositions."""
    counts = np.array([[np.sum(a.numbers == z) for z in elements] for a in structures], dtype=float)
    e0, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)
    return {int(z): float(e) for z, e in zip(elements, e0)}


def rms_force(forces: Sequence[np.ndarray]) -> float:
    """Root mean square of every force component (eV/Å): a natural scale for a model's output."""
    return float(np.sqrt(np.mean(np.concatenate([np.asarray(f).reshape(-1) for f in forces]) ** 2)))


def mean_neighbours(records: Sequence[LabelRecord], r_max: float) -> float:
    n_pairs = sum(len(neighbor_list(r.atoms, r_max)[0]) for r in records)
    return n_pairs / max(sum(len(r.atoms) for r in records), 1)


def evaluate_items(adapter, items: Sequence[TrainItem], batch_size: int = 8) -> dict[str, float]:
    """Energy/force/stress errors (per-atom energy MAE eV, force MAE / L2-MAE / RMSE eV/Å, stress MAE eV/Å³) of ``adapter`` against the labels of ``items``."""
    if not items:
        return {}
    e_err, f_err, f_norm, s_err = [], [], [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        stress = all(it.stress is not None for it in chunk)
        out = adapter.compute([it.atoms for it in chunk], forces=True, stress=stress, min_distance=None)
        with_e = [k for k, it in enumerate(chunk) if it.energy is not None]
        if with_e:
            idx = torch.tensor(with_e, device=out["energy"].device)
            e_err.append(((out["energy"][idx] - torch.stack([chunk[k].energy for k in with_e])).abs() / out["n_atoms"][idx]).double().cpu().numpy())
        diff = out["forces"] - torch.cat([it.forces for it in chunk])
        f_err.append(diff.abs().reshape(-1).double().cpu().numpy())
        f_norm.append(torch.linalg.vector_norm(diff, dim=-1).double().cpu().numpy())
        if stress:
            s_err.append((out["stress"] - torch.stack([it.stress for it in chunk])).abs().reshape(-1).double().cpu().numpy())
    metrics = {
        "energy_mae_per_atom": float(np.mean(np.concatenate(e_err))) if e_err else float("nan"),
        "force_mae": float(np.mean(np.concatenate(f_err))),
        "force_l2mae": float(np.mean(np.concatenate(f_norm))),
        "force_rmse": float(np.sqrt(np.mean(np.concatenate(f_err) ** 2))),
    }
    if s_err:
        metrics["stress_mae"] = float(np.mean(np.concatenate(s_err)))
    return metrics


def split_records(store: LabelStore, *, need_hessian: bool) -> tuple[list[LabelRecord], list[LabelRecord], list[LabelRecord]]:
    """``(train, valid, test)`` records of a complete store; valid falls back to train when empty."""
    records = store.records()
    train, valid, test = ([r for r in records if r.split == s] for s in ("train", "valid", "test"))
    if not train:
        raise ConfigurationError(f"label store {store.folder} has no 'train' structures")
    if not valid:
        log.warning("label store %s has no 'valid' structures; early stopping watches the training set", store.folder)
        valid = train
    if need_hessian and not any(len(r.hessian_rows) for r in train):
        raise ConfigurationError(f"lambda_kd > 0 but the label store {store.folder} holds no Hessian rows for training structures; label with n_rows > 0 or pass lambda_kd=0")
    return train, valid, test


def new_student(train: Sequence[LabelRecord], elements: Sequence[int], *, architecture: Mapping | None, dtype, device, seed: int):
    """A fresh student with E0s fitted to the teacher energies, scale = RMS teacher force and
    ``avg_num_neighbors`` measured on the training structures."""
    from ..models.student import DEFAULT_ARCHITECTURE, StudentAdapter

    arch = dict(architecture or {})
    r_max = float(arch.get("r_max", DEFAULT_ARCHITECTURE["r_max"]))
    e0 = fit_reference_energies([r.atoms for r in train], [r.energy for r in train], elements)
    scale = max(rms_force([r.forces for r in train]), 1e-3)
    return StudentAdapter.create(elements, device=device, dtype=dtype, architecture=arch, atomic_energies=e0, avg_num_neighbors=mean_neighbours(train, r_max), scale=scale, shift=0.0, seed=seed)
