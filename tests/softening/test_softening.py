"""Softening measurement, fit and correction layer (Deng et al. 2024): real numbers, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from helpers import rattled_nacl, shared_path

from mlff_calc.artifacts import stamp
from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import ArtifactError, ConfigurationError, InvalidStructureError
from mlff_calc.layers.softening import SofteningLayer
from mlff_calc.softening import (
    PAPER_WEIGHTS,
    DFTDataset,
    DFTStructure,
    SofteningFit,
    fit_scale,
    measure,
    read_dft_structures,
    read_phonopy_dataset,
)

C_TRUE = 1.27


@pytest.fixture(scope="module")
def calc(chgnet_adapter):
    return MLFFCalculator(chgnet_adapter)


def si8(seed: int) -> Atoms:
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def e_ref(adapter, atoms) -> float:
    refs = adapter.reference_energies()
    return sum(refs[int(z)] for z in atoms.numbers)


def synthetic(calc, atoms_list, c=C_TRUE, mode="reference") -> DFTDataset:
    """'DFT' labels that are the model's own, stiffened exactly by ``c`` (the model is softened by 1/c)."""
    results = calc.evaluate(atoms_list, ("energy", "forces", "stress"))
    structures = []
    for atoms, res in zip(atoms_list, results):
        base = e_ref(calc.adapter, atoms) if mode == "reference" else 0.0
        energy = base + c * (res["energy"] - base)
        structures.append(DFTStructure(atoms.copy(), c * res["forces"], energy, c * res["stress"]))
    return DFTDataset(structures, "synthetic")


@pytest.fixture(scope="module")
def si_data(calc):
    return synthetic(calc, [si8(seed) for seed in (1, 2, 3)])


@pytest.fixture(scope="module")
def si_fit(calc, si_data):
    return fit_scale(calc, si_data)


# -- (1) the fit recovers a known scale ---------------------------------------------


def test_fit_recovers_known_scale_from_forces(calc, si_data, si_fit):
    assert si_fit.c == pytest.approx(C_TRUE, abs=1e-6)
    assert si_fit.s == pytest.approx(1 / C_TRUE, abs=1e-6)
    assert si_fit.cmae < 1e-9 and si_fit.mae_corrected < 1e-9 and si_fit.mae > 1e-3
    assert si_fit.n_structures == 3 and si_fit.n_components == 72
    assert si_fit.model_id == calc.adapter.model_id and si_fit.chemical_system == "Si"


@pytest.mark.parametrize("mode", ["reference", "total"])
def test_fit_recovers_known_scale_with_paper_weights(calc, mode):
    data = synthetic(calc, [si8(seed) for seed in (4, 5)], mode=mode)
    fit = fit_scale(calc, data, mode=mode, **PAPER_WEIGHTS)
    assert fit.c == pytest.approx(C_TRUE, abs=1e-6)
    assert (fit.energy_weight, fit.force_weight, fit.stress_weight) == (0.1, 100.0, 0.1)
    assert fit.n_energies == 2 and fit.n_stresses == 2
    energy_only = fit_scale(calc, data, mode=mode, energy_weight=1.0, force_weight=0.0)
    assert energy_only.c == pytest.approx(C_TRUE, rel=1e-6)


def test_measure_reports_scale_mae_and_cmae(calc, si_data):
    report = measure(calc, si_data)
    assert len(report.structures) == 3 and report.pooled.n_components == 72
    for row in [*report.structures, report.pooled]:
        assert row.s == pytest.approx(1 / C_TRUE, abs=1e-6)
        assert row.s_intercept == pytest.approx(1 / C_TRUE, abs=1e-5)
        assert abs(row.intercept) < 1e-6 and row.cmae < 1e-9 and row.mae > 1e-3
    assert "pooled" in report.markdown()
    json.dumps(report.to_dict())


# -- (2) corrected forces are -∇E' ---------------------------------------------------


def _fd_check_adapter(request):
    try:
        import mlff_calc.models.mace  # noqa: F401

        return request.getfixturevalue("mace_adapter"), 1e-4, 1e-6
    except ImportError:
        return request.getfixturevalue("chgnet_adapter"), 5e-3, 1e-2


