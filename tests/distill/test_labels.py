"""Teacher labels: Hessian rows and their sign, resuming, and refusal of foreign or corrupt stores."""

import hashlib
import json

import numpy as np
import pytest
from ase.build import bulk
from helpers import si8

from mlff_calc.artifacts import stamp
from mlff_calc.distill import LabelStore, label
from mlff_calc.errors import ArtifactError


def snapshot(folder):
    """Hashes of the store's files; ``.lock`` and ``.claims.json`` (concurrent writers' bookkeeping) left out."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_store_contents(store, samples):
    records = store.records()
    assert [r.index for r in records] == list(range(len(samples)))
    assert store.complete and store.manifest["format"] == "mlff_calc.labels" and store.manifest["format_version"] == 1
    assert store.manifest["teacher"]["model_id"].startswith("mace:")
    assert len(store.manifest["teacher"]["sha256"]) == 64
    assert "dF/dx = -H" in store.manifest["units"]["hessian"]
    for r in records:
        assert r.forces.shape == (8, 3) and r.stress.shape == (6,)
        if r.split == "train":
            assert r.hessian.shape == (6, 24) and len(set(r.hessian_rows.tolist())) == 6
        else:
            assert r.hessian.shape == (0, 24)


def test_labels_match_teacher(store, teacher):
    rec = next(r for r in store.records("train") if len(r.hessian_rows))
    res = teacher.evaluate([rec.atoms], ("energy", "forces", "stress"))[0]
    assert rec.energy == pytest.approx(res["energy"], abs=1e-10)
    np.testing.assert_allclose(rec.forces, res["forces"], atol=1e-10)
    np.testing.assert_allclose(rec.stress, res["stress"], atol=1e-10)
    fd = teacher.adapter.hessian(rec.atoms, rec.hessian_rows, method="fd", delta=1e-4)
    np.testing.assert_allclose(rec.hessian, fd, atol=1e-5 * max(1.0, np.abs(fd).max()))


def test_sign_convention_with_chgnet(chgnet_adapter, tmp_path):
    """At (near) equilibrium the diagonal is positive; F(x+h) - F(x-h) = -2h H[row]."""
    from mlff_calc.calculator import MLFFCalculator

    calc = MLFFCalculator(chgnet_adapter)
    atoms = si8()
    store = label([atoms], calc, tmp_path / "l", full_hessian_max_dof=0, n_rows=4, seed=0, progress=False)
    rec = store.records()[0]
    rows = rec.hessian_rows
    assert np.all(rec.hessian[np.arange(len(rows)), rows] > 0.5)  # eV/Å², stiff Si bonds
    h = 1e-3  # CHGNet's surface has structure on the 0.01 Å scale: central differences with 1e-2 Å are ~10 % off
    for k, row in enumerate(rows):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[row // 3, row % 3] += h
        minus.positions[row // 3, row % 3] -= h
        fp, fm = (r["forces"].reshape(-1) for r in calc.evaluate([plus, minus]))
        np.testing.assert_allclose(fp - fm, -2 * h * rec.hessian[k], atol=0.02 * np.abs(rec.hessian[k]).max() * 2 * h)


def test_full_hessian_for_small_cells(teacher, tmp_path):
    prim = bulk("Si", "diamond", 5.43)
    prim.rattle(0.03, seed=2)
    rec = label([prim], teacher, tmp_path / "l", progress=False).records()[0]
    assert rec.hessian_rows.tolist() == list(range(6))
    full = teacher.adapter.hessian(prim, method="autograd")
    np.testing.assert_allclose(rec.hessian, full, atol=1e-12)
    np.testing.assert_allclose(rec.hessian, rec.hessian.T, atol=1e-8)


class Interrupting:
    """Wraps a calculator; raises KeyboardInterrupt on the n-th batched evaluate."""

    def __init__(self, calc, fail_at=None):
        self.calc, self.fail_at, self.calls = calc, fail_at, 0
        self.adapter, self.layers = calc.adapter, calc.layers

    def evaluate(self, atoms_list, properties):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.calc.evaluate(atoms_list, properties)

    def get_hessian(self, atoms, rows=None, method="auto"):
        return self.calc.get_hessian(atoms, rows, method=method)


def test_resume_skips_finished_chunks(samples, teacher, tmp_path, monkeypatch):
    import mlff_calc.distill.labels as labels_mod

    monkeypatch.setattr(labels_mod, "as_calculator", lambda t: t)
    folder = tmp_path / "store"
    flaky = Interrupting(teacher, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        label(samples, flaky, folder, chunk_size=4, full_hessian_max_dof=12, n_rows=6, seed=1, progress=False)
    done = snapshot(folder)
    assert set(done) == {"labels.json", "labels-00000.npz", "labels-00001.npz"}
    with pytest.raises(ArtifactError, match="incomplete"):
        LabelStore(folder).records()
    counting = Interrupting(teacher)
    store = label(samples, counting, folder, chunk_size=4, full_hessian_max_dof=12, n_rows=6, seed=1, progress=False)
    n_chunks = store.manifest["n_chunks"]
    assert counting.calls == n_chunks - 2
    after = snapshot(folder)
    assert after["labels-00000.npz"] == done["labels-00000.npz"] and after["labels-00001.npz"] == done["labels-00001.npz"]
    assert len(store.records()) == len(samples)


def test_other_teacher_is_refused(store, teacher):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.distill import SampleSet
    from mlff_calc.models.mace import MACEAdapter
    from mlff_calc.models.mace_build import build_small_mace

    other = MLFFCalculator(MACEAdapter(build_small_mace(seed=7), model_id="other", device="cpu", dtype="float64"))
    before = snapshot(store.folder)
    records = store.records()
    samples = SampleSet([r.atoms for r in records], np.array([r.split for r in records]), np.array(["x"] * len(records)))
    with pytest.raises(ArtifactError, match="teacher"):
        label(samples, other, store.folder, chunk_size=4, full_hessian_max_dof=12, n_rows=6, seed=1, progress=False)
    with pytest.raises(ArtifactError, match="other inputs"):
        label(samples.structures[:3], teacher, store.folder, chunk_size=4, full_hessian_max_dof=12, n_rows=6, seed=1, progress=False)
    assert snapshot(store.folder) == before


def test_corrupt_chunk_and_manifest(store, samples, teacher, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(store.folder, folder)
    chunk = folder / "labels-00001.npz"
    chunk.write_bytes(chunk.read_bytes()[:200])
    before = snapshot(folder)
    with pytest.raises(ArtifactError, match="labels-00001.npz"):
        LabelStore(folder).records()
    with pytest.raises(ArtifactError, match="labels-00001.npz"):
        label(samples, teacher, folder, chunk_size=4, full_hessian_max_dof=12, n_rows=6, seed=1, progress=False)
    assert snapshot(folder) == before
    (folder / "labels.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        LabelStore(folder)
    (folder / "labels.json").write_text(json.dumps(stamp({"format": "mlff_calc.student", "format_version": 1})))
    with pytest.raises(ArtifactError, match="not a mlff_calc.labels"):
        LabelStore(folder)


def test_softened_teacher_labels_and_identity(teacher, tmp_path):
    """Layers apply to every label (forces and Hessian rows scale by c) and are part of the teacher's identity."""
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.softening import SofteningLayer

    atoms = si8()
    atoms.rattle(0.05, seed=4)
    plain = label([atoms], teacher, tmp_path / "plain", full_hessian_max_dof=0, n_rows=3, progress=False).records()[0]
    soft_calc = MLFFCalculator(teacher.adapter, layers=[SofteningLayer(1.3)])
    soft = label([atoms], soft_calc, tmp_path / "soft", full_hessian_max_dof=0, n_rows=3, progress=False).records()[0]
    np.testing.assert_allclose(soft.forces, 1.3 * plain.forces, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(soft.hessian, 1.3 * plain.hessian, rtol=1e-10, atol=1e-12)
    with pytest.raises(ArtifactError, match="layers"):
        label([atoms], soft_calc, tmp_path / "plain", full_hessian_max_dof=0, n_rows=3, progress=False)


def test_teacher_without_double_backward_falls_back_to_fd(mace_small_path, tmp_path, caplog):
    import logging

    from mlff_calc.models.mace import MACEAdapter

    adapter = MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")
    adapter.double_backward = False  # as a backend whose energy cannot be differentiated twice
    atoms = si8()
    atoms.rattle(0.05, seed=5)
    with caplog.at_level(logging.INFO, logger="mlff_calc"):
        rec = label([atoms], adapter, tmp_path / "l", full_hessian_max_dof=0, n_rows=2, progress=False).records()[0]
    assert any("finite differences" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(rec.hessian, adapter.hessian(atoms, rec.hessian_rows, method="fd"), atol=1e-12)
    np.testing.assert_allclose(rec.hessian, adapter.hessian(atoms, rec.hessian_rows, method="autograd"), atol=1e-4)


def test_fixed_atoms_have_no_rows(teacher, tmp_path):
    from ase.constraints import FixAtoms

    atoms = si8()
    atoms.rattle(0.04, seed=6)
    atoms.set_constraint(FixAtoms(indices=[0, 5]))
    rec = label([atoms], teacher, tmp_path / "l", progress=False).records()[0]
    assert rec.fixed.tolist() == [True, False, False, False, False, True, False, False]
    assert rec.hessian_rows.tolist() == [r for r in range(24) if r // 3 not in (0, 5)]
    assert rec.atoms.constraints and rec.hessian.shape == (18, 24)
