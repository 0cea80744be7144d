"""Few-shot fine-tuning (mlff_calc.finetune): training, frozen groups, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from helpers import require_backend, shared_path

from mlff_calc.errors import ArtifactError
from mlff_calc.softening import DFTDataset, DFTStructure


def _fresh(family, mace_small_path=None):
    if family == "chgnet":
        from mlff_calc.models.chgnet import CHGNetAdapter

        return CHGNetAdapter.load(device="cpu")
    if family == "m3gnet":
        from mlff_calc.models.m3gnet import M3GNetAdapter

        require_backend("matgl", "m3gnet")
        return M3GNetAdapter.load(shared_path("models", "M3GNet-MP-2021.2.8-PES"), device="cpu")
    from mlff_calc.models.mace import MACEAdapter

    return MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")


def _stiff_data(adapter, n=2, scale=1.4, seed=0) -> DFTDataset:
    """Small rattled NaCl cells whose "DFT" forces are ``scale`` x the model's (a softened model)."""
    structures = []
    for k in range(n):
        atoms = bulk("NaCl", "rocksalt", 5.64, cubic=True)
        atoms.rattle(0.05, seed=seed + k)
        res = adapter.evaluate([atoms], ("energy", "forces"))[0]
        structures.append(DFTStructure(atoms, scale * res["forces"], energy=float(res["energy"]), label=f"nacl-{k}"))
    return DFTDataset(structures, "synthetic stiffened NaCl")


def _snapshot(adapter):
    return {n: p.detach().clone() for n, p in adapter.module.named_parameters()}


def _readout_names(adapter):
    ids = {id(p) for p in adapter.parameter_groups()["readout"]}
    return {n for n, p in adapter.module.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("family", ["chgnet", "m3gnet", "mace"])
def test_readout_finetune_lowers_loss_and_freezes_the_rest(family, request, tmp_path):
    from mlff_calc.finetune import finetune

    adapter = _fresh(family, request.getfixturevalue("mace_small_path") if family == "mace" else None)
    data = _stiff_data(adapter)
    before = _snapshot(adapter)
    flags = [p.requires_grad for p in adapter.module.parameters()]
    result = finetune(adapter, data, trainable="readout", epochs=3, lr=2e-3, progress=False, out_dir=tmp_path / "ft")
    after = _snapshot(adapter)
    readout = _readout_names(adapter)
    assert readout and set(result.parameter_names) == readout
    for name in before:
        if name in readout:
            continue
        assert torch.equal(before[name], after[name]), f"{name} changed with trainable='readout'"
    assert any(not torch.equal(before[n], after[n]) for n in readout)
    assert result.metrics["after"]["train"]["loss"] < result.metrics["before"]["train"]["loss"]
    assert [p.requires_grad for p in adapter.module.parameters()] == flags, "requires_grad flags are restored"
    # the error log: one row per epoch, one column per training atom, all finite
    errors = result.error_log["errors"]
    assert errors.shape == (len(result.history), sum(len(s.atoms) for s in data.structures))
    assert np.isfinite(errors).all()
    assert (tmp_path / "ft" / "error_log.npz").is_file()
    assert adapter.model_id.startswith(result.base["model_id"] + "+ft:")


def test_all_parameters_lowers_loss():
    from mlff_calc.finetune import finetune

    adapter = _fresh("chgnet")
    data = _stiff_data(adapter, n=1)
    before = _snapshot(adapter)
    result = finetune(adapter, data, trainable="all", epochs=3, lr=5e-4, progress=False)
    assert result.metrics["after"]["train"]["loss"] < result.metrics["before"]["train"]["loss"]
    changed = [n for n, p in adapter.module.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) > len(_readout_names(adapter))


@pytest.mark.parametrize("family", ["chgnet", "mace"])
def test_save_load_round_trip(family, request, tmp_path):
    import mlff_calc
    from mlff_calc.finetune import finetune, load_finetuned

    adapter = _fresh(family, request.getfixturevalue("mace_small_path") if family == "mace" else None)
    data = _stiff_data(adapter, n=1)
    folder = tmp_path / "ft"
    finetune(adapter, data, trainable="readout", epochs=2, lr=2e-3, progress=False, out_dir=folder)
    assert sorted(p.name for p in folder.iterdir()) == ["error_log.npz", "finetune.json", "weights.pt"]
    saved = torch.load(folder / "weights.pt", weights_only=True)
    assert set(saved) == _readout_names(adapter)
    probe = bulk("NaCl", "rocksalt", 5.7, cubic=True)
    probe.rattle(0.03, seed=7)
    want = adapter.evaluate([probe], ("energy", "forces", "stress"))[0]
    dtype = "float64" if family == "mace" else None
    loaded = load_finetuned(folder, device="cpu", dtype=dtype)
    calc = mlff_calc.load(folder, device="cpu", dtype=dtype)
    for got in (loaded.evaluate([probe], ("energy", "forces", "stress"))[0], calc.evaluate([probe], ("energy", "forces", "stress"))[0]):
        for key in ("energy", "forces", "stress"):
            np.testing.assert_array_equal(got[key], want[key])
    assert loaded.model_id == adapter.model_id == calc.adapter.model_id


def test_corrupt_or_mismatched_artifact_is_refused(tmp_path):
    from mlff_calc.finetune import finetune, load_finetuned

    adapter = _fresh("chgnet")
    folder = tmp_path / "ft"
    finetune(adapter, _stiff_data(adapter, n=1), epochs=1, progress=False, out_dir=folder)
    # another base: the same model with one perturbed weight
    other = _fresh("chgnet")
    with torch.no_grad():
        next(iter(other.parameter_groups()["embedding"])).add_(1e-3)
    with pytest.raises(ArtifactError, match="sha256"):
        load_finetuned(folder, base_adapter=other)
    # flipped byte in the weights
    weights = folder / "weights.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError):
        load_finetuned(folder, device="cpu")
    assert weights.read_bytes() == bytes(raw)
    # edited manifest
    manifest = folder / "finetune.json"
    text = manifest.read_text().replace('"readout"', '"all"', 1)
    manifest.write_text(text)
    with pytest.raises(ArtifactError):
        load_finetuned(folder, device="cpu")
    assert manifest.read_text() == text


def test_bad_trainable_group_is_a_configuration_error(chgnet_adapter):
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.finetune import resolve_trainable

    with pytest.raises(ConfigurationError, match="readout"):
        resolve_trainable(chgnet_adapter, "heads")
