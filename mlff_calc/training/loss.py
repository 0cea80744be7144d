"""The loss terms every trainer of mlff_calc uses: :class:`DistillationLoss` and :class:`FinetuneLoss`.

Distillation (Amin et al., ICLR 2025, arXiv 2501.09009; also TTT):

``L = λ_E · L_E + λ_F · L_F + λ_KD · L_KD (+ λ_S · L_S)``, paper defaults
λ_E = 5, λ_F = 100, λ_KD = 400 (λ_S = 0):

- ``L_E``: per-atom energy MAE, mean over structures of ``|E_s - E_t| / N``;
- ``L_F``: force L2-MAE, mean over atoms of ``||F_s - F_t||_2``;
- ``L_KD``: Hessian-row loss. Per structure, ``s`` rows (default 4) are drawn
  uniformly without replacement from the teacher rows stored in the label store
  (free DOF only). Each row, seen as an ``[N, 3]`` array like a force field, is
  compared with the L2-MAE of ``L_F``: ``Σ_b mean_r Σ_j ||ΔH_{b,r,j}||_2 / Σ_b N_b``
  (the normalisation of the authors' code). Student rows come from
  vector-Jacobian products of the forces with ``create_graph=True``: one VJP per
  round ``r`` serves the whole batch, because the force Jacobian of a batch is
  block-diagonal over structures (``row_method="vjp"``), or from central finite
  differences of the student forces with step ``fd_step_A`` (default 1e-4 Å),
  all displaced copies in one batch (``row_method="fd"``);
- ``L_S``: stress MAE (eV/Å³) over the Voigt components of periodic structures.

Sign convention: forces are -∇E, stored rows are rows of ``H = d²E/dx²``, so a
student row is ``-dF_i/dx``.

Fine-tuning on DFT data (Deng et al. 2024), squared errors:
``w_E mean_k ((E_m,k - E_d,k) / n_k)² + w_F mean_i |F_m,i - F_d,i|²/3 + w_S mean_j (σ_m,j - σ_d,j)²``
with energies per atom in eV, forces in eV/Å and stress in GPa; a term is used
for a structure only when it carries that label.

Both take :class:`TrainItem` batches and return ``(loss, parts, per-atom force-error norms)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase.units import GPa

from ..errors import ConfigurationError


@dataclass
class LossWeights:
    energy: float = 5.0
    forces: float = 100.0
    kd: float = 400.0
    stress: float = 0.0


@dataclass
class TrainItem:
    """One labelled structure as tensors, ready for the loss (energy eV, forces eV/Å, stress eV/Å³ 3x3)."""

    index: int  # global structure index (in the label store or dataset)
    atoms: object
    energy: torch.Tensor | None  # scalar; None when the structure has no energy label
    forces: torch.Tensor  # [N, 3]
    stress: torch.Tensor | None  # [3, 3]
    hessian_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # stored DOF indices [R]
    hessian: torch.Tensor | None = None  # [R, 3N]
    atom_offset: int = 0  # position of atom 0 in the epoch error log (training items only)
    extras: dict = field(default_factory=dict)


def voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def energy_per_atom_mae(pred: torch.Tensor, ref: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    return ((pred - ref).abs() / n_atoms.to(pred.dtype)).mean()


def force_error_norms(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of the force error of every atom, ``[N]``."""
    return torch.linalg.vector_norm(pred - ref, dim=-1)