def test_corrected_forces_are_minus_gradient_of_corrected_energy(request):
    adapter, h, atol = _fd_check_adapter(request)
    corrected = MLFFCalculator(adapter, layers=[SofteningLayer(C_TRUE)])
    atoms = si8(7)
    rows = [(i, k) for i in range(2) for k in range(3)]
    displaced = []
    for i, k in rows:
        for sign in (1, -1):
            a = atoms.copy()
            a.positions[i, k] += sign * h
            displaced.append(a)
    results = corrected.evaluate([atoms, *displaced], ("energy", "forces"))
    energies = np.array([r["energy"] for r in results[1:]])
    fd = -(energies[0::2] - energies[1::2]) / (2 * h)
    analytic = np.array([results[0]["forces"][i, k] for i, k in rows])
    np.testing.assert_allclose(analytic, fd, atol=atol)


# -- (3) phonon frequencies scale by √c --------------------------------------------


def _frequencies(hessian: np.ndarray, masses: np.ndarray) -> np.ndarray:
    m = np.repeat(masses, 3)
    eig = np.linalg.eigvalsh(hessian / np.sqrt(np.outer(m, m)))
    return np.sort(np.sign(eig) * np.sqrt(np.abs(eig)))


def _fd_hessian(calc, atoms, h=1e-3) -> np.ndarray:
    displaced = []
    for row in range(3 * len(atoms)):
        for sign in (1, -1):
            a = atoms.copy()
            a.positions[row // 3, row % 3] += sign * h
            displaced.append(a)
    forces = [r["forces"].reshape(-1) for r in calc.evaluate(displaced, ("energy", "forces"))]
    hessian = -np.array([(forces[2 * r] - forces[2 * r + 1]) / (2 * h) for r in range(3 * len(atoms))])
    return 0.5 * (hessian + hessian.T)


def test_phonon_frequencies_scale_by_sqrt_c(chgnet_adapter):
    raw = MLFFCalculator(chgnet_adapter)
    corrected = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(C_TRUE)])
    atoms = bulk("Si", "diamond", 5.43)  # 2-atom primitive cell: Γ-point modes
    masses = atoms.get_masses()
    optical_raw = _frequencies(raw.get_hessian(atoms, method="fd"), masses)[3:]
    assert optical_raw.min() > 0.01  # real optical modes, not the zero acoustic ones
    # the Hessian hook (transform_hessian) and the force hook (after) must both give √c
    # each route is compared with the raw model through the same route: the scaling is then
    # exact to float64 round-off, while two different float32 finite differences (h = 1e-3 Å)
    # agree only to ~1e-3 relative, which is what the cross-check between routes allows
    by_hook = _frequencies(corrected.get_hessian(atoms, method="fd"), masses)[3:]
    by_forces = _frequencies(_fd_hessian(corrected, atoms), masses)[3:]
    raw_by_forces = _frequencies(_fd_hessian(raw, atoms), masses)[3:]
    np.testing.assert_allclose(by_hook / optical_raw, np.sqrt(C_TRUE), rtol=1e-9)
    np.testing.assert_allclose(by_forces / raw_by_forces, np.sqrt(C_TRUE), rtol=1e-9)
    np.testing.assert_allclose(raw_by_forces, optical_raw, rtol=1e-3)


# -- (4) energy modes -----------------------------------------------------------------


def test_reference_mode_keeps_composition_reference_energy(chgnet_adapter):
    atoms = rattled_nacl()
    raw = MLFFCalculator(chgnet_adapter).evaluate([atoms], ("energy", "forces", "stress", "energies"))[0]
    res = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(C_TRUE)]).evaluate([atoms], ("energy", "forces", "stress", "energies"))[0]
    base = e_ref(chgnet_adapter, atoms)
    assert res["energy"] == pytest.approx(base + C_TRUE * (raw["energy"] - base), abs=1e-9)
    assert res["energies"].sum() == pytest.approx(res["energy"], abs=1e-3)
    assert res["contributions"]["softening"] == pytest.approx(res["energy"] - raw["energy"], abs=1e-9)
    np.testing.assert_allclose(res["forces"], C_TRUE * raw["forces"], rtol=1e-12)
    np.testing.assert_allclose(res["stress"], C_TRUE * raw["stress"], rtol=1e-12)
    # c = 1 changes nothing; a structure whose model energy equals E_ref keeps it for every c
    same = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(1.0)]).evaluate([atoms])[0]
    assert same["energy"] == pytest.approx(raw["energy"], abs=1e-12)


def test_total_mode_scales_total_energy(chgnet_adapter):
    atoms = rattled_nacl()
    raw = MLFFCalculator(chgnet_adapter).evaluate([atoms], ("energy", "forces", "energies"))[0]
    res = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(C_TRUE, mode="total")]).evaluate([atoms], ("energy", "forces", "energies"))[0]
    assert res["energy"] == pytest.approx(C_TRUE * raw["energy"], abs=1e-9)
    np.testing.assert_allclose(res["energies"], C_TRUE * raw["energies"], rtol=1e-12)
    np.testing.assert_allclose(res["forces"], C_TRUE * raw["forces"], rtol=1e-12)


