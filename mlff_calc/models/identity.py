"""Model identity: the one weights hash and the one answer to "is this artifact for this model?".

:func:`weights_sha256` hashes the content of a model's parameters and buffers
(sorted by name, floating tensors cast to float32, so the dtype a model runs in
does not matter). It changes when weights change in memory (fine-tuning,
test-time training), unlike the hash of the file they were read from
(``adapter.sha256``, kept as provenance).
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import ArtifactError


def state_sha256(named: dict[str, torch.Tensor]) -> str:
    """Content hash of named tensors (sorted by name; floating tensors as float32)."""
    digest = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(adapter) -> str:
    """THE weights hash of a model adapter: :func:`state_sha256` of its module's state_dict."""
    return state_sha256(dict(adapter.module.state_dict()))


def model_identity(adapter) -> dict:
    """``{"model_id", "sha256"}``: what an artifact bound to a model records."""
    return {"model_id": adapter.model_id, "sha256": weights_sha256(adapter)}


def check_identity(adapter, recorded: dict, *, what: str) -> None:
    """Refuse (ArtifactError) when ``recorded`` (a :func:`model_identity`) is not ``adapter``'s; ``what`` names the artifact."""
    mine = model_identity(adapter)
    if not isinstance(recorded, dict) or recorded.get("model_id") != mine["model_id"]:
        got = recorded.get("model_id") if isinstance(recorded, dict) else recorded
        raise ArtifactError(f"{what} was made for model '{got}', not '{mine['model_id']}'")
    if recorded.get("sha256") != mine["sha256"]:
        raise ArtifactError(
            f"{what} was made for '{mine['model_id']}' with weights sha256 {str(recorded.get('sha256'))[:12]}..., but this model's weights have {mine['sha256'][:12]}...; it does not belong to these weights"
        )


def teacher_identity(calc) -> dict:
    """What makes two teachers the same: model id, weights hash and the layers on top."""
    adapter = calc.adapter
    return {**model_identity(adapter), "layers": [layer.describe() for layer in calc.layers], "dtype": str(adapter.dtype).removeprefix("torch.")}
