"""The fine-tuned model artifact: a base model plus the trained parameters (written by :mod:`mlff_calc.finetune`).

A folder with ``finetune.json`` (format ``mlff_calc.finetune`` v1: base model
id, source and weights sha256, trainable groups, data hash, metrics, a check
energy) and ``weights.pt``: ONLY the trained parameters, a state_dict of tensors
(read back with ``torch.load(weights_only=True)``). :func:`load_finetuned` (and
``mlff_calc.load(folder)``) loads the base model by its id (falling back to its
recorded source path), refuses a base whose weights hash differs from the
recorded one with ArtifactError, and applies the weights.

The fine-tuned adapter gets a new ``model_id`` ``"<base id>+ft:<12 hex>"`` and
``sha256`` (the content hash of the trained parameters), so softening fits and
other artifacts bound to the base model refuse it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from ase import Atoms

from .._version import __version__
from ..artifacts import check_manifest, read_json, write_json
from ..errors import ArtifactError, ConfigurationError
from .family import Family, folder_with, register
from .identity import state_sha256, weights_sha256
from .weights_file import read_weights, write_weights

log = logging.getLogger(__name__)

FORMAT = "mlff_calc.finetune"
FORMAT_VERSION = 1
MANIFEST = "finetune.json"
WEIGHTS = "weights.pt"
UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "GPa", "loss": "weighted mean squared errors"}


def _mark(adapter, base: dict, state: dict[str, torch.Tensor], source: str | None) -> None:
    """Give the fine-tuned adapter its own identity."""
    digest = state_sha256(state)
    adapter._model_id = f"{base['model_id']}+ft:{digest[:12]}"
    adapter.sha256 = digest
    adapter.source = source
    adapter.finetune_info = {"base": base, "weights_sha256": digest}


def _atoms_dict(atoms: Atoms) -> dict:
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}


def _atoms_from(d: dict) -> Atoms:
    return Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])


# --------------------------------------------------------------------------- saving / loading


def save_finetuned(result, folder) -> Path:
    """Write a :class:`~mlff_calc.finetune.FinetuneResult`'s ``weights.pt`` (the trained parameters only) and ``finetune.json`` atomically into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = result.adapter
    named = dict(adapter.module.named_parameters())
    state = {name: named[name] for name in result.parameter_names}
    weights = write_weights(folder, WEIGHTS, state)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlff_calc_version": __version__,
        "base": result.base,
        "model_id": adapter.model_id,
        "trainable": result.trainable,
        "parameters": {name: list(t.shape) for name, t in state.items()},
        "weights": weights,
        "data_sha256": result.data_sha256,
        "metrics": result.metrics,
        "config": result.config,
        "check": result.check,
        "units": UNITS,
        "history": result.history,
    }
    write_json(folder / MANIFEST, manifest)
    adapter.source = str(folder)
    log.info("saved fine-tuned %s to %s (%d tensors)", adapter.model_id, folder, len(state))
    return folder


def read_manifest(folder) -> dict:
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST, kind="fine-tune manifest")
    check_manifest(manifest, fmt=FORMAT, versions=(FORMAT_VERSION,), path=folder / MANIFEST)
    for key, kind in (("base", dict), ("weights", dict), ("trainable", list), ("parameters", dict), ("check", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"fine-tune manifest {folder / MANIFEST}: field {key!r} is missing or not a {kind.__name__}")
    if not isinstance(manifest["base"].get("model_id"), str) or not isinstance(manifest["base"].get("weights_sha256"), str):
        raise ArtifactError(f"fine-tune manifest {folder / MANIFEST}: the base model id or sha256 is missing")
    return manifest


def load_finetuned(folder, *, device="auto", dtype=None, base_adapter=None, load_base=None):
    """A fine-tuned adapter from a folder written by :func:`save_finetuned`.

    The base model is given as ``base_adapter`` (a freshly loaded, unmodified
    base) or loaded by ``load_base(model_id, source, family, device=, dtype=)``
    (the registry's :func:`~mlff_calc.models.registry.load_base_model`: its recorded
    id, else its source path; ``mlff_calc.finetune.load_finetuned`` passes it). A
    base whose weights hash differs from the recorded one raises ArtifactError.
    Nothing in the folder is modified.
    """
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    base, wmeta = manifest["base"], manifest["weights"]
    if not isinstance(wmeta.get("content_sha256"), str):
        raise ArtifactError(f"fine-tune manifest {folder / MANIFEST}: the weights' content hash is missing")
    state = read_weights(folder, wmeta, kind="fine-tuned", manifest_path=folder / MANIFEST)
    if base_adapter is None and load_base is None:
        raise ConfigurationError("load_finetuned needs base_adapter or load_base; mlff_calc.finetune.load_finetuned and mlff_calc.load(folder) pass one")
    adapter = base_adapter if base_adapter is not None else load_base(base["model_id"], base.get("source"), base.get("family"), device=device, dtype=dtype or base.get("dtype"))
    if getattr(adapter, "finetune_info", None) is not None:
        raise ArtifactError(f"{folder}: the given base adapter {adapter.model_id} is itself fine-tuned")
    if adapter.model_id != base["model_id"]:
        raise ArtifactError(f"{folder} was fine-tuned from '{base['model_id']}', not '{adapter.model_id}'")
    got = weights_sha256(adapter)
    if got != base["weights_sha256"]:
        raise ArtifactError(
            f"{folder} was fine-tuned from '{base['model_id']}' with weights sha256 {base['weights_sha256'][:12]}..., but the loaded base weights have {got[:12]}...; these weights do not belong to that base"
        )
    named = dict(adapter.module.named_parameters())
    for name, t in state.items():
        if name not in named or tuple(named[name].shape) != tuple(t.shape):
            raise ArtifactError(f"fine-tuned weights in {folder}: parameter {name!r} {tuple(t.shape)} does not exist in the base model with that shape")
    with torch.no_grad():
        for name, t in state.items():
            named[name].copy_(t.to(device=named[name].device, dtype=named[name].dtype))
    _mark(adapter, base, state, source=str(folder))
    check = manifest["check"]
    if check.get("dtype") == str(adapter.dtype).removeprefix("torch.") and "atoms" in check:
        atoms = _atoms_from(check["atoms"])
        energy = float(adapter.evaluate([atoms], ("energy",), min_distance=None)[0]["energy"])
        tol = 1e-5 * max(1.0, abs(check["energy"])) + 1e-4
        if abs(energy - check["energy"]) > tol:
            raise ArtifactError(f"fine-tuned model {folder} gives {energy:.6f} eV on its check structure, but {check['energy']:.6f} eV was recorded when it was saved")
    log.info("loaded fine-tuned %s from %s", adapter.model_id, folder)
    return adapter


class FinetunedModel:
    """Registry hook: ``FinetunedModel.load(folder, load_base=...)`` is :func:`load_finetuned`."""

    @classmethod
    def load(cls, path, *, device="auto", dtype=None, load_base=None, **_):
        return load_finetuned(path, device=device, dtype=dtype, load_base=load_base)


register(Family("finetune", FinetunedModel, folder_with(MANIFEST), "a fine-tuned model (finetune.json)", folder=True, wraps_base=True))