def test_ase_interface_and_describe(chgnet_adapter, si_fit, tmp_path):
    path = tmp_path / "fit.json"
    si_fit.save(path)
    layer = SofteningLayer.from_file(path)
    calc = MLFFCalculator(chgnet_adapter, layers=[layer])
    atoms = si8(9)
    atoms.calc = calc
    raw = MLFFCalculator(chgnet_adapter).evaluate([atoms])[0]
    np.testing.assert_allclose(atoms.get_forces(), si_fit.c * raw["forces"], rtol=1e-12)
    desc = calc.parameters["layers"][0]
    assert desc["name"] == "softening" and desc["c"] == si_fit.c and desc["fit"] == str(path)


# -- artifact ------------------------------------------------------------------------


def test_fit_artifact_round_trip(si_fit, tmp_path):
    path = tmp_path / "fit.json"
    si_fit.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "mlff_calc.softening" and data["format_version"] == 1
    for key in ("mlff_calc_version", "model_id", "model_sha256", "model_version", "chemical_system", "source", "n_structures", "n_components", "s", "c", "mae", "cmae", "units"):
        assert key in data, key
    loaded = SofteningFit.load(path)
    assert loaded == si_fit and loaded.path == str(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "format", "version", "c_negative", "c_string", "missing_c", "mode"])
def test_bad_artifact_raises_and_file_is_untouched(si_fit, tmp_path, damage):
    path = tmp_path / "fit.json"
    si_fit.save(path)
    text = path.read_text()
    data = json.loads(text)
    if damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "garbage":
        text = "\x00\x01 not json"
    else:
        edits = {"format": ("format", "mlff_calc.other"), "version": ("format_version", 99), "c_negative": ("c", -1.0), "c_string": ("c", "1.2"), "mode": ("mode", "half")}
        if damage == "missing_c":
            del data["c"]
        else:
            key, value = edits[damage]
            data[key] = value
        text = json.dumps(data)
    path.write_text(text)
    before = path.read_bytes()
    with pytest.raises(ArtifactError) as err:
        SofteningLayer.from_file(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_fit_of_another_model_is_refused(chgnet_adapter, si_fit, tmp_path):
    path = tmp_path / "fit.json"
    data = si_fit.to_dict()
    data["model_id"] = "m3gnet:M3GNet-MP-2021.2.8-PES"
    path.write_text(json.dumps(stamp(data)))
    layer = SofteningLayer.from_file(path)
    with pytest.raises(ArtifactError, match="made for model 'm3gnet:M3GNet-MP-2021.2.8-PES', not 'chgnet-0.3.0'"):
        MLFFCalculator(chgnet_adapter, layers=[layer])


def test_other_chemical_system_warns_and_strict_raises(chgnet_adapter, si_fit):
    nacl = rattled_nacl()
    calc = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(si_fit.c, fit=si_fit)])
    with pytest.warns(UserWarning, match="fitted on chemical system Si.*Cl-Na"):
        calc.evaluate([nacl])
    strict = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer(si_fit.c, fit=si_fit, strict=True)])
    with pytest.raises(InvalidStructureError, match="strict=True"):
        strict.evaluate([nacl])
    strict.evaluate([si8(3)])  # its own chemical system passes


# -- (5) bad input ---------------------------------------------------------------------


