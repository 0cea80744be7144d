"""Corruption tests for the test-time training artifacts: the prior head and adapted weights.

Both are a JSON manifest (checksummed, versioned, bound to the base weights' sha256)
plus a ``torch.save`` of tensors read with ``weights_only=True``. Truncated,
bit-flipped or emptied files, a wrong format or version, and the artifact of
another model raise ArtifactError; the folder's bytes never change.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mlff_calc.artifacts import sha256_file, stamp
from mlff_calc.errors import ArtifactError, MLFFError

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")

LJ = {"name": "lj", "params": {"sigma": 2.1, "epsilon": 0.4, "rc": 4.5}}


def frames():
    from helpers import si8_frames

    return si8_frames(3, seed=50)


def fresh_mace(path):
    from mlff_calc.models.mace import MACEAdapter

    return MACEAdapter.load(path, device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def saved(mace_small_path, tmp_path_factory):
    """A prior head and adapted weights for a private copy of the small MACE."""
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ttt import TTTLayer
    from mlff_calc.ttt import fit_prior_head, save_head

    folder = tmp_path_factory.mktemp("ttt-artifacts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_prior_head(fresh_mace(mace_small_path), frames(), LJ, epochs=5)
    save_head(model, folder / "head")
    calc = MLFFCalculator(model, layers=[TTTLayer(steps=2, batch_size=3, lr=1e-4, progress=False)])
    calc.adapt(frames())
    calc.layers[0].save(folder / "adapted")
    return folder


def folder_digest(folder: Path) -> dict:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def load_head_from(path, mace_small_path):
    from mlff_calc.ttt import load_head

    return load_head(fresh_mace(mace_small_path), path)


def load_adapted_from(path, mace_small_path, head_folder):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ttt import TTTLayer

    model = load_head_from(head_folder, mace_small_path)
    return MLFFCalculator(model, layers=[TTTLayer(adapted=path)])


def copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


CORRUPTIONS = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "bit flip": lambda b: b[: len(b) // 3] + bytes([b[len(b) // 3] ^ 0x10]) + b[len(b) // 3 + 1 :],
    "garbage": lambda b: b"\x80\x04not a checkpoint" * 10,
}


@pytest.mark.parametrize("kind", ["head", "adapted"])
@pytest.mark.parametrize("which", ["manifest", "weights"])
@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupted_files_are_refused_and_untouched(saved, mace_small_path, tmp_path, kind, which, how):
    folder = copy(saved / kind, tmp_path / kind)
    name = {"head": ("prior_head.json", "prior_head.pt"), "adapted": ("ttt_adapted.json", "ttt_adapted.pt")}[kind][which == "weights"]
    target = folder / name
    target.write_bytes(CORRUPTIONS[how](target.read_bytes()))
    before = folder_digest(folder)
    loader = (lambda p: load_head_from(p, mace_small_path)) if kind == "head" else (lambda p: load_adapted_from(p, mace_small_path, saved / "head"))
    with pytest.raises(ArtifactError):
        loader(folder)
    assert folder_digest(folder) == before


@pytest.mark.parametrize("kind,manifest,fmt", [("head", "prior_head.json", "mlff_calc.prior_head"), ("adapted", "ttt_adapted.json", "mlff_calc.ttt_adapted")])
@pytest.mark.parametrize("change", ["version", "format"])
def test_wrong_format_or_version(saved, mace_small_path, tmp_path, kind, manifest, fmt, change):
    folder = copy(saved / kind, tmp_path / kind)
    data = json.loads((folder / manifest).read_text())
    assert data["format"] == fmt
    if change == "version":
        data["format_version"] = 99
    else:
        data["format"] = "mlff_calc.student"
    (folder / manifest).write_text(json.dumps(stamp(data)))
    loader = (lambda p: load_head_from(p, mace_small_path)) if kind == "head" else (lambda p: load_adapted_from(p, mace_small_path, saved / "head"))
    with pytest.raises(ArtifactError):
        loader(folder)


def test_artifacts_of_another_model_are_refused(saved):
    import torch

    from mlff_calc.models.mace import MACEAdapter
    from mlff_calc.models.mace_build import build_small_mace
    from mlff_calc.ttt import load_head

    other = MACEAdapter(build_small_mace(), device="cpu", dtype="float64")
    with torch.no_grad():
        next(other.module.parameters()).add_(0.01)  # certainly other weights
    with pytest.raises(ArtifactError, match="was trained for"):
        load_head(other, saved / "head")


def test_nothing_is_unpickled(saved):
    """Both weight files load with weights_only=True (tensors only)."""
    import torch

    for f in ("head/prior_head.pt", "adapted/ttt_adapted.pt"):
        state = torch.load(saved / f, weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_loading_refusal_is_an_mlff_error(saved, mace_small_path, tmp_path):
    folder = copy(saved / "adapted", tmp_path / "adapted")
    (folder / "ttt_adapted.pt").unlink()
    with pytest.raises(MLFFError, match="missing or do not match"):
        load_adapted_from(folder, mace_small_path, saved / "head")
