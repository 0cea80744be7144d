"""``mlff-calc ltau build`` and ``--ltau``: build from a training run folder, attach to other verbs.

The student run is the fixture of tests/ltau/test_ltau.py (a tiny student trained on
MACE-labelled Si); the fine-tune run fine-tunes the small MACE of conftest.py on
three of its own (perturbed) labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import si8
from test_ltau import ltau_built, ltau_store  # noqa: F401  (module fixtures)

from mlff_calc.cli.main import main
from mlff_calc.ltau import LTAU

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")


def test_build_then_attach_round_trip(ltau_built, ltau_store, tmp_path, capsys):  # noqa: F811
    import ase.io

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.ltau import build_ltau

    student, ltau, run = ltau_built
    index = tmp_path / "idx"
    rc = main(["ltau", "build", str(run), "--out", str(index), "--n-bins", "40", "--ks", "1,3,5", "--threads", "1", "--out-dir", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    assert "attach it with" in capsys.readouterr().out
    built = LTAU.load(index, adapter=student)
    want = build_ltau(student, ltau_store, run / "error_log.npz", None, n_bins=40, calibration=ltau_store, ks=(1, 3, 5))
    assert built.index.ntotal == want.index.ntotal and built.k == want.k
    assert built.calibration.scale == pytest.approx(want.calibration.scale)
    summary = json.loads((tmp_path / "o" / "ltau-build-summary.json").read_text())
    assert summary["results"]["run_kind"] == "student" and summary["results"]["n_atoms"] == built.index.ntotal

    atoms = si8()
    atoms.rattle(0.05, seed=8)
    ase.io.write(tmp_path / "in.extxyz", [atoms, si8(5.5)])
    rc = main(["singlepoint", str(tmp_path / "in.extxyz"), "--model", str(run), "--ltau", str(index), "--threads", "1", "--out-dir", str(tmp_path / "sp")])
    assert rc == 0, capsys.readouterr().err
    frames = ase.io.read(tmp_path / "sp" / "in-results.extxyz", ":")
    calc = MLFFCalculator(student, layers=[LTAULayer(want)])
    for frame, ref in zip(frames, calc.evaluate([atoms, si8(5.5)], ("energy", "forces"))):
        np.testing.assert_allclose(frame.arrays["forces_uncertainty"], ref["forces_uncertainty"], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(frame.arrays["forces_error_interval"], ref["forces_error_interval"], rtol=1e-6, atol=1e-8)
        assert frame.info["ood_score_max"] == pytest.approx(ref["ood_score_max"], rel=1e-5)
    layers = json.loads((tmp_path / "sp" / "singlepoint-summary.json").read_text())["model"]["layers"]
    assert [layer["name"] for layer in layers] == ["ltau"] and layers[0]["k"] == built.k and layers[0]["on_demand"] is False
    # md looks the uncertainties up for the frames it writes; each frame holds those of its positions
    rc = main(
        ["md", str(tmp_path / "in.extxyz"), "--index", "0", "--model", str(run), "--ltau", str(index), "--steps", "4", "--log-interval", "2", "--threads", "1", "--out-dir", str(tmp_path / "md")]
    )
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "md" / "md-summary.json").read_text())
    assert summary["model"]["layers"][0]["on_demand"] is True
    traj = ase.io.read(summary["outputs"]["trajectory"], ":")
    assert len(traj) == 3  # steps 0, 2, 4
    for frame in traj:
        ref = calc.evaluate([frame.copy()], ("energy", "forces"))[0]
        np.testing.assert_allclose(frame.arrays["forces_uncertainty"], ref["forces_uncertainty"], rtol=1e-6, atol=1e-8)


def test_build_refusals(ltau_built, tmp_path, capsys, mace_small_path):  # noqa: F811
    student, ltau, run = ltau_built
    rc = main(["ltau", "build", str(tmp_path), "--out", str(tmp_path / "x")])
    assert rc == 2 and "error_log.npz" in capsys.readouterr().err
    # an index attached to another model is refused before anything runs
    import ase.io

    ase.io.write(tmp_path / "si.extxyz", si8())
    rc = main(["singlepoint", str(tmp_path / "si.extxyz"), "--model", str(mace_small_path), "--ltau", str(run / "ltau"), "--threads", "1", "--out-dir", str(tmp_path / "sp")])
    assert rc == 2 and "built for model" in capsys.readouterr().err
    # a label store that is not the one trained on
    (tmp_path / "empty").mkdir()
    rc = main(["ltau", "build", str(run), "--labels", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def finetune_run(mace_small_path, tmp_path_factory):
    """A fine-tune folder: the small MACE fine-tuned (readout) on 3 structures labelled by itself, forces x 1.1."""
    import ase.io

    from mlff_calc.finetune import finetune
    from mlff_calc.models.mace import MACEAdapter
    from mlff_calc.softening import read_dft_structures

    base = MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")
    folder = tmp_path_factory.mktemp("ft")
    frames = []
    for seed in range(5):
        atoms = si8()
        atoms.rattle(0.08, seed=seed)
        res = base.evaluate([atoms], ("energy", "forces"))[0]
        atoms.arrays["dft_forces"] = 1.1 * res["forces"]
        frames.append(atoms)
    ase.io.write(folder / "dft.extxyz", frames)
    data = read_dft_structures(folder / "dft.extxyz")
    run = folder / "run"
    finetune(base, data[[0, 1, 2]], data[[3, 4]], epochs=4, lr=1e-2, force_weight=1.0, energy_weight=0.0, stress_weight=0.0, out_dir=run, progress=False)
    return run, folder / "dft.extxyz"


def test_build_from_finetune_run(finetune_run, tmp_path, capsys):
    from mlff_calc.finetune import load_finetuned

    run, dft = finetune_run
    index = tmp_path / "idx"
    rc = main(["ltau", "build", str(run), "--out", str(index), "--n-bins", "20", "--ks", "1,2", "--threads", "1", "--out-dir", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    adapter = load_finetuned(run, device="cpu")
    built = LTAU.load(index, adapter=adapter)
    assert built.index.ntotal == 3 * 8 and built.calibration.n_atoms == 2 * 8  # trained on 3, calibrated on the 2 validation cells
    results = json.loads((tmp_path / "o" / "ltau-build-summary.json").read_text())["results"]
    assert results["run_kind"] == "finetune" and results["training_data"].endswith("[0,1,2]")
    # other training data than the fine-tune's are refused by content hash
    rc = main(["ltau", "build", str(run), "--train-data", f"{dft}[0,1,3]", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "not the data" in capsys.readouterr().err