class DistillationLoss:
    """Callable ``loss(adapter, items, train=True) -> (loss, parts, per_atom_force_error)``."""

    def __init__(self, weights: LossWeights | None = None, *, rows_per_structure: int = 4, row_method: str = "vjp", fd_step_A: float = 1e-4, seed: int = 0):
        if row_method not in ("vjp", "fd"):
            raise ConfigurationError(f"row_method must be 'vjp' or 'fd', not {row_method!r}")
        if rows_per_structure < 0 or not fd_step_A > 0:
            raise ConfigurationError(f"need rows_per_structure >= 0 and fd_step_A > 0; got {rows_per_structure}, {fd_step_A}")
        self.weights = weights or LossWeights()
        self.rows_per_structure = int(rows_per_structure)
        self.row_method = row_method
        self.fd_step_A = float(fd_step_A)
        self.rng = np.random.default_rng(seed)

    @property
    def uses_hessian(self) -> bool:
        return self.weights.kd > 0 and self.rows_per_structure > 0

    def __call__(self, adapter, items: Sequence[TrainItem], *, train: bool = True):
        w = self.weights
        atoms_list = [it.atoms for it in items]
        want_stress = w.stress > 0 and all(it.stress is not None for it in items)
        out = adapter.compute(atoms_list, forces=True, stress=want_stress, create_graph=train, min_distance=None)
        n_atoms = out["n_atoms"]
        ref_e = torch.stack([it.energy for it in items])
        ref_f = torch.cat([it.forces for it in items])
        l_e = energy_per_atom_mae(out["energy"], ref_e, n_atoms)
        err = force_error_norms(out["forces"], ref_f)
        l_f = err.mean()
        loss = w.energy * l_e + w.forces * l_f
        parts = {"energy_mae_per_atom": float(l_e.detach()), "force_l2mae": float(l_f.detach()), "force_mae": float((out["forces"] - ref_f).abs().mean().detach())}
        if want_stress:
            ref_s = torch.stack([it.stress for it in items])
            l_s = (out["stress"] - ref_s).abs().mean()
            loss = loss + w.stress * l_s
            parts["stress_mae"] = float(l_s.detach())
        if train and self.uses_hessian and any(len(it.hessian_rows) for it in items):
            l_kd = self.hessian_loss(adapter, items, out)
            loss = loss + w.kd * l_kd
            parts["hessian_l2mae"] = float(l_kd.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts, err.detach()

    # Hessian rows ----------------------------------------------------------------------------

    def sample_rows(self, items: Sequence[TrainItem]) -> list[np.ndarray]:
        """Positions (into each item's stored rows) of the rows used this step."""
        picks = []
        for it in items:
            n = len(it.hessian_rows)
            k = min(self.rows_per_structure, n)
            picks.append(np.sort(self.rng.choice(n, size=k, replace=False)) if k else np.zeros(0, dtype=int))
        return picks

    def hessian_loss(self, adapter, items: Sequence[TrainItem], out: dict) -> torch.Tensor:
        picks = self.sample_rows(items)
        rounds = max(len(p) for p in picks)
        counts = [len(it.forces) for it in items]
        offsets = np.cumsum([0, *counts])
        dofs = [[int(it.hessian_rows[p]) for p in pick] for it, pick in zip(items, picks)]
        if self.row_method == "vjp":
            student = self._rows_vjp(out, dofs, offsets, rounds)
        else:
            student = self._rows_fd(adapter, items, dofs, rounds)
        total = out["forces"].new_zeros(())
        for b, (it, pick) in enumerate(zip(items, picks)):
            if len(pick) == 0:
                continue
            teacher = it.hessian[torch.as_tensor(pick, device=it.hessian.device)]  # [r, 3N]
            rows = torch.stack([student[r][b] for r in range(len(pick))])  # [r, 3N]
            diff = (rows - teacher).reshape(len(pick), counts[b], 3)
            total = total + torch.linalg.vector_norm(diff, dim=-1).sum(dim=1).mean()
        return total / float(sum(counts))

    @staticmethod
    def _rows_vjp(out: dict, dofs, offsets, rounds) -> list[list[torch.Tensor | None]]:
        """Student rows ``H[i] = -dF_i/dx`` by one VJP per round for the whole batch."""
        flat = out["forces"].reshape(-1)
        positions = out["_positions"]
        result = []
        for r in range(rounds):
            v = torch.zeros_like(flat)
            for b, rows in enumerate(dofs):
                if r < len(rows):
                    v[3 * offsets[b] + rows[r]] = 1.0
            grads = torch.autograd.grad(flat, positions, grad_outputs=v, create_graph=True, retain_graph=True, allow_unused=True)
            g = torch.cat([torch.zeros_like(p) if x is None else x for x, p in zip(grads, positions)]).reshape(-1)
            result.append([-g[3 * offsets[b] : 3 * offsets[b + 1]] if r < len(rows) else None for b, rows in enumerate(dofs)])
        return result

    def _rows_fd(self, adapter, items, dofs, rounds) -> list[list[torch.Tensor | None]]:
        """Student rows ``-(F(x + h e_i) - F(x - h e_i)) / 2h``, differentiable in the weights."""
        h = self.fd_step_A
        displaced, where = [], []
        for r in range(rounds):
            for b, rows in enumerate(dofs):
                if r < len(rows):
                    for sign in (1.0, -1.0):
                        a = items[b].atoms.copy()
                        a.positions[rows[r] // 3, rows[r] % 3] += sign * h
                        displaced.append(a)
                    where.append((r, b))
        out = adapter.compute(displaced, forces=True, create_graph=True, min_distance=None)
        forces = torch.split(out["forces"], [len(a) for a in displaced])
        result = [[None] * len(items) for _ in range(rounds)]
        for k, (r, b) in enumerate(where):
            result[r][b] = -(forces[2 * k] - forces[2 * k + 1]).reshape(-1) / (2.0 * h)
        return result


class FinetuneLoss:
    """Squared errors with weights (see the module docstring): ``loss(adapter, items, train) -> (loss, parts, per-atom force-error norms)``."""

    def __init__(self, energy_weight=0.1, force_weight=100.0, stress_weight=0.1):
        for name, w in (("energy_weight", energy_weight), ("force_weight", force_weight), ("stress_weight", stress_weight)):
            if not (isinstance(w, (int, float)) and np.isfinite(w) and w >= 0):
                raise ConfigurationError(f"{name} must be a finite number >= 0, not {w!r}")
        if not (energy_weight or force_weight or stress_weight):
            raise ConfigurationError("all fine-tuning loss weights are zero")
        self.w_e, self.w_f, self.w_s = float(energy_weight), float(force_weight), float(stress_weight)

    def __call__(self, adapter, items: Sequence[TrainItem], *, train: bool = True):
        want_stress = self.w_s > 0 and any(it.stress is not None for it in items)
        out = adapter.compute([it.atoms for it in items], forces=True, stress=want_stress, create_graph=train, min_distance=None)
        ref_f = torch.cat([it.forces for it in items])
        diff = out["forces"] - ref_f
        err = force_error_norms(out["forces"], ref_f)
        l_f = (diff**2).mean()
        loss = self.w_f * l_f
        parts = {"force_mse": float(l_f.detach()), "force_mae": float(diff.abs().mean().detach())}
        with_e = [k for k, it in enumerate(items) if it.energy is not None]
        if self.w_e > 0 and with_e:
            idx = torch.tensor(with_e, device=adapter.device)
            e_pred = out["energy"][idx] / out["n_atoms"][idx].to(adapter.dtype)
            e_ref = torch.stack([items[k].energy for k in with_e]) / out["n_atoms"][idx].to(adapter.dtype)
            l_e = ((e_pred - e_ref) ** 2).mean()
            loss = loss + self.w_e * l_e
            parts["energy_mse_per_atom"] = float(l_e.detach())
        if want_stress:
            with_s = [k for k, it in enumerate(items) if it.stress is not None]
            pred = out["stress"][torch.tensor(with_s, device=adapter.device)]
            l_s = (((pred - torch.stack([items[k].stress for k in with_s])) / GPa) ** 2).mean()
            loss = loss + self.w_s * l_s
            parts["stress_mse_gpa"] = float(l_s.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts, err.detach()
