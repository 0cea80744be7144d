"""Every ``mlff-calc`` verb driven through ``main([...])`` in a temporary folder, checked by content.

Inputs are tiny (2-atom Si primitive cell, 8-atom NaCl cube) and runs are short, so
the whole file takes well under a minute on two shared cores with one thread.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.collections import dcdft
from ase.io import read, write
from helpers import shared_path
from matplotlib.image import imread

from mlff_calc.cli.main import main
from mlff_calc.cli.options import restore_threads, set_threads

SUMMARY_KEYS = {"command", "config", "versions", "host", "started", "wall_time_s", "outputs", "results", "units", "model"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch and OpenBLAS thread: on two shared cores two threads were 10-100x slower here."""
    previous = set_threads(1)
    yield
    restore_threads(previous)


@pytest.fixture(scope="module")
def calc():
    import mlff_calc

    return mlff_calc.load("chgnet", device="cpu")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A temporary working folder with si.extxyz (2-atom primitive) and nacl.extxyz (8-atom cube)."""
    monkeypatch.chdir(tmp_path)
    write("si.extxyz", bulk("Si", "diamond", 5.43))
    write("nacl.extxyz", bulk("NaCl", "rocksalt", 5.64, cubic=True))
    return tmp_path


@functools.cache
def chgnet_wheel_sha256() -> str:
    """sha256 of the CHGNet 0.3.0 checkpoint inside the installed chgnet package, computed here with hashlib."""
    import hashlib
    from pathlib import Path

    import chgnet

    (weights,) = (Path(chgnet.__file__).parent / "pretrained" / "0.3.0").glob("*.pth.tar")
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def test_chgnet_weights_are_hashed_like_a_given_checkpoint(calc):
    from mlff_calc.models.chgnet import CHGNetAdapter, wheel_weights

    assert calc.adapter.sha256 == chgnet_wheel_sha256()
    # the same file given by path gets the same hash (one weights hash for every way of loading)
    assert CHGNetAdapter.load(str(wheel_weights("0.3.0")), device="cpu").sha256 == calc.adapter.sha256


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def summary_of(path, keys=SUMMARY_KEYS) -> dict:
    data = json.loads(path.read_text())
    assert keys <= set(data), f"summary lacks {keys - set(data)}"
    assert data["model"]["id"] == "chgnet-0.3.0"
    assert data["model"]["sha256"] == chgnet_wheel_sha256()
    for key, out in data["outputs"].items():
        assert Path(out).exists(), f"output {key} = {out} is missing"
    return data


def assert_png(path) -> None:
    assert path.stat().st_size > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# relax -------------------------------------------------------------------------------


def test_relax_writes_trajectory_structure_and_summary(work, calc, capsys):
    from mlff_calc.workflows.relax import Relax

    assert cli("relax", "si.extxyz", "--fmax", 0.005, "--out-dir", "out") == 0
    data = summary_of(work / "out" / "relax-summary.json")
    res = data["results"]
    assert res["converged"] is True
    assert res["max_force_eV_per_A"] < 0.005
    assert data["config"]["fmax"] == 0.005
    assert data["units"]["forces"] == "eV/Å"
    expected = Relax(bulk("Si", "diamond", 5.43), calc, fmax_eV_per_A=0.005, progress=False).run()
    assert res["lattice_parameters"]["a"] == pytest.approx(expected.lattice_parameters["a"], abs=0.01)
    a_cubic = (4 * res["lattice_parameters"]["volume"]) ** (1 / 3)
    assert a_cubic == pytest.approx(5.46, abs=0.02)  # CHGNet's Si
    assert res["n_steps"] == len(res["energies_eV"]) - 1

    traj = read(work / "out" / "si-relax-traj.extxyz", index=":")
    assert len(traj) == res["n_steps"] + 1
    assert traj[-1].get_forces().shape == (2, 3)
    assert traj[-1].get_potential_energy() == pytest.approx(res["energy_eV"], abs=1e-5)
    final = read(work / "out" / "si-relaxed.extxyz")
    assert final.cell.cellpar()[0] == pytest.approx(res["lattice_parameters"]["a"], abs=1e-6)
    assert "stress" in final.calc.results

    out = capsys.readouterr().out
    assert "converged after" in out and "si-relaxed.extxyz" in out


def test_config_file_replaces_flags_and_flags_win(work):
    (work / "relax.yml").write_text("fmax: 0.05\nsteps: 2\noptimizer: LBFGS\nfixed-cell: true\n")
    assert cli("relax", "si.extxyz", "--config", "relax.yml", "--steps", 7, "--out-dir", "cfg") == 0
    data = summary_of(work / "cfg" / "relax-summary.json")
    assert data["config"]["fmax"] == 0.05
    assert data["config"]["optimizer"] == "LBFGS"
    assert data["config"]["fixed_cell"] is True
    assert data["config"]["steps"] == 7  # the command line wins over the file
    assert data["results"]["lattice_parameters"]["a"] == pytest.approx(bulk("Si", "diamond", 5.43).cell.cellpar()[0])


# eos ---------------------------------------------------------------------------------


def test_eos_bulk_modulus_near_dcdft(work):
    assert cli("eos", "si.extxyz", "--points", 7, "--out-dir", "out") == 0
    data = summary_of(work / "out" / "eos-summary.json")
    res = data["results"]
    reference = dcdft.data["Si"]["wien2k_B"]
    assert res["reference"]["bulk_modulus_GPa"] == reference
    assert res["bulk_modulus_GPa"] > 0
    assert res["bulk_modulus_GPa"] == pytest.approx(reference, rel=0.2)
    assert len(res["volumes_A3"]) == len(res["energies_eV"]) == 7
    assert 19.5 < res["v0_per_atom_A3"] < 21.5
    assert_png(work / "out" / "si-eos.png")


# phonons -----------------------------------------------------------------------------


def test_phonons_match_the_workflow_in_process(work, calc):
    import phonopy

    from mlff_calc.workflows.phonons import Phonons, special_point_frequencies

    args = ("--supercell", 2, 2, 2, "--mesh", 6, 6, 6, "--band-npoints", 11, "--t-step-K", 50)
    assert cli("phonons", "si.extxyz", *args, "--out-dir", "out") == 0
    data = summary_of(work / "out" / "phonons-summary.json")
    res = data["results"]
    assert res["n_atoms_supercell"] == 16
    highest = res["highest_branch_THz"]
    assert {"Γ", "X", "L"} <= set(highest)
    assert all(np.isfinite(v) and v > 5 for v in highest.values())

    wf = Phonons(bulk("Si", "diamond", 5.43), calc, supercell_matrix=[2, 2, 2], mesh=(6, 6, 6), band_npoints=11, t_step_K=50, progress=False)
    own = wf.run()
    expected = special_point_frequencies(own.band_labels, own.band_frequencies_THz, own.band_path_connections)
    assert highest == pytest.approx(expected, abs=1e-3)
    assert res["max_frequency_THz"] == pytest.approx(own.max_frequency_THz, abs=1e-3)
    assert res["thermal_300K"]["heat_capacity_J_per_K_per_mol"] > 0

    ph = phonopy.load(work / "out" / "si-phonopy.yaml", log_level=0)  # force constants are in the file
    qpoints = [[0.5, 0.0, 0.5], [0.5, 0.5, 0.5]]
    ph.run_qpoints(qpoints)
    np.testing.assert_allclose(ph.qpoints.frequencies, wf.frequencies_at(qpoints), atol=1e-3)
    assert (work / "out" / "si-band.yaml").stat().st_size > 0
    assert_png(work / "out" / "si-bands.png")


def test_phonons_on_a_reference_dataset_overlay_it(work):
    folder = shared_path("data", "phonopy", "Si")
    assert cli("phonons", "--reference", folder, "--mesh", 6, 6, 6, "--band-npoints", 11, "--out-dir", "ref") == 0
    res = summary_of(work / "ref" / "phonons-summary.json")["results"]
    ours, theirs = res["highest_branch_THz"], res["reference"]["highest_branch_THz"]
    assert set(ours) == set(theirs)
    assert theirs["X"] == pytest.approx(13.43, abs=0.05)  # VASP-PBE (../shared/README.md)
    assert ours["X"] == pytest.approx(9.94, abs=0.2)  # CHGNet 0.3.0 on the same supercell: softened
    assert_png(work / "ref" / "Si-bands.png")


# md ----------------------------------------------------------------------------------


def test_md_log_trajectory_restart(work):
    assert cli("md", "si.extxyz", "--supercell", 2, 2, 2, "--steps", 20, "--log-interval", 5, "--seed", 3, "--out-dir", "out") == 0
    data = summary_of(work / "out" / "md-summary.json")
    res = data["results"]
    assert res["n_steps"] == 20
    assert res["n_log_rows"] == 20 // 5 + 1
    assert res["log"]["step"] == [0, 5, 10, 15, 20]
    assert abs(res["max_abs_drift_eV_per_atom"]) < 2e-3
    table = np.loadtxt(work / "out" / "si-md-log.txt")
    assert table.shape == (5, 9)
    np.testing.assert_allclose(table[:, 3], res["log"]["E_pot_eV"], rtol=1e-6)
    frames = read(work / "out" / "si-md-traj.extxyz", index=":")
    assert len(frames) == 5
    assert all(f.get_forces().shape == (16, 3) and "momenta" in f.arrays for f in frames)
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert_png(work / "out" / "si-md-energy.png")

    restart = work / "out" / "si-md-restart.extxyz"
    assert cli("md", restart, "--restart", "--steps", 10, "--log-interval", 5, "--out-dir", "cont") == 0
    cont = summary_of(work / "cont" / "md-summary.json")["results"]
    assert cont["first_step"] == 20
    assert cont["log"]["step"] == [20, 25, 30]
    assert cont["ensemble"] == "nve"


def test_md_langevin_from_config(work):
    (work / "md.yml").write_text("ensemble: nvt-langevin\ntemperature-K: 500\ntimestep-fs: 2\nsteps: 6\nlog-interval: 3\nsupercell: [1, 1, 1]\n")
    assert cli("md", "si.extxyz", "--config", "md.yml", "--out-dir", "nvt") == 0
    res = summary_of(work / "nvt" / "md-summary.json")["results"]
    assert res["ensemble"] == "nvt-langevin"
    assert res["temperature_K"] == 500 and res["timestep_fs"] == 2
    assert res["log"]["time_ps"] == pytest.approx([0.0, 0.006, 0.012])
    assert not [k for k in res if "drift" in k]  # a thermostat exchanges energy: no E_tot drift to report


# surface and defect --------------------------------------------------------------------


def test_surface_energy(work, calc):
    from mlff_calc.workflows.surface import SurfaceEnergy

    assert cli("surface", "nacl.extxyz", "--miller", 1, 0, 0, "--layers", 2, "--vacuum", 8, "--out-dir", "out") == 0
    res = summary_of(work / "out" / "surface-summary.json")["results"]
    expected = SurfaceEnergy(bulk("NaCl", "rocksalt", 5.64, cubic=True), calc, miller=(1, 0, 0), layers=2, vacuum=8.0).run()
    assert res["surface_energy_J_per_m2"] == pytest.approx(expected.surface_energy_J_per_m2, abs=1e-4)
    assert 0 < res["surface_energy_J_per_m2"] < 1
    slab = read(work / "out" / "nacl-slab-100.extxyz")
    assert len(slab) == res["n_atoms"] == 16


def test_vacancy_formation_energy(work):
    assert cli("defect", "si.extxyz", "--kind", "vacancy", "--supercell", 2, 2, 2, "--no-relax", "--out-dir", "out") == 0
    res = summary_of(work / "out" / "defect-summary.json")["results"]
    assert res["delta_n"] == {"Si": -1}
    assert res["n_atoms_host"] == 16
    assert res["formula"] == "Si16" and res["input_formula"] == "Si2"  # the host supercell, not the input cell
    assert 0 < res["formation_energy_eV"] < 6
    assert res["chemical_potentials_eV"]["Si"] == pytest.approx(res["host_energy_eV"] / 16)
    assert len(read(work / "out" / "si-vacancy-defect.extxyz")) == 15


def test_antisite_with_given_chemical_potentials(work):
    assert cli("defect", "nacl.extxyz", "--kind", "antisite", "--supercell", 1, 1, 1, "--no-relax", "--chemical-potential-eV", "Na=-1.3", "Cl=-1.8", "--out-dir", "out") == 0
    res = summary_of(work / "out" / "defect-summary.json")["results"]
    assert res["chemical_potentials_eV"] == {"Na": -1.3, "Cl": -1.8}
    assert res["formation_energy_eV"] == pytest.approx(res["defect_energy_eV"] - res["host_energy_eV"] - (-1.8) + (-1.3), abs=1e-6)


# softening -----------------------------------------------------------------------------


@pytest.fixture
def synthetic_dft(work, calc):
    """Rattled Si cells whose "DFT" forces are exactly 1.25 x the model's: the fit must find c = 1.25."""
    frames = []
    for seed in range(3):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = calc
        forces = atoms.get_forces()
        atoms.calc = None
        atoms.arrays["dft_forces"] = 1.25 * forces
        frames.append(atoms)
    write(work / "dft.extxyz", frames)
    return work / "dft.extxyz"


