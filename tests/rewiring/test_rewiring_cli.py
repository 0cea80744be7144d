"""``mlff-calc rewire build-reference|choose`` and ``--rewire`` on other verbs, driven through ``main([...])``.

The model is the small float64 MACE of the top-level conftest (rc = 5.0 Å); the
student is an untrained one saved beside a tiny label store (only the files
matter here, not its accuracy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from mlff_calc.cli.main import main
from mlff_calc.cli.options import LAYER_OPTIONS, restore_threads, set_threads
from mlff_calc.rewiring import SpectrumReference

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = set_threads(1)
    yield
    restore_threads(previous)


def si(scale=1.0, seed=1, rattle=0.05, n=2):
    atoms = bulk("Si", "diamond", 5.43 * scale, cubic=True) * (n, n, n)
    atoms.rattle(rattle, seed=seed)
    return atoms


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def work(tmp_path, monkeypatch, mace_small_path):
    """train.extxyz (6 rattled Si64), compressed.extxyz (Si64 at 0.9 a) and the model path."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    write("train.extxyz", [si(1 + float(rng.uniform(-0.02, 0.02)), seed=10 + k, rattle=0.08) for k in range(6)])
    write("compressed.extxyz", si(0.9, seed=3))
    write("big.extxyz", si(1.0, n=3))
    return tmp_path


def summary(path) -> dict:
    return json.loads(Path(path).read_text())


def test_cli_constants_match_the_library():
    from mlff_calc import rewiring
    from mlff_calc.cli import rewire

    assert rewire.DISTANCES == rewiring.DISTANCES and rewire.SELF_IMAGES == rewiring.SELF_IMAGES
    flags = [opt.flag for opt in LAYER_OPTIONS]
    assert "--rewire" in flags and flags[-1] == "--softening"  # softening stays last


def test_build_reference_and_choose(work, mace_small_path, mace_adapter, capsys):
    assert cli("rewire", "build-reference", "train.extxyz", "--model", mace_small_path, "--dtype", "float64", "--out", "ref.json", "--out-dir", "out") == 0
    ref = SpectrumReference.load(work / "ref.json", adapter=mace_adapter)
    assert ref.n_structures == 6 and ref.padded_size == 64 and ref.cutoff == 5.0
    assert "train.extxyz" in ref.source
    data = summary(work / "out" / "rewire-build-reference-summary.json")
    assert data["results"]["n_structures"] == 6 and Path(data["outputs"]["reference"]).is_file()
    assert "--rewire ref.json" in capsys.readouterr().out

    # choose: the compressed cell picks a smaller radius, printed with its distances
    assert cli("rewire", "choose", "compressed.extxyz", "--reference", "ref.json", "--out-dir", "out") == 0
    out = capsys.readouterr().out
    res = summary(work / "out" / "rewire-choose-summary.json")["results"]
    assert 4.0 < res["r_star"] < 4.9 and len(res["distances"]) == 10 and res["distance"] == "padded_l2"
    assert f"r* = {res['r_star']:.3f} Å" in out and out.count("<- best") == 1 and "centred in" in out
    assert res["r_grid"] in res["radii"] and res["gap"][0] < res["r_star"] < res["gap"][1]
    assert cli("rewire", "choose", "compressed.extxyz", "--reference", "ref.json", "--no-centre", "--out-dir", "out") == 0
    assert summary(work / "out" / "rewire-choose-summary.json")["results"]["r_star"] == res["r_grid"]
    # an in-distribution structure keeps (nearly) the native cutoff; with --model the reference is checked
    assert cli("rewire", "choose", "train.extxyz", "--index", "0", "--reference", "ref.json", "--distance", "histogram", "--model", mace_small_path, "--out-dir", "out") == 0
    res = summary(work / "out" / "rewire-choose-summary.json")["results"]
    assert res["r_star"] >= 5.0 - 0.28 and res["distance"] == "histogram"
    # explicit radii: the native cutoff is always added
    assert cli("rewire", "choose", "compressed.extxyz", "--reference", "ref.json", "--radii", "3.0", "4.2", "--out-dir", "out") == 0
    assert summary(work / "out" / "rewire-choose-summary.json")["results"]["radii"] == [3.0, 4.2, 5.0]


def test_choose_errors(work, mace_small_path, capsys):
    SpectrumReference.build([si()], model_id="someone-else", cutoff=5.0).save(work / "other.json")
    assert cli("rewire", "choose", "compressed.extxyz", "--reference", "other.json", "--model", mace_small_path, "--out-dir", "out") == 2
    assert "someone-else" in capsys.readouterr().err
    assert cli("rewire", "choose", "big.extxyz", "--reference", "other.json", "--out-dir", "out") == 2  # 216 atoms > padded size 1 x 64
    assert "padded size 64" in capsys.readouterr().err
    assert cli("rewire", "choose", "compressed.extxyz", "--reference", "other.json", "--radii", "6.0", "--out-dir", "out") == 2
    assert "native cutoff" in capsys.readouterr().err
    assert cli("rewire", "choose", "compressed.extxyz", "--reference", "missing.json", "--out-dir", "out") == 2
    assert "does not exist" in capsys.readouterr().err
    # a model that records no training set needs the structures
    assert cli("rewire", "build-reference", "--model", mace_small_path, "--out-dir", "out") == 2
    assert "give the structures" in capsys.readouterr().err


