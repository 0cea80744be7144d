"""Students: training, Hessian rows by VJP, save/load, refusal of bad artifacts, ASE use."""

import hashlib
import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from helpers import require_backend, si8

import mlff_calc
from mlff_calc.artifacts import stamp
from mlff_calc.distill import DistillationLoss, LossWeights, StudentAdapter, save_student
from mlff_calc.distill.loss import TrainItem
from mlff_calc.errors import ArtifactError, UnsupportedElementError

require_backend("mace", "mace")


def rattled(seed, n=1):
    atoms = si8() * (n, 1, 1)
    atoms.rattle(0.08, seed=seed)
    return atoms


def item(atoms, rows):
    n3 = 3 * len(atoms)
    return TrainItem(
        index=0,
        atoms=atoms,
        energy=torch.zeros((), dtype=torch.float64),
        forces=torch.zeros(len(atoms), 3, dtype=torch.float64),
        stress=None,
        hessian_rows=np.asarray(rows),
        hessian=torch.zeros(len(rows), n3, dtype=torch.float64),
    )


@pytest.fixture(scope="module")
def student():
    return StudentAdapter.create([14], dtype="float64", architecture={"channels": 8, "num_interactions": 2, "num_bessel": 6, "radial_mlp": [16]}, scale=2.0, seed=1)


def test_vjp_rows_match_finite_differences(student):
    """One VJP per round gives every structure's row (block-diagonal batch Jacobian); = -dF/dx by FD."""
    a, b = rattled(1), rattled(2, n=2)
    rows = [[0, 7, 23], [5, 40]]
    loss = DistillationLoss(LossWeights(), rows_per_structure=3)
    out = student.compute([a, b], create_graph=True, min_distance=None)
    offsets = np.cumsum([0, len(a), len(b)])
    vjp = loss._rows_vjp(out, rows, offsets, rounds=3)
    fd = loss._rows_fd(student, [item(a, rows[0]), item(b, rows[1])], rows, rounds=3)
    h = 1e-4
    for s, atoms in enumerate((a, b)):
        for r, dof in enumerate(rows[s]):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[dof // 3, dof % 3] += h
            minus.positions[dof // 3, dof % 3] -= h
            fp, fm = (x["forces"].reshape(-1) for x in student.evaluate([plus, minus]))
            reference = -(fp - fm) / (2 * h)
            np.testing.assert_allclose(vjp[r][s].detach().numpy(), reference, atol=1e-6)
            np.testing.assert_allclose(fd[r][s].detach().numpy(), reference, atol=1e-9)
            np.testing.assert_allclose(vjp[r][s].detach().numpy(), student.hessian(atoms, [dof])[0], atol=1e-10)
        assert vjp[2][1] is None  # structure b has only two rows


def test_hessian_loss_has_weight_gradients(student):
    atoms = rattled(3)
    it = item(atoms, [0, 1, 2, 3])
    for method in ("vjp", "fd"):
        loss_fn = DistillationLoss(LossWeights(energy=0.0, forces=0.0, kd=1.0), rows_per_structure=2, row_method=method, seed=0)
        student.module.zero_grad(set_to_none=True)
        loss, parts, err = loss_fn(student, [it])
        loss.backward()
        grads = [p.grad for p in student.module.parameters() if p.grad is not None]
        assert parts["hessian_l2mae"] > 0 and grads and any(float(g.abs().sum()) > 0 for g in grads)
        assert err.shape == (8,)
    student.module.zero_grad(set_to_none=True)


def test_training_reduces_the_loss(trained):
    result, _ = trained
    hist = result.history
    assert len(hist) == 4
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert "train_hessian_l2mae" in hist[0]
    # kd_schedule=10.0 eV/Å: halved once, after the first epoch under the threshold
    assert [row["lambda_kd"] for row in hist] == [400.0, 200.0, 200.0, 200.0]
    assert set(result.metrics["test"]) >= {"force_mae", "energy_mae_per_atom", "stress_mae"}


def test_error_log(trained, store):
    result, out = trained
    with np.load(out / "error_log.npz") as log:
        errors, sidx, aidx = log["errors"], log["structure_index"], log["atom_index"]
        assert errors.dtype == np.float32 and errors.shape == (4, len(sidx))
        assert np.all(np.isfinite(errors)) and np.all(errors >= 0)
        assert np.array_equal(log["epoch"], np.arange(4))
    train = store.records("train")
    assert len(sidx) == sum(len(r.atoms) for r in train)
    assert sorted(set(sidx.tolist())) == sorted(r.index for r in train)
    for r in train:
        assert aidx[sidx == r.index].tolist() == list(range(len(r.atoms)))


def test_save_load_round_trip(trained, tmp_path):
    result, out = trained
    manifest = json.loads((out / "student.json").read_text())
    assert manifest["format"] == "mlff_calc.student" and manifest["format_version"] == 1
    assert manifest["teacher"]["model_id"].startswith("mace:") and len(manifest["training_data_sha256"]) == 64
    assert manifest["elements"]["symbols"] == ["Si"] and manifest["dtype"] == "float64"
    loaded = StudentAdapter.load(out, device="cpu")
    atoms = rattled(9, n=2)
    a = result.adapter.evaluate([atoms], ("energy", "forces", "stress"))[0]
    b = loaded.evaluate([atoms], ("energy", "forces", "stress"))[0]
    assert abs(a["energy"] - b["energy"]) <= 1e-12 * abs(a["energy"])
    np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-12)
    np.testing.assert_allclose(b["stress"], a["stress"], atol=1e-12)
    save_student(loaded, tmp_path / "again", teacher=manifest["teacher"])
    assert StudentAdapter.load(tmp_path / "again", device="cpu").evaluate([atoms])[0]["energy"] == b["energy"]


def test_load_as_ase_calculator(trained):
    _, out = trained
    calc = mlff_calc.load(out, device="cpu")
    assert calc.adapter.family == "student"
    atoms = rattled(4)
    atoms.calc = calc
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert np.isfinite(energy) and forces.shape == (8, 3) and stress.shape == (6,)
    np.testing.assert_allclose(forces.sum(axis=0), 0, atol=1e-10)
    h = 1e-4
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[3, 1] += h
    minus.positions[3, 1] -= h
    plus.calc = minus.calc = calc
    assert -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h) == pytest.approx(forces[3, 1], abs=1e-7)