def test_softening_fit_measure_and_apply(work, synthetic_dft, calc):
    assert cli("softening", "fit", "--dft", synthetic_dft, "--out", "si-fit.json", "--out-dir", "soft") == 0
    fit = json.loads((work / "si-fit.json").read_text())
    assert fit["c"] == pytest.approx(1.25, rel=1e-4)
    assert fit["n_structures"] == 3 and fit["n_components"] == 3 * 8 * 3
    data = summary_of(work / "soft" / "softening-fit-summary.json")
    assert data["results"]["c"] == fit["c"]
    assert_png(work / "soft" / "softening-fit-parity.png")

    assert cli("softening", "measure", "--dft", synthetic_dft, "--out-dir", "soft") == 0
    report = summary_of(work / "soft" / "softening-measure-summary.json")["results"]
    assert report["pooled"]["s"] == pytest.approx(0.8, rel=1e-4)
    assert len(report["structures"]) == 3
    assert report["subtract_reference"] is False
    assert_png(work / "soft" / "softening-parity.png")

    # the fit as a layer on another verb: forces scale by c
    assert cli("singlepoint", synthetic_dft, "--softening", "si-fit.json", "--out-dir", "sp") == 0
    sp = summary_of(work / "sp" / "singlepoint-summary.json")
    assert sp["units"]["energy"] == "eV" and sp["units"]["forces"] == "eV/Å"
    assert [layer["name"] for layer in sp["model"]["layers"]] == ["softening"]
    assert sp["model"]["layers"][0]["c"] == pytest.approx(1.25, rel=1e-4)
    corrected = read(work / "sp" / "dft-results.extxyz", index=":")
    for frame in corrected:
        np.testing.assert_allclose(frame.get_forces(), frame.arrays["dft_forces"], atol=2e-4)

    # measured with the correction attached, the softening is gone
    assert cli("softening", "measure", "--dft", synthetic_dft, "--softening", "si-fit.json", "--out-dir", "soft2") == 0
    assert summary_of(work / "soft2" / "softening-measure-summary.json")["results"]["pooled"]["s"] == pytest.approx(1.0, rel=1e-4)


