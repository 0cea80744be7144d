"""``mlff-calc distill sample|label|train`` end to end on the small MACE teacher."""

import json

import ase.io
import numpy as np
from helpers import si8

import mlff_calc
from mlff_calc.cli.main import main


def test_sample_label_train(tmp_path, mace_small_path, capsys):
    ase.io.write(tmp_path / "si.extxyz", si8())
    teacher = ["--model", str(mace_small_path), "--device", "cpu", "--dtype", "float64"]
    rc = main(
        [
            "distill",
            "sample",
            str(tmp_path / "si.extxyz"),
            *teacher,
            "--temperatures-K",
            "300",
            "--md-frames",
            "2",
            "--md-interval",
            "1",
            "--md-equilibration-steps",
            "1",
            "--n-rattle",
            "4",
            "--n-strain",
            "2",
            "--out-dir",
            str(tmp_path / "samples"),
        ]
    )
    assert rc == 0 and (tmp_path / "samples" / "samples.npz").exists()
    rc = main(["distill", "label", str(tmp_path / "samples"), *teacher, "--chunk-size", "4", "--n-rows", "3", "--full-hessian-max-dof", "0", "--out-dir", str(tmp_path / "labels")])
    assert rc == 0 and json.loads((tmp_path / "labels" / "labels.json").read_text())["n_structures"] == 9
    rc = main(
        [
            "distill",
            "train",
            str(tmp_path / "labels"),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--architecture",
            "fast",
            "--channels",
            "4",
            "--num-interactions",
            "1",
            "--dtype",
            "float64",
            "--rows-per-structure",
            "2",
            "--out-dir",
            str(tmp_path / "student"),
        ]
    )
    assert rc == 0
    for name in ("student.json", "student.pt", "error_log.npz", "train-history.json", "distill-train-summary.json"):
        assert (tmp_path / "student" / name).exists(), name
    summary = json.loads((tmp_path / "student" / "distill-train-summary.json").read_text())
    arch = json.loads((tmp_path / "student" / "student.json").read_text())["architecture"]
    assert arch["channels"] == 4 and arch["max_ell"] == 1 and arch["radial_mlp"] == [16]  # the fast preset, one entry changed
    assert summary["config"]["lambda_kd"] == 400.0 and "test" in summary["results"]["metrics"]
    atoms = si8()
    atoms.rattle(0.05, seed=0)
    atoms.calc = mlff_calc.load(tmp_path / "student", device="cpu")
    assert np.isfinite(atoms.get_potential_energy())
    assert "student in" in capsys.readouterr().out
    # a student compiled from the command line gives the eager student's numbers
    ase.io.write(tmp_path / "rattled.extxyz", atoms)
    rc = main(["singlepoint", str(tmp_path / "rattled.extxyz"), "--model", str(tmp_path / "student"), "--device", "cpu", "--compile", "--out-dir", str(tmp_path / "sp")])
    assert rc == 0
    summary = json.loads((tmp_path / "sp" / "singlepoint-summary.json").read_text())
    assert summary["config"]["compile"] is True
    got = ase.io.read(tmp_path / "sp" / "rattled-results.extxyz")
    assert abs(got.get_potential_energy() - atoms.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(got.get_forces(), atoms.get_forces(), atol=1e-8)


def test_errors_are_reported(tmp_path, capsys):
    rc = main(["distill", "train", str(tmp_path / "missing")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
