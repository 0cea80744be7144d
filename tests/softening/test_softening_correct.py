"""Per-element softening (ElementSofteningLayer) and correct(): physics against finite differences, fits, CV choice, artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import fd_forces, fd_stress, rattled_nacl


@pytest.fixture(scope="module")
def nacl_frames():
    return [rattled_nacl(amp=0.05, seed=s) for s in (2, 3, 4)]


def _layer(scales, **kw):
    from mlff_calc.softening.elements import ElementSofteningLayer

    return ElementSofteningLayer(scales, **kw)


def _calc(adapter, layers=()):
    from mlff_calc.calculator import MLFFCalculator

    return MLFFCalculator(adapter, layers=list(layers))


def _dataset(adapter, frames, scales):
    """DFT stand-in: the model corrected by known per-element scales."""
    from mlff_calc.softening import DFTDataset, DFTStructure

    truth = _calc(adapter, [_layer(scales)])
    results = truth.evaluate(frames, ("energy", "forces"))
    return DFTDataset([DFTStructure(a.copy(), r["forces"], label=f"f{k}") for k, (a, r) in enumerate(zip(frames, results))], "synthetic")


def test_forces_and_stress_are_gradients_of_the_corrected_energy(mace_adapter, nacl_frames):
    atoms = nacl_frames[0].copy()
    calc = _calc(mace_adapter, [_layer({"Na": 1.3, "Cl": 0.8})])
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    np.testing.assert_allclose(forces[:4], fd_forces(calc, atoms, indices=range(4)), atol=1e-6 * max(1.0, np.abs(forces).max()))
    np.testing.assert_allclose(stress, fd_stress(calc, atoms), atol=1e-7)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    raw = nacl_frames[0].copy()
    raw.calc = _calc(mace_adapter)
    assert np.abs(forces - raw.get_forces()).max() > 1e-3  # the correction does something


def test_hessian_of_the_corrected_energy(mace_adapter, nacl_frames):
    calc = _calc(mace_adapter, [_layer({"Na": 1.3, "Cl": 0.8})])
    rows = [0, 4]
    np.testing.assert_allclose(calc.get_hessian(nacl_frames[0], rows), calc.get_hessian(nacl_frames[0], rows, method="fd"), atol=1e-5)


def test_equal_scales_are_the_scalar_correction(mace_adapter, nacl_frames):
    from mlff_calc.layers.softening import SofteningLayer

    per_element = _calc(mace_adapter, [_layer({"Na": 1.2, "Cl": 1.2})]).evaluate(nacl_frames[:1], ("energy", "forces", "stress"))[0]
    scalar = _calc(mace_adapter, [SofteningLayer(1.2)]).evaluate(nacl_frames[:1], ("energy", "forces", "stress"))[0]
    assert per_element["energy"] == pytest.approx(scalar["energy"], abs=1e-9)
    np.testing.assert_allclose(per_element["forces"], scalar["forces"], atol=1e-12)
    np.testing.assert_allclose(per_element["stress"], scalar["stress"], atol=1e-12)


def test_per_element_forces_sum_to_the_forces(mace_adapter, nacl_frames):
    from mlff_calc.softening.elements import element_forces

    forces, parts = element_forces(mace_adapter, nacl_frames[0])
    assert sorted(parts) == [11, 17]
    np.testing.assert_allclose(sum(parts.values()), forces, atol=1e-12)
    np.testing.assert_allclose(forces, mace_adapter.evaluate(nacl_frames[:1])[0]["forces"], atol=1e-12)


def test_fit_recovers_known_scales(mace_adapter, nacl_frames):
    from mlff_calc.softening.elements import fit_element_scales

    dataset = _dataset(mace_adapter, nacl_frames, {"Na": 1.3, "Cl": 0.8})
    fit = fit_element_scales(_calc(mace_adapter), dataset, ridge=0.0)
    assert fit.scales["Na"] == pytest.approx(1.3, abs=1e-8)
    assert fit.scales["Cl"] == pytest.approx(0.8, abs=1e-8)
    assert fit.mae_corrected < 1e-9 < fit.mae
    pulled = fit_element_scales(_calc(mace_adapter), dataset, ridge=100.0)
    assert abs(pulled.scales["Na"] - pulled.c_global) < abs(fit.scales["Na"] - pulled.c_global)  # the ridge pulls toward c0


def test_auto_picks_per_element_when_softening_is_not_uniform(mace_adapter, nacl_frames, tmp_path):
    import mlff_calc
    from mlff_calc.softening.correct import correct, read_manifest

    dataset = _dataset(mace_adapter, nacl_frames, {"Na": 1.5, "Cl": 0.9})
    corrected = correct(_calc(mace_adapter), dataset, out=tmp_path / "corr")
    info = corrected.parameters["softening_correction"]
    assert info["method"] == "elements"
    assert info["cv_folds"].startswith("leave-one-structure-out")
    best = min(v for k, v in info["cv_mae"].items() if k.startswith("elements"))
    assert best < 0.1 * info["cv_mae"]["raw"] and best < 0.5 * info["cv_mae"]["scalar"]
    loaded = mlff_calc.load(tmp_path / "corr", device="cpu", dtype="float64")
    np.testing.assert_allclose(loaded.evaluate(nacl_frames[:1])[0]["forces"], corrected.evaluate(nacl_frames[:1])[0]["forces"], atol=1e-12)
    assert read_manifest(tmp_path / "corr")["data_sha256"] == info["data_sha256"]


def test_auto_falls_back_to_raw_when_nothing_beats_it(mace_adapter, nacl_frames):
    from mlff_calc.softening.correct import correct

    dataset = _dataset(mace_adapter, nacl_frames[:1], {"Na": 1.0, "Cl": 1.0})  # DFT = the model itself
    corrected = correct(_calc(mace_adapter), dataset)
    info = corrected.parameters["softening_correction"]
    assert info["method"] == "raw" and corrected.layers == []
    assert info["cv_folds"].startswith("4 slabs of atoms")


def test_artifact_is_checksummed_and_bound_to_the_model(mace_adapter, nacl_frames, tmp_path):
    import mlff_calc
    from mlff_calc.errors import ArtifactError
    from mlff_calc.softening.correct import correct

    dataset = _dataset(mace_adapter, nacl_frames, {"Na": 1.5, "Cl": 0.9})
    correct(_calc(mace_adapter), dataset, method="elements", out=tmp_path / "c")
    fit_path = tmp_path / "c" / "element-fit.json"
    data = json.loads(fit_path.read_text())
    data["scales"]["Na"] = 2.0
    fit_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="checksum"):
        mlff_calc.load(tmp_path / "c", device="cpu", dtype="float64")
    from mlff_calc.softening.elements import ElementFit

    correct(_calc(mace_adapter), dataset, method="elements", out=tmp_path / "d")
    fit = ElementFit.load(tmp_path / "d" / "element-fit.json")
    fit.model_id = "another-model"
    with pytest.raises(ArtifactError, match="another-model"):
        _calc(mace_adapter, [_layer(fit.by_number, fit=fit)])


def test_bad_arguments_are_refused(mace_adapter, nacl_frames):
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.softening.correct import correct

    with pytest.raises(ConfigurationError):
        _layer({"Xx": 1.0})
    with pytest.raises(ConfigurationError):
        _layer({"Na": -1.0})
    dataset = _dataset(mace_adapter, nacl_frames[:1], {"Na": 1.1})
    with pytest.raises(ConfigurationError, match="method"):
        correct(_calc(mace_adapter), dataset, method="magic")
    with pytest.raises(ConfigurationError, match="bare model"):
        correct(_calc(mace_adapter, [_layer({"Na": 1.1})]), dataset)


def test_chgnet_per_element_forces_match_finite_differences(chgnet_adapter):
    atoms = rattled_nacl(amp=0.05, seed=5)
    calc = _calc(chgnet_adapter, [_layer({"Na": 1.4, "Cl": 0.9})])
    atoms.calc = calc
    forces = atoms.get_forces()
    fd = fd_forces(calc, atoms, h=5e-3, indices=[0, 1])
    scale = np.abs(forces[:2]).max()
    np.testing.assert_allclose(forces[:2], fd, atol=2e-3 * scale + 2e-4)


def test_cli_correct_on_phonopy_data_and_reuse_as_model(tmp_path, monkeypatch):
    from helpers import shared_path

    from mlff_calc.cli import softening as cli_softening
    from mlff_calc.cli.main import main
    from mlff_calc.softening.correct import METHODS, read_manifest

    assert cli_softening.CORRECT_METHODS == METHODS
    folder = shared_path("data", "phonopy", "NaCl")
    if not folder.exists():
        pytest.skip("the NaCl phonopy data are at ../shared/data/phonopy/NaCl")
    monkeypatch.chdir(tmp_path)
    argv = ["softening", "correct", "--phonopy-disp", folder / "phonopy_disp.yaml", "--force-sets", folder / "FORCE_SETS", "--index", "0", "--out", "corr", "--device", "cpu"]
    assert main([str(a) for a in argv]) == 0
    manifest = read_manifest(tmp_path / "corr")
    assert manifest["n_structures"] == 1 and manifest["cv_folds"].startswith("4 slabs")
    assert manifest["candidate"] == min(manifest["cv_mae"], key=manifest["cv_mae"].get)
    assert main(["singlepoint", str(folder / "POSCAR-unitcell"), "--model", "corr", "--device", "cpu", "--out-dir", "sp"]) == 0
    assert main([str(a) for a in argv[:-6]] + ["--index", "7", "--out", "x", "--device", "cpu"]) == 2
