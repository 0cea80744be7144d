"""The training error log: per-epoch force-error norms of every training atom (LTAU's input, ``error_log.npz``).

Arrays: ``errors`` [epochs, atoms] (float32, eV/Å), ``epoch``, and the stable
atom ids ``structure_index``, ``atom_index``, ``numbers``, and ``binding`` (a JSON
string: format version, the trained model's :func:`model_identity` and the hash of the
training structures in log order), which :func:`check_binding` checks before the log
is used. The trainers of distillation, fine-tuning and TTT write it;
:func:`mlff_calc.ltau.build_ltau` reads it. Logs written during training carry no
weights hash (the weights still change); the trainer's last write, after training,
does.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch

from ..artifacts import write_npz
from ..errors import ArtifactError
from .structures import pack_structures, structures_sha256

FORMAT = "mlff_calc.error_log"
FORMAT_VERSION = 1


def binding(structures, identity: dict | None = None) -> dict:
    """What binds a log to its run: ``structures`` in log order and the trained model's ``identity`` (``models.identity.model_identity``; None while training)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": dict(identity) if identity is not None else None,
        "training_structures_sha256": structures_sha256(pack_structures(list(structures))),
    }


def write_error_log(path, arrays: dict, *, structures, identity: dict | None = None) -> None:
    """Write ``arrays`` (errors and atom ids) with their :func:`binding`."""
    write_npz(path, **arrays, binding=np.array(json.dumps(binding(structures, identity))))


def check_binding(arrays: dict, path, *, weights_sha256: str, structures) -> None:
    """ArtifactError unless the log at ``path`` was written, after training, for the weights hashed ``weights_sha256`` on ``structures`` (in log order)."""

    try:
        recorded = json.loads(str(arrays["binding"]))
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"error log {path} records no model or training data (an older or hand-made log); train again to write a bound log") from exc
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT or recorded.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"error log {path} has binding {recorded!r}; this mlff_calc reads {FORMAT} version {FORMAT_VERSION}")
    if recorded.get("model") is None:
        raise ArtifactError(f"error log {path} is from a training run that did not finish (no final weights hash); train again")
    model, mine = recorded["model"], weights_sha256
    if not isinstance(model, dict) or model.get("sha256") != mine:  # the weights decide: a student's model_id depends on how it is loaded
        got = model.get("sha256") if isinstance(model, dict) else model
        raise ArtifactError(f"error log {path} was written by a run whose weights have sha256 {str(got)[:12]}..., not this model's {mine[:12]}...; it belongs to another run")
    if recorded.get("training_structures_sha256") != structures_sha256(pack_structures(list(structures))):
        raise ArtifactError(f"error log {path} was written for other training structures than the ones given (their hash differs); it belongs to another run")


class ErrorLog:
    """Per-epoch force-error norms of every training atom, with stable ids; ``items`` have ``index``, ``atoms``, ``forces`` and ``atom_offset``."""

    def __init__(self, items: Sequence):
        self.structures = [it.atoms for it in items]
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

    def write(self, path, identity: dict | None = None) -> None:
        """Write the log; give the trained model's ``identity`` once training is over to bind it to its weights."""
        write_error_log(path, self.arrays(), structures=self.structures, identity=identity)
