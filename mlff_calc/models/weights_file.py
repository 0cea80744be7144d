"""The one weight-file artifact: a state_dict of tensors beside a JSON manifest, optionally bound to a base model.

Written by the student (:mod:`.student`), the fine-tuned model (:mod:`.finetuned`)
and test-time training (:mod:`.two_head`, :mod:`mlff_calc.ttt.layer`):

- the tensors go to ``<name>.pt`` with ``torch.save`` (CPU copies), atomically;
  they are read back with ``torch.load(weights_only=True)`` (``.safetensors``
  files are read too when the ``safetensors`` package is installed), so nothing
  is unpickled;
- the manifest's ``weights`` entry records ``file``, ``sha256`` (of the file) and
  ``content_sha256`` (:func:`~mlff_calc.models.identity.state_sha256` of the
  tensors), both checked before the tensors are used;
- a bound artifact records ``base_model`` (:func:`~mlff_calc.models.identity.model_identity`)
  and is refused on any other model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._version import __version__
from ..artifacts import atomic_path, check_manifest, read_json, sha256_file, write_json
from ..errors import ArtifactError
from .identity import state_sha256


def write_weights(folder, name: str, state: dict) -> dict:
    """Write ``state`` to ``folder/name`` atomically; return its manifest entry ``{file, sha256, content_sha256}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    path = folder / name
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return {"file": name, "sha256": sha256_file(path), "content_sha256": state_sha256(state)}


def read_weights(folder, entry, *, kind: str, manifest_path) -> dict[str, torch.Tensor]:
    """The tensors of a manifest's ``weights`` entry, after checking the entry, the file's sha256 and the content hash."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("file", "sha256")) or Path(entry["file"]).name != entry["file"]:
        raise ArtifactError(f"{kind} manifest {manifest_path} has an invalid 'weights' entry {entry!r}; it is corrupt")
    file = Path(folder) / entry["file"]
    if not file.is_file() or sha256_file(file) != entry["sha256"]:
        raise ArtifactError(f"{kind} weights {file} are missing or do not match the sha256 in {manifest_path}; the file was deleted, changed or is corrupt")
    state = _load_state_dict(file, kind)
    if entry.get("content_sha256") is not None and state_sha256(state) != entry["content_sha256"]:
        raise ArtifactError(f"{kind} weights {file} do not match the content hash in {manifest_path}")
    return state


def _load_state_dict(file: Path, kind: str) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ArtifactError(f"{file} is a safetensors file; install the 'safetensors' package to read it") from exc
        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only raises UnpicklingError, RuntimeError, EOFError...
        raise ArtifactError(f"{kind} weights {file} cannot be read as a state_dict ({type(exc).__name__}: {exc}); the file may be truncated or corrupt") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ArtifactError(f"{kind} weights {file} hold a {type(state).__name__}, not a state_dict of tensors")
    return state


def write_bound(folder, *, manifest_name: str, weights_name: str, state: dict, fmt: str, version: int, base_model: dict, **fields) -> Path:
    """Write ``state`` and a manifest binding it to ``base_model`` (a :func:`model_identity`) into ``folder``, atomically."""
    folder = Path(folder)
    weights = write_weights(folder, weights_name, state)
    manifest = {"format": fmt, "format_version": version, "mlff_calc_version": __version__, "base_model": base_model, **fields, "weights": weights}
    write_json(folder / manifest_name, manifest)
    return folder / manifest_name


def read_bound(folder, *, manifest_name: str, fmt: str, version: int, kind: str, base_model: dict, foreign: str) -> tuple[dict, dict]:
    """``(manifest, state)`` written by :func:`write_bound`, checked before use.

    Refused with ArtifactError: a corrupt or wrong-format manifest; a recorded
    ``base_model`` whose weights hash is not ``base_model``'s (a :func:`model_identity`;
    message ``foreign``, formatted with ``folder`` and the recorded ``model_id``);
    weights that are missing or differ from their hashes.
    """
    folder = Path(folder)
    path = folder / manifest_name
    manifest = read_json(path, kind=f"{kind} manifest")
    check_manifest(manifest, fmt=fmt, versions=(version,), path=path)
    bound = manifest.get("base_model") if isinstance(manifest.get("base_model"), dict) else {}
    if bound.get("sha256") != base_model["sha256"]:
        raise ArtifactError(foreign.format(folder=folder, model_id=bound.get("model_id")))
    return manifest, read_weights(folder, manifest.get("weights"), kind=kind, manifest_path=path)
