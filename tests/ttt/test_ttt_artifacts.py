"""Two-head checkpoints and adapted weights: round trips, binding to the base model, corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import si8, si8_frames


def test_load_gives_a_two_head_model_recording_its_groups(ttt_folder):
    import mlff_calc
    from mlff_calc.ttt import TwoHeadModel

    calc = mlff_calc.load(ttt_folder[1], device="cpu")
    assert isinstance(calc.adapter, TwoHeadModel)
    manifest = json.loads((ttt_folder[1] / "prior_head.json").read_text())
    assert manifest["adapt_groups"] == ["embedding", "interaction_0"]
    assert manifest["prior"]["name"] == "lj"
    assert manifest["base_model"]["model_id"] == calc.adapter.model_id


def test_adapted_weights_round_trip(ttt_calc, ttt_folder, shifted, tmp_path):
    import mlff_calc
    from mlff_calc.layers.ttt import TTTLayer

    a = si8()
    a.rattle(0.05, seed=9)
    ttt_calc.adapt(shifted)
    want = ttt_calc.evaluate([a])[0]
    ttt_calc.layers[0].save(tmp_path / "adapted")
    fresh = mlff_calc.load(ttt_folder[1], device="cpu", layers=[TTTLayer(adapted=tmp_path / "adapted")])
    got = fresh.evaluate([a])[0]
    np.testing.assert_array_equal(got["forces"], want["forces"])
    assert fresh.layers[0].describe()["adapted"]


def test_adapted_weights_refused_on_another_model(ttt_calc, ttt_store, shifted, tmp_path):
    from ttt_helpers import ARCH, LJ

    import mlff_calc
    from mlff_calc.errors import ArtifactError
    from mlff_calc.layers.ttt import TTTLayer
    from mlff_calc.ttt import train_ttt_student

    ttt_calc.adapt(shifted)
    ttt_calc.layers[0].save(tmp_path / "adapted")
    other = tmp_path / "other"
    train_ttt_student(ttt_store, LJ, architecture=ARCH, dtype="float64", prior_epochs=1, reference_epochs=1, batch_size=3, seed=1, out_dir=other, progress=False)
    with pytest.raises(ArtifactError, match="belong to"):
        mlff_calc.load(other, device="cpu", layers=[TTTLayer(adapted=tmp_path / "adapted")])


def test_corrupted_adapted_weights_are_refused(ttt_calc, shifted, tmp_path):
    from mlff_calc.errors import ArtifactError

    ttt_calc.adapt(shifted)
    folder = ttt_calc.layers[0].save(tmp_path / "adapted")
    weights = folder / "ttt_adapted.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    ttt_calc.reset_layers()
    with pytest.raises(ArtifactError, match="sha256"):
        ttt_calc.layers[0].load(folder)
    assert not ttt_calc.layers[0].adapted


def test_prior_head_refused_on_other_weights(ttt_folder, mace_adapter):
    from mlff_calc.errors import ArtifactError
    from mlff_calc.ttt import load_head

    with pytest.raises(ArtifactError, match="was trained for"):
        load_head(mace_adapter, ttt_folder[1])


def test_experimental_head_on_a_foundation_model(mace_adapter):
    """A head on frozen MACE features warns, learns the prior, and leaves the backbone alone."""
    import torch
    from ttt_helpers import LJ

    from mlff_calc.distill.loss import LossWeights
    from mlff_calc.ttt import fit_prior_head
    from mlff_calc.ttt.adapt import label_items, prior_loss

    frames = si8_frames(4, seed=20)
    before = {n: p.detach().clone() for n, p in mace_adapter.module.named_parameters()}
    with pytest.warns(UserWarning, match="experimental"):
        model = fit_prior_head(mace_adapter, frames, LJ, epochs=30, lr=1e-2)
    assert model.experimental
    assert all(torch.equal(p, before[n]) for n, p in mace_adapter.module.named_parameters())
    from mlff_calc.ttt import prior_labels

    items = label_items(frames, prior_labels(frames, LJ, progress=False), model.dtype, model.device)
    fitted = float(prior_loss(model, items, LossWeights(1.0, 100.0, 0.0), train=False)[0])
    model.prior_head.mlp[-1].weight.data.zero_()
    untrained = float(prior_loss(model, items, LossWeights(1.0, 100.0, 0.0), train=False)[0])
    assert fitted < untrained


def test_experimental_ttt_on_chgnet():
    """The experimental path on a real foundation model: only the early groups move, reset is exact."""
    import warnings

    import torch
    from ttt_helpers import LJ

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ttt import TTTLayer
    from mlff_calc.models.chgnet import CHGNetAdapter
    from mlff_calc.ttt import fit_prior_head

    adapter = CHGNetAdapter.load(device="cpu")  # its own copy: adaptation moves weights
    frames = si8_frames(3, seed=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_prior_head(adapter, frames, LJ, epochs=10)
    calc = MLFFCalculator(model, layers=[TTTLayer(steps=3, batch_size=3, lr=1e-5, progress=False)])
    before = {n: p.detach().clone() for n, p in adapter.module.named_parameters()}
    energy = calc.evaluate(frames[:1])[0]["energy"]
    history = calc.adapt(frames)["ttt"]
    assert history["prior_loss_final"] < history["prior_loss_initial"]
    adapt = set(model.named_group_parameters(model.adapt_groups))
    changed = {n for n, p in adapter.module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= adapt
    calc.reset_layers()
    assert all(torch.equal(p, before[n]) for n, p in adapter.module.named_parameters())
    assert calc.evaluate(frames[:1])[0]["energy"] == energy
