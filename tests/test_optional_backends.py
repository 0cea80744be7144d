"""A missing optional backend is a ModelLoadError naming the pip extra, never a bare ImportError."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mlff_calc.errors import ModelLoadError


def block(monkeypatch, name: str) -> None:
    """Make ``import name`` (and its submodules) fail, as when the package is not installed."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, name, None)


def matgl_folder(tmp_path):
    """A folder that passes every check before matgl is imported."""
    (tmp_path / "model.json").write_text(json.dumps({"@class": "Potential", "kwargs": {"calc_repuls": False}}))
    torch.save({}, tmp_path / "state.pt")
    torch.save({}, tmp_path / "model.pt")
    return tmp_path


def _m3gnet(tmp_path):
    from mlff_calc.models.m3gnet import M3GNetAdapter

    M3GNetAdapter.load(matgl_folder(tmp_path))


def _mace(tmp_path):
    from mlff_calc.models.mace import MACEAdapter

    (tmp_path / "x.model").write_bytes(b"not read")
    MACEAdapter.load(tmp_path / "x.model")


def _mace_build(tmp_path):
    from mlff_calc.models.mace_build import build_small_mace

    build_small_mace()


def _faiss(tmp_path):
    import numpy as np

    from mlff_calc.ltau import LTAUIndex

    LTAUIndex(np.random.default_rng(0).normal(size=(40, 3)), np.full(40, 14), kind="hnsw")


def _ray(tmp_path):
    from mlff_calc.executors.ray import RayExecutor

    RayExecutor(workers=1)._init()  # what start() does first


def _tblite(tmp_path):
    from mlff_calc.ttt.priors import prior_calculator

    prior_calculator("gfn2-xtb")


CASES = [("matgl", "m3gnet", _m3gnet), ("mace", "mace", _mace), ("mace", "mace", _mace_build), ("faiss", "ltau", _faiss), ("ray", "ray", _ray), ("tblite", "ttt", _tblite)]


@pytest.mark.parametrize("module,extra,use", CASES, ids=[f"{m}-{u.__name__.strip('_')}" for m, _, u in CASES])
def test_missing_backend_names_the_extra(monkeypatch, tmp_path, module, extra, use):
    block(monkeypatch, module)
    with pytest.raises(ModelLoadError, match=rf"pip install 'mlff_calc\[{extra}\]'"):
        use(tmp_path)