def test_rewire_option_on_singlepoint_and_md(work, mace_small_path, mace_adapter, capsys):
    assert cli("rewire", "build-reference", "train.extxyz", "--model", mace_small_path, "--dtype", "float64", "--out", "ref.json", "--out-dir", "out") == 0
    assert cli("singlepoint", "compressed.extxyz", "--model", mace_small_path, "--dtype", "float64", "--rewire", "ref.json", "--out-dir", "sp") == 0
    layers = summary(work / "sp" / "singlepoint-summary.json")["model"]["layers"]
    assert [layer["name"] for layer in layers] == ["rewiring"] and layers[0]["distance"] == "padded_l2"
    r_star = layers[0]["r_star"]["Si64|64"]
    assert 4.0 < r_star < 4.9
    frame = read(work / "sp" / "compressed-results.extxyz")
    direct = mace_adapter.evaluate([frame], ("energy",), cutoff=r_star)[0]["energy"]
    assert frame.get_potential_energy() == pytest.approx(direct, abs=1e-8)

    # another distance after a colon; an unknown one is an error
    assert cli("singlepoint", "compressed.extxyz", "--model", mace_small_path, "--dtype", "float64", "--rewire", "ref.json:histogram", "--out-dir", "sp") == 0
    assert summary(work / "sp" / "singlepoint-summary.json")["model"]["layers"][0]["distance"] == "histogram"
    assert cli("singlepoint", "compressed.extxyz", "--model", mace_small_path, "--rewire", "ref.json:wasserstein", "--out-dir", "sp") == 2
    assert "wasserstein" in capsys.readouterr().err

    # md: every logged frame carries the same r*
    assert cli("md", "compressed.extxyz", "--model", mace_small_path, "--dtype", "float64", "--rewire", "ref.json", "--steps", 6, "--log-interval", 2, "--temperature-K", 300, "--out-dir", "md") == 0
    frames = read(next((work / "md").glob("*md-traj.extxyz")), index=":")
    assert len(frames) == 4 and {f.info["r_star"] for f in frames} == {r_star}


def test_reference_of_another_model_is_refused_by_every_verb(work, mace_small_path, capsys):
    SpectrumReference.build([si()], model_id="someone-else", cutoff=5.0).save(work / "other.json")
    assert cli("singlepoint", "compressed.extxyz", "--model", mace_small_path, "--rewire", "other.json", "--out-dir", "sp") == 2
    assert "someone-else" in capsys.readouterr().err


# students: the training set by default ------------------------------------------------------
@pytest.fixture(scope="module")
def student_folder(mace_adapter, tmp_path_factory):
    """An untrained student saved with a label store of 5 train / 1 valid / 1 test Si64 structures."""
    from mlff_calc.distill import SampleSet, StudentAdapter, label, save_student

    root = tmp_path_factory.mktemp("rewire-student")
    structures = [si(1.0 + 0.01 * (k - 3), seed=20 + k) for k in range(7)]
    samples = SampleSet(structures, np.array(["train"] * 5 + ["valid", "test"]), np.array(["rattle"] * 7))
    store = label(samples, mace_adapter, root / "labels", chunk_size=4, n_rows=0, hessian_splits=(), progress=False)
    student = StudentAdapter.create([14], dtype="float64", architecture={"channels": 4, "radial_mlp": [8]})
    folder = save_student(student, root / "student", training_data_sha256=store.content_sha256(), config={"label_store": str(store.folder)})
    return folder


def resave(folder, to, label_store):
    """The student of ``folder`` saved again into ``to`` with another recorded label store path."""
    from mlff_calc.distill import StudentAdapter, save_student

    student = StudentAdapter.load(folder, device="cpu")
    return save_student(student, to, training_data_sha256=student.manifest["training_data_sha256"], config={"label_store": label_store})


def test_student_reference_defaults_to_its_training_set(student_folder, tmp_path, monkeypatch, capsys):
    import mlff_calc

    monkeypatch.chdir(tmp_path)
    assert cli("rewire", "build-reference", "--model", student_folder, "--out", "ref.json", "--out-dir", "out") == 0
    ref = SpectrumReference.load(tmp_path / "ref.json", adapter=mlff_calc.load(student_folder, device="cpu").adapter)
    assert ref.n_structures == 5 and ref.cutoff == 4.5 and "label store" in ref.source

    # a copy of student and store side by side, the store moved from its recorded path: found beside the student
    copy = tmp_path / "copy"
    resave(student_folder, copy / "student", "/nowhere/labels")
    shutil.copytree(student_folder.parent / "labels", copy / "labels")
    assert cli("rewire", "build-reference", "--model", copy / "student", "--out", "ref2.json", "--out-dir", "out") == 0
    assert SpectrumReference.load(tmp_path / "ref2.json").n_structures == 5

    # no store: the structures are required
    shutil.rmtree(copy / "labels")
    assert cli("rewire", "build-reference", "--model", copy / "student", "--out-dir", "out") == 2
    assert "give the training structures" in capsys.readouterr().err


def test_student_with_another_label_store_is_refused(student_folder, mace_adapter, tmp_path, monkeypatch, capsys):
    from mlff_calc.distill import label

    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy"
    resave(student_folder, copy / "student", "labels")
    label([si(seed=99)], mace_adapter, copy / "labels", n_rows=0, hessian_splits=(), progress=False)  # other data, where it is looked for
    assert cli("rewire", "build-reference", "--model", copy / "student", "--out-dir", "out") == 2
    assert "training_data_sha256" in capsys.readouterr().err
