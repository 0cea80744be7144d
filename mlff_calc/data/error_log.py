"""The training error log: per-epoch force-error norms of every training atom (LTAU's input, ``error_log.npz``).

Arrays: ``errors`` [epochs, atoms] (float32, eV/Å), ``epoch``, and the stable
atom ids ``structure_index``, ``atom_index``, ``numbers``. The trainers of
distillation, fine-tuning and TTT write it; :func:`mlff_calc.ltau.build_ltau` reads it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..artifacts import write_npz


class ErrorLog:
    """Per-epoch force-error norms of every training atom, with stable ids; ``items`` have ``index``, ``atoms``, ``forces`` and ``atom_offset``."""

    def __init__(self, items: Sequence):
        self.ids = {
            "structure_index": np.concatenate([np.full(len(it.forces), it.index, dtype=np.int64) for it in items]),
            "atom_index": np.concatenate([np.arange(len(it.forces), dtype=np.int64) for it in items]),
            "numbers": np.concatenate([it.atoms.numbers for it in items]).astype(np.int64),
        }
        self.current = np.full(len(self.ids["atom_index"]), np.nan, dtype=np.float32)
        self.epochs: list[np.ndarray] = []

    def record(self, batch: Sequence, err: torch.Tensor) -> None:
        err = err.detach().cpu().numpy().astype(np.float32)
        pos = 0
        for it in batch:
            n = len(it.forces)
            self.current[it.atom_offset : it.atom_offset + n] = err[pos : pos + n]
            pos += n

    def end_epoch(self) -> None:
        self.epochs.append(self.current.copy())

    def arrays(self) -> dict[str, np.ndarray]:
        errors = np.stack(self.epochs) if self.epochs else np.zeros((0, len(self.current)), np.float32)
        return {"errors": errors, "epoch": np.arange(len(self.epochs)), **self.ids}

    def write(self, path) -> None:
        write_npz(path, **self.arrays())
