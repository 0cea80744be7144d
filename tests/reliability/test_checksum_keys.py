"""Mandatory checksums: every JSON artifact whose ``content_sha256`` is renamed, deleted or stale is refused.

Each artifact is written by the library, then its manifest is edited: the key
renamed (with a changed value, the case that once applied c = 9.38 unchecked),
the key deleted, or a value changed under the old key. Loading must raise
ArtifactError; the first two name the key, the third the checksum.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from mlff_calc.artifacts import CHECKSUM_KEY
from mlff_calc.errors import ArtifactError

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")

TINY_STUDENT = {"channels": 8, "num_interactions": 1, "num_bessel": 6, "radial_mlp": [16]}
BASE = {"model_id": "mace-test", "sha256": "ab" * 32}


def si2(seed: int):
    atoms = bulk("Si", "diamond", 5.43)
    atoms.rattle(0.05, seed=seed)
    return atoms


# --------------------------------------------------------------------------- writers and loaders


def softening(root: Path, _):
    from mlff_calc.softening import SofteningFit

    path = root / "fit.json"
    SofteningFit(
        c=1.38,
        mode="reference",
        model_id="m",
        chemical_system="Si",
        chemical_systems=["Si"],
        source="test",
        n_structures=3,
        n_components=9,
        s=1 / 1.38,
        s_intercept=0.0,
        mae=0.1,
        cmae=0.05,
        mae_corrected=0.04,
    ).save(path)
    return path, lambda: SofteningFit.load(path), ("c",)


def ltau(root: Path, _):
    from mlff_calc.ltau import LTAU, Calibration, LTAUIndex, error_distributions

    rng = np.random.default_rng(0)
    dists = error_distributions(rng.lognormal(-3, 0.5, size=(10, 50)), n_bins=10, e_min=1e-3)
    index = LTAUIndex(rng.normal(size=(50, 4)), np.full(50, 14))
    folder = LTAU(index, dists, model_id="m", model_sha256="abc", spec={"family": "mace", "dim": 4, "layer": "test"}, calibration=Calibration(k=4, scale=1.3)).save(root / "ltau")
    return folder / "ltau.json", lambda: LTAU.load(folder), ("calibration", "scale")


def rewiring(root: Path, adapter):
    from mlff_calc.rewiring import SpectrumReference

    path = SpectrumReference.build([si2(k) for k in range(2)], model_id="m", cutoff=4.5, source="test").save(root / "ref.json")
    return Path(path), lambda: SpectrumReference.load(path), ("source",)


def weights_file(root: Path, _):
    """The bound weights file shared by TTT adapted weights, prior heads and fine-tunes."""
    from mlff_calc.models.weights_file import read_bound, write_bound
    from mlff_calc.ttt.layer import ADAPTED_FORMAT, ADAPTED_MANIFEST, ADAPTED_VERSION, ADAPTED_WEIGHTS

    folder = root / "adapted"
    names = {"manifest_name": ADAPTED_MANIFEST, "fmt": ADAPTED_FORMAT, "version": ADAPTED_VERSION}
    write_bound(folder, weights_name=ADAPTED_WEIGHTS, state={"w": torch.ones(3)}, base_model=BASE, prior={"name": "lj"}, **names)
    return folder / ADAPTED_MANIFEST, lambda: read_bound(folder, kind="adapted", base_model=BASE, foreign="foreign {folder} {model_id}", **names), ("prior", "name")


def student(root: Path, _):
    from mlff_calc.distill import StudentAdapter, save_student

    folder = root / "student"
    save_student(StudentAdapter.create([14], device="cpu", dtype="float64", architecture=TINY_STUDENT, seed=0), folder)
    return folder / "student.json", lambda: StudentAdapter.load(folder, device="cpu"), ("mlff_calc_version",)


def labels(root: Path, adapter):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.distill import LabelStore, SampleSet, label

    samples = SampleSet([si2(k) for k in range(2)], np.array(["train", "valid"]), np.array(["input"] * 2), {"seed": 0})
    samples.write(root / "samples")
    label(samples, MLFFCalculator(adapter), root / "labels", chunk_size=2, full_hessian_max_dof=12, n_rows=2, progress=False)
    return root / "labels" / "labels.json", lambda: LabelStore(root / "labels").records(), ("mlff_calc_version",)


def train_history(root: Path, _):
    """``ltau build`` reads the label store a student was trained on from train-history.json."""
    from mlff_calc.artifacts import write_json
    from mlff_calc.cli.ltau import run_inputs

    run = root / "run"
    (root / "store").mkdir()
    write_json(run / "train-history.json", {"history": [], "metrics": {}, "config": {"label_store": str(root / "store")}})
    np.savez(run / "error_log.npz", errors=np.zeros((1, 1)))
    args = argparse.Namespace(run_dir=run, model=None, labels=None, no_calibration=True, calibration=None)
    return run / "train-history.json", lambda: run_inputs(args), ("config", "label_store")


WRITERS = {"softening": softening, "ltau": ltau, "rewiring": rewiring, "weights_file": weights_file, "student": student, "labels": labels, "train_history": train_history}


def edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def change_value(data: dict, keys) -> None:
    *parents, last = keys
    target = data
    for key in parents:
        target = target[key]
    old = target[last]
    target[last] = old + 8.0 if isinstance(old, float) else f"{old}-edited"


@pytest.fixture(params=sorted(WRITERS))
def artifact(request, tmp_path):
    adapter = request.getfixturevalue("mace_adapter") if request.param == "labels" else None
    path, load, keys = WRITERS[request.param](tmp_path, adapter)
    load()  # the pristine artifact loads
    return path, load, keys


# --------------------------------------------------------------------------- the tests


def test_renamed_key_with_changed_value_is_refused(artifact):
    path, load, keys = artifact

    def rename(data):
        data["sha256_of_content"] = data.pop(CHECKSUM_KEY)
        change_value(data, keys)

    edit(path, rename)
    with pytest.raises(ArtifactError, match=f"{path}.*has no {CHECKSUM_KEY}"):
        load()


def test_deleted_key_is_refused(artifact):
    path, load, _ = artifact
    edit(path, lambda data: data.pop(CHECKSUM_KEY))
    with pytest.raises(ArtifactError, match=f"{path}.*has no {CHECKSUM_KEY}"):
        load()


def test_changed_value_is_refused(artifact):
    path, load, keys = artifact
    edit(path, lambda data: change_value(data, keys))
    with pytest.raises(ArtifactError, match=f"{path}.*does not match its content checksum"):
        load()


def test_changed_value_under_a_null_checksum_is_refused(artifact):
    path, load, keys = artifact

    def null(data):
        data[CHECKSUM_KEY] = None
        change_value(data, keys)

    edit(path, null)
    with pytest.raises(ArtifactError, match="checksum"):
        load()