def test_softening_measure_on_phonopy_data(work):
    params = shared_path("data", "phonopy", "Si", "phonopy_params_Si.yaml")
    assert cli("softening", "measure", "--phonopy-disp", params, "--out-dir", "out") == 0
    report = summary_of(work / "out" / "softening-measure-summary.json")["results"]
    assert report["subtract_reference"] is True
    assert len(report["structures"]) == 1
    assert 0.3 < report["pooled"]["s"] < 1.0  # CHGNet is softened on Si


# errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["relax", "missing.cif"], "structure file missing.cif does not exist"),
        (["eos", "si.extxyz", "--model", "no-such-model"], "'no-such-model' is neither a known model name"),
        (["relax", "si.extxyz", "--config", "bad.yml"], "unknown option 'fmx'"),
        (["relax", "si.extxyz", "--softening", "nofit.json"], "softening fit file nofit.json does not exist"),
        (["softening", "measure"], "give DFT data with either --dft FILE or --phonopy-disp"),
        (["phonons", "--supercell", "2", "2", "2"], "give a structure file, or --reference"),
        (["md", "si.extxyz", "--threads", "0"], "argument --threads: must be an integer >= 1"),
        (["defect", "nacl.extxyz", "--chemical-potential-eV", "Na"], "ELEMENT=VALUE"),
        (["singlepoint", "si.extxyz", "--compile"], "--compile applies to distilled students only"),
        (["screen", "singlepoint", "si.extxyz", "--ltau", "idx"], "--ltau cannot be used here"),
    ],
)
def test_errors_exit_2_with_a_clear_message(work, capsys, argv, message):
    (work / "bad.yml").write_text("fmx: 0.1\n")
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlff-calc {argv[0]}: error: ")
    assert message in err