def test_unsupported_element(trained):
    _, out = trained
    calc = mlff_calc.load(out, device="cpu")
    nacl = bulk("NaCl", "rocksalt", 5.64)
    nacl.calc = calc
    with pytest.raises(UnsupportedElementError, match="Na"):
        nacl.get_potential_energy()
    sige = Atoms("SiGe", positions=[[0, 0, 0], [1.2, 1.2, 1.2]], cell=[5, 5, 5], pbc=True)
    sige.calc = calc
    with pytest.raises(UnsupportedElementError, match="Ge"):
        sige.get_forces()


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("damage", ["weights_bytes", "weights_truncated", "manifest_json", "architecture", "check_energy", "format"])
def test_bad_student_artifacts(trained, tmp_path, damage):
    import shutil

    _, out = trained
    folder = tmp_path / "s"
    shutil.copytree(out, folder)
    weights, manifest_path = folder / "student.pt", folder / "student.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "weights_bytes":
        data = bytearray(weights.read_bytes())
        data[-100] ^= 0xFF
        weights.write_bytes(bytes(data))
        match = "sha256"
    elif damage == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:500])
        manifest["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(stamp(manifest)))  # well-formed, with a bad field
        match = "cannot be read"
    elif damage == "manifest_json":
        manifest_path.write_text(manifest_path.read_text()[:50])
        match = "not valid JSON"
    elif damage == "architecture":
        manifest["architecture"]["channels"] = 16
        manifest_path.write_text(json.dumps(stamp(manifest)))  # well-formed, with a bad field
        match = "do not fit"
    elif damage == "check_energy":
        manifest["check"]["energy_eV"] += 0.5
        manifest_path.write_text(json.dumps(stamp(manifest)))  # well-formed, with a bad field
        match = "check structure"
    else:
        manifest["format_version"] = 99
        manifest_path.write_text(json.dumps(stamp(manifest)))  # well-formed, with a bad field
        match = "version"
    before = digest(folder)
    with pytest.raises(ArtifactError, match=match):
        StudentAdapter.load(folder, device="cpu")
    with pytest.raises(ArtifactError):
        mlff_calc.load(folder, device="cpu")
    assert digest(folder) == before