def test_dft_file_without_forces(tmp_path):
    import ase.io

    path = tmp_path / "no_forces.extxyz"
    ase.io.write(path, [si8(1), si8(2)], format="extxyz")
    with pytest.raises(InvalidStructureError, match="frame 0 of .*no_forces.extxyz has no DFT forces"):
        read_dft_structures(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_dft_structures(tmp_path / "absent.xyz")


def test_mixed_compositions_need_allow_mixed(calc, si_data):
    nacl = synthetic(calc, [rattled_nacl()])
    mixed = DFTDataset(si_data.structures + nacl.structures, "si+nacl")
    with pytest.raises(ConfigurationError, match="mixes 2 compositions.*allow_mixed=True"):
        fit_scale(calc, mixed)
    fit = fit_scale(calc, mixed, allow_mixed=True)
    assert fit.c == pytest.approx(C_TRUE, abs=1e-6)
    assert fit.chemical_systems == ["Cl-Na", "Si"] and fit.chemical_system == "Cl-Na-Si"


def test_ill_conditioned_and_negative_fits(calc, si_data):
    zero = DFTDataset([DFTStructure(s.atoms, np.zeros_like(s.forces)) for s in si_data.structures], "zero forces")
    with pytest.raises(ConfigurationError, match="ill-conditioned: forces are near zero"):
        fit_scale(calc, zero)
    perfect = bulk("Si", "diamond", 5.43, cubic=True)  # model forces vanish by symmetry
    still = DFTDataset([DFTStructure(perfect, np.full((8, 3), 0.1))], "perfect crystal")
    with pytest.raises(ConfigurationError, match="ill-conditioned"):
        fit_scale(calc, still)
    flipped = DFTDataset([DFTStructure(s.atoms, -s.forces) for s in si_data.structures], "flipped")
    with pytest.raises(ConfigurationError, match=r"c = -1\.27 <= 0"):
        fit_scale(calc, flipped)
    with pytest.raises(ConfigurationError, match="no DFT energy"):
        fit_scale(calc, DFTDataset([DFTStructure(s.atoms, s.forces) for s in si_data.structures], "no energies"), energy_weight=1.0)


def test_bad_layer_arguments(chgnet_adapter):
    for c in (0.0, -1.0, float("nan"), "1.2", True):
        with pytest.raises(ConfigurationError, match="finite number > 0"):
            SofteningLayer(c)
    with pytest.raises(ConfigurationError, match="mode"):
        SofteningLayer(1.1, mode="formation")


def test_force_sets_of_another_displacement_yaml():
    disp = shared_path("data", "phonopy", "NaCl-rd", "phonopy_disp.yaml")
    other = shared_path("data", "phonopy", "NaCl", "FORCE_SETS")
    with pytest.raises(ConfigurationError, match="do not match"):
        read_phonopy_dataset(disp, other)


# -- readers on the shared DFT files --------------------------------------------------


def test_read_extxyz_with_dft_keys_and_vasprun():
    mof = read_dft_structures(shared_path("data", "mof", "mlip_test.xyz"))
    s = mof.structures[0]
    assert len(s.atoms) == 114 and s.forces.shape == (114, 3) and s.stress.shape == (6,)
    assert s.energy == pytest.approx(-842.19986612)
    assert mof.chemical_systems == ["C-H-O-Zr"]
    si = read_dft_structures(shared_path("data", "phonopy", "Si", "vasprun.xml"))
    assert len(si) >= 1 and si.structures[-1].forces.shape == (16, 3)
    assert np.abs(si.structures[-1].forces).max() > 1e-3


def test_read_phonopy_params_yaml_without_force_sets():
    data = read_phonopy_dataset(shared_path("data", "phonopy", "Si", "phonopy_params_Si.yaml"))
    assert len(data) == 1 and len(data.reference) == 16
    moved = np.linalg.norm(data.structures[0].atoms.positions - data.reference.positions, axis=1)
    assert np.count_nonzero(moved > 1e-6) == 1 and moved.max() == pytest.approx(0.01, abs=1e-6)


# -- (6) real DFT data: CHGNet on NaCl random displacements ------------------------------


def test_nacl_rd_chgnet_fit_on_one_supercell_corrects_the_other_nine(chgnet_adapter, tmp_path):
    folder = shared_path("data", "phonopy", "NaCl-rd")
    data = read_phonopy_dataset(folder / "phonopy_disp.yaml", folder / "FORCE_SETS")
    assert len(data) == 10 and len(data.reference) == 64
    calc = MLFFCalculator(chgnet_adapter)
    fit = fit_scale(calc, data[[0]])  # residual forces: on by default for phonopy data
    assert fit.subtract_reference and fit.n_components == 192
    fit.save(tmp_path / "nacl.json")
    corrected = MLFFCalculator(chgnet_adapter, layers=[SofteningLayer.from_file(tmp_path / "nacl.json", strict=True)])
    test = data[1:]
    both = [measure(calc, test), measure(corrected, test)]
    raw, cor = both[0].pooled, both[1].pooled
    print(
        f"\nNaCl-rd CHGNet: c = {fit.c:.4f} (fit s = {fit.s:.4f}, {fit.n_components} comps); on {raw.n_components} held-out comps: "
        f"s {raw.s:.4f} -> {cor.s:.4f}, MAE {raw.mae:.5f} -> {cor.mae:.5f} eV/Å, cMAE {raw.cmae:.5f}"
    )
    assert fit.c > 1 and raw.s < 1
    assert cor.mae < raw.mae
    assert abs(cor.s - 1) < abs(raw.s - 1)
    assert cor.mae == pytest.approx(raw.cmae, rel=0.1)  # the fitted c removes nearly all of the systematic error