def test_usage_errors_are_argparse_exit_2(work, capsys):
    assert cli("relax") == 2
    assert "the following arguments are required: structure" in capsys.readouterr().err
    assert cli("md", "si.extxyz", "--ensemble", "nvt-berendsen") == 2
    assert "argument --ensemble: invalid choice: 'nvt-berendsen'" in capsys.readouterr().err


# small pieces ------------------------------------------------------------------------------


def test_choices_spelled_out_for_help_match_the_library():
    from mlff_calc import softening
    from mlff_calc.cli import defect, md
    from mlff_calc.cli import softening as cli_softening
    from mlff_calc.workflows.defects import KINDS
    from mlff_calc.workflows.md import ENSEMBLES

    assert set(md.ENSEMBLE_CHOICES) == set(ENSEMBLES)
    assert defect.KINDS == KINDS
    assert cli_softening.MODES == softening.MODES
    assert cli_softening.PAPER_WEIGHTS == softening.PAPER_WEIGHTS


def test_help_imports_no_workflow_or_model():
    code = "import sys; from mlff_calc.cli.main import build_parser; build_parser(); print(sorted(m for m in sys.modules if m.startswith(('mlff_calc.workflows', 'mlff_calc.models', 'torch', 'phonopy'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_verb_shares_the_common_options():
    from mlff_calc.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for verb in ("relax", "md", "eos", "phonons", "surface", "defect"):
        flags = {s for a in sub.choices[verb]._actions for s in a.option_strings}
        assert {"--model", "--device", "--dtype", "--config", "--out-dir", "--softening", "--threads"} <= flags, verb
    for step in ("measure", "fit"):
        steps = next(a for a in sub.choices["softening"]._actions if a.dest == "step")
        flags = {s for a in steps.choices[step]._actions for s in a.option_strings}
        assert {"--model", "--device", "--dtype", "--config", "--out-dir", "--dft", "--phonopy-disp", "--force-sets"} <= flags


def test_threads_are_set_and_restored():
    import torch

    before = torch.get_num_threads()
    previous = set_threads(2)
    assert torch.get_num_threads() == 2
    restore_threads(previous)
    assert torch.get_num_threads() == before
    assert set_threads(None) == {}


def test_md_plot_with_an_uncertainty_trace(tmp_path):
    from mlff_calc.cli.md import uncertainty_trace
    from mlff_calc.plots import md_traces

    frames = []
    for k in range(4):
        atoms = bulk("Si", "diamond", 5.43)
        atoms.info["time_fs"] = 2.0 * k
        atoms.arrays["forces_uncertainty"] = np.array([0.01 * k, 0.02 * k])
        frames.append(atoms)
    t, values, label = uncertainty_trace(frames)
    np.testing.assert_allclose(t, [0, 0.002, 0.004, 0.006])
    np.testing.assert_allclose(values, [0, 0.02, 0.04, 0.06])
    assert label == "max forces_uncertainty"
    assert uncertainty_trace([bulk("Si")]) is None
    time_ps = np.linspace(0, 0.006, 4)
    path = md_traces(
        tmp_path / "md.png", time_ps=time_ps, energies_eV_per_atom={"E_pot": np.ones(4)}, conserved_eV_per_atom=np.ones(4), temperature_K=np.full(4, 300.0), uncertainty=(t, values, label)
    )
    assert_png(path)
