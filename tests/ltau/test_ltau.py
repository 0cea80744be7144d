"""LTAU-FF uncertainty: distribution arithmetic, k-NN, artifacts, the layer, the monitor, end to end.

The end-to-end fixtures follow tests/distill/conftest.py: the small float64
ScaleShiftMACE of the top-level conftest labels a few Si samples and a tiny
student is trained on them for a few epochs, writing ``error_log.npz``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import require_backend, si8

from mlff_calc.errors import ArtifactError, ConfigurationError
from mlff_calc.ltau import (
    LTAU,
    Calibration,
    LTAUIndex,
    build_ltau,
    calibrate,
    cdf_below,
    central_interval,
    error_distributions,
    expected_error,
    quantile,
)

require_backend("faiss", "ltau")

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")


# distributions: hand-computed cases -------------------------------------------


def three_bins():
    """One atom, 4 epochs, linear bins [0,1), [1,2), [2,3]: p = (1/4, 1/2, 1/4)."""
    return error_distributions(np.array([[0.5], [1.5], [1.5], [2.5]]), n_bins=3, log_bins=False, e_min=0.0, e_max=3.0)


def test_three_bin_histogram_and_cdf():
    d = three_bins()
    np.testing.assert_allclose(d.edges, [0, 1, 2, 3])
    np.testing.assert_allclose(d.probabilities, [[0.25, 0.5, 0.25]])
    np.testing.assert_allclose(d.densities, [[0.25, 0.5, 0.25]])  # width 1
    edges, dens = d  # unpacks as (edges, densities)
    # P(e < tol): whole bins below tol's bin plus the covered fraction of its bin
    cases = {-1.0: 0.0, 0.0: 0.0, 0.4: 0.25 * 0.4, 1.0: 0.25, 1.5: 0.25 + 0.5 * 0.5, 2.0: 0.75, 2.6: 0.75 + 0.25 * 0.6, 3.0: 1.0, 9.0: 1.0}
    for tol, want in cases.items():
        assert cdf_below(edges, dens, tol)[0] == pytest.approx(want), tol
    assert expected_error(edges, dens)[0] == pytest.approx(0.25 * 0.5 + 0.5 * 1.5 + 0.25 * 2.5)
    # quantiles invert the piecewise-linear CDF: 5 % lies 0.2 into bin 0, 95 % 0.8 into bin 2
    np.testing.assert_allclose(central_interval(edges, dens, 0.9), [[0.2, 2.8]])
    assert quantile(edges, dens, 0.5)[0] == pytest.approx(1.5)


def test_cdf_with_unequal_widths_uses_density_times_width():
    # bins [0,1), [1,3), [3,7): errors 0.5, 2, 2, 5 -> p = (.25, .5, .25), densities (.25, .25, .0625)
    d = error_distributions(np.array([[0.5], [2.0], [2.0], [5.0]]), n_bins=3, log_bins=False, e_min=0.0, e_max=3.0)
    edges = np.array([0.0, 1.0, 3.0, 7.0])
    p = np.array([[0.25, 0.5, 0.25]])
    dens = p / np.diff(edges)
    np.testing.assert_allclose(np.sum(dens * np.diff(edges)), 1.0)
    # tol = 2: bin 0 whole (0.25) + half of bin 1 (density 0.25 over 1 of its 2 Å) = 0.5
    assert cdf_below(edges, dens, 2.0)[0] == pytest.approx(0.5)
    assert cdf_below(edges, dens, 4.0)[0] == pytest.approx(0.75 + 0.0625 * 1.0)
    assert cdf_below(edges, probabilities=p, tol=4.0)[0] == pytest.approx(0.8125)
    assert expected_error(edges, dens)[0] == pytest.approx(0.25 * 0.5 + 0.5 * 2 + 0.25 * 5)
    assert d.probabilities.shape == (1, 3)


def test_normalisation_log_bins_burn_in_nan_and_clipping():
    rng = np.random.default_rng(0)
    errors = rng.lognormal(-3, 1, size=(40, 25)).astype(np.float32)
    errors[3, 4] = np.nan
    errors[10, 7] = 1e-12  # below e_min: counted in the first bin
    d = error_distributions(errors, n_bins=30, burn_in=5, e_min=1e-4)
    assert np.allclose(d.edges[1:] / d.edges[:-1], d.edges[1] / d.edges[0])  # log-spaced
    assert d.edges[0] == pytest.approx(1e-4) and d.edges[-1] >= np.nanmax(errors[5:])
    np.testing.assert_allclose((d.densities * d.widths).sum(axis=1), 1.0, rtol=1e-6)
    assert d.n_epochs.tolist() == [35] * 25
    assert d.probabilities[7, 0] >= 1 / 35
    d0 = error_distributions(errors, n_bins=30, burn_in=0, e_min=1e-4)
    assert d0.n_epochs[4] == 39  # the NaN is skipped
    # a distribution's CDF at the last edge is 1 and is monotone
    tols = np.geomspace(1e-5, d.edges[-1] * 2, 50)
    c = np.stack([cdf_below(d.edges, d.densities, t) for t in tols])
    assert np.all(np.diff(c, axis=0) >= -1e-12) and np.allclose(c[-1], 1.0)
    # CDF and quantile are inverse to each other
    q = quantile(d.edges, d.densities, 0.3)
    np.testing.assert_allclose(cdf_below(d.edges, d.densities, q), 0.3, atol=1e-6)


def test_distribution_input_errors():
    with pytest.raises(ConfigurationError):
        error_distributions(np.ones(5))
    with pytest.raises(ConfigurationError):
        error_distributions(np.ones((3, 2)), burn_in=3)
    with pytest.raises(ConfigurationError):
        error_distributions(np.full((3, 2), np.nan))
    with pytest.raises(ConfigurationError):
        error_distributions(np.ones((3, 2)), e_min=0.0)  # log bins need e_min > 0


# k-NN ---------------------------------------------------------------------------------


def brute_force(train, query, k):
    d = np.linalg.norm(query[:, None, :].astype(np.float64) - train[None, :, :].astype(np.float64), axis=-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d, ids, axis=1)


def test_flat_index_matches_brute_force():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(600, 12))
    query = rng.normal(size=(30, 12))
    index = LTAUIndex(train, np.full(600, 14))
    ids, dist = index.query(query, k=7)
    want_ids, want_d = brute_force(train, query, 7)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-5)  # distances, not squared
    assert (ids == want_ids).mean() > 0.99  # ties/float32 rounding aside, the same neighbours


def test_per_element_index_and_missing_element():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(300, 6)).astype(np.float32)
    numbers = rng.choice([8, 14], size=300)
    query = rng.normal(size=(20, 6))
    qnum = np.array([8, 14] * 10)
    index = LTAUIndex(train, numbers, per_element=True)
    ids, dist = index.query(query, qnum, k=5)
    for r in range(20):
        sel = np.flatnonzero(numbers == qnum[r])
        want_ids, want_d = brute_force(train[sel], query[r : r + 1], 5)
        np.testing.assert_allclose(dist[r], want_d[0], rtol=1e-4, atol=1e-5)
        assert set(ids[r]) == set(sel[want_ids[0]])
        assert np.all(numbers[ids[r]] == qnum[r])
    ids, dist = index.query(query[:2], [1, 14], k=3)  # hydrogen: no training atom of that element
    assert np.all(ids[0] == -1) and np.all(np.isinf(dist[0])) and np.all(ids[1] >= 0)
    with pytest.raises(ConfigurationError):
        index.query(query, k=3)  # numbers needed


def test_hnsw_recall():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(3000, 16))
    query = rng.normal(size=(50, 16))
    ids, _ = LTAUIndex(train, np.ones(3000), kind="hnsw", ef_search=128).query(query, k=10)
    want, _ = brute_force(train, query, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall > 0.9


# artifacts ------------------------------------------------------------------------------


def synthetic_ltau(model_id="m", sha="abc", family="mace", dim=8, n=200, seed=0):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, dim))
    errs = rng.lognormal(-3, 0.5, size=(20, n))
    dists = error_distributions(errs, n_bins=20, e_min=1e-3)
    index = LTAUIndex(desc, np.full(n, 14))
    return LTAU(index, dists, model_id=model_id, model_sha256=sha, spec={"family": family, "dim": dim, "layer": "test"}, calibration=Calibration(k=4, scale=1.3))


def test_artifact_round_trip(tmp_path):
    ltau = synthetic_ltau()
    ltau.save(tmp_path / "l")
    back = LTAU.load(tmp_path / "l")
    assert back.model_id == "m" and back.model_sha256 == "abc" and back.k == 4 and back.calibration.scale == 1.3
    np.testing.assert_array_equal(back.dists.edges, ltau.dists.edges)
    q = np.random.default_rng(9).normal(size=(5, 8))
    a, b = ltau.predict(q, tolerance=0.05), back.predict(q, tolerance=0.05)
    np.testing.assert_allclose(a.expected, b.expected)
    np.testing.assert_array_equal(a.neighbours, b.neighbours)
    assert a.expected == pytest.approx(1.3 * expected_error(ltau.dists.edges, probabilities=ltau.neighbour_probabilities(a.neighbours)))


@pytest.mark.parametrize("damage", ["npz", "faiss", "json", "missing", "version"])
def test_corrupt_artifact_refused_untouched(tmp_path, damage):
    import json

    folder = synthetic_ltau().save(tmp_path / "l")
    target = {"npz": "distributions.npz", "faiss": "index.faiss", "json": "ltau.json", "missing": "index.faiss", "version": "ltau.json"}[damage]
    path = folder / target
    if damage == "missing":
        path.unlink()
    elif damage == "version":
        data = json.loads(path.read_text())
        data["format_version"] = 99
        data.pop("content_sha256")
        from mlff_calc.artifacts import write_json

        write_json(path, data)
    else:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ArtifactError):
        LTAU.load(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_layer_refuses_other_model_or_descriptor_spec(tmp_path, mace_adapter):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer

    dim = mace_adapter.evaluate([si8()], ("energy", "descriptors"))[0]["descriptors"].shape[1]
    cases = {
        "other": synthetic_ltau(model_id="another-model", sha=mace_adapter.sha256, dim=dim),
        "sha": synthetic_ltau(model_id=mace_adapter.model_id, sha="0" * 64, dim=dim),
        "dim": synthetic_ltau(model_id=mace_adapter.model_id, sha=mace_adapter.sha256, dim=dim + 3),
        "family": synthetic_ltau(model_id=mace_adapter.model_id, sha=mace_adapter.sha256, dim=dim, family="chgnet"),
    }
    words = {"other": "another-model", "sha": "sha256", "dim": "dimensional", "family": "chgnet"}
    for name, ltau in cases.items():
        ltau.save(tmp_path / name)
        with pytest.raises(ArtifactError, match=words[name]):
            MLFFCalculator(mace_adapter, layers=[LTAULayer.from_dir(tmp_path / name)])
    ok = synthetic_ltau(model_id=mace_adapter.model_id, sha=mace_adapter.sha256, dim=dim)
    ok.save(tmp_path / "ok")
    MLFFCalculator(mace_adapter, layers=[LTAULayer.from_dir(tmp_path / "ok")])


# end to end: student -> error log -> index -> layer ---------------------------------------


@pytest.fixture(scope="module")
def ltau_store(mace_adapter, tmp_path_factory):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.distill import label, sample

    teacher = MLFFCalculator(mace_adapter)
    samples = sample(
        [si8()], teacher, temperatures_K=(600.0,), md_frames_per_T=6, md_interval=2, md_equilibration_steps=2, n_rattle=8, rattle_std_A=0.05, n_strain=4, split=(0.6, 0.2, 0.2), seed=3, progress=False
    )
    return label(samples, teacher, tmp_path_factory.mktemp("ltau-labels") / "store", chunk_size=8, n_rows=0, hessian_splits=(), seed=1, progress=False)


@pytest.fixture(scope="module")
def ltau_built(ltau_store, tmp_path_factory):
    from mlff_calc.distill import load_student, train_student

    out = tmp_path_factory.mktemp("ltau-student") / "si"
    train_student(
        ltau_store,
        architecture={"channels": 8, "num_interactions": 1, "num_bessel": 6, "radial_mlp": [16]},
        dtype="float64",
        epochs=6,
        batch_size=3,
        lr=1e-2,
        lambda_kd=0.0,
        seed=0,
        out_dir=out,
        progress=False,
    )
    student = load_student(out, device="cpu")
    ltau = build_ltau(student, ltau_store, out / "error_log.npz", out / "ltau", n_bins=40, calibration=ltau_store, ks=(1, 3, 5))
    return student, ltau, out


def test_build_uses_error_log_order_and_calibrates(ltau_built, ltau_store):
    from mlff_calc.artifacts import read_npz
    from mlff_calc.ltau import compute_descriptors

    student, ltau, out = ltau_built
    log = read_npz(out / "error_log.npz", kind="error log")
    assert ltau.index.ntotal == log["errors"].shape[1]
    np.testing.assert_array_equal(ltau.index.numbers, log["numbers"])
    # row r of the index is the descriptor of (structure_index[r], atom_index[r])
    recs = {r.index: r.atoms for r in ltau_store.records()}
    for r in (0, 5, len(log["atom_index"]) - 1):
        desc, _ = compute_descriptors(student, [recs[int(log["structure_index"][r])]])
        ids, dist = ltau.index.query(desc[int(log["atom_index"][r]) : int(log["atom_index"][r]) + 1], k=1)
        assert dist[0, 0] < 1e-5
    cal = ltau.calibration
    assert cal.k in (1, 3, 5) and cal.scale > 0 and cal.n_atoms > 0 and len(cal.table) == 3
    assert abs(cal.coverage - 0.9) <= abs(cal.coverage_uncalibrated - 0.9) + 1e-12
    loaded = LTAU.load(out / "ltau")
    assert loaded.calibration.k == cal.k and loaded.model_id == student.model_id and loaded.spec["dim"] == ltau.index.dim


def test_layer_end_to_end_one_forward_pass(ltau_built, monkeypatch):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import PER_ATOM, PER_STRUCTURE, LTAULayer

    student, ltau, out = ltau_built
    layer = LTAULayer.from_dir(out / "ltau", tolerance_eV_per_A=0.05)
    calc = MLFFCalculator(student, layers=[layer])
    for key in PER_ATOM + PER_STRUCTURE:
        assert key in calc.implemented_properties
    calls = []
    original = student.evaluate
    monkeypatch.setattr(student, "evaluate", lambda *a, **kw: calls.append(a[1]) or original(*a, **kw))
    atoms = si8()
    atoms.rattle(0.05, seed=4)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert len(calls) == 1 and "descriptors" in calls[0]
    res = calc.results
    assert "descriptors" not in res  # asked for by the layer only
    assert "descriptors" in calc.evaluate([atoms], ("energy", "forces", "descriptors"))[0]
    u, p, iv, ood = (res[k] for k in PER_ATOM)
    assert u.shape == (8,) and p.shape == (8,) and iv.shape == (8, 2) and ood.shape == (8,)
    assert np.all(u > 0) and np.all((p >= 0) & (p <= 1)) and np.all(iv[:, 0] <= iv[:, 1]) and np.all(ood >= 0)
    assert res["forces_uncertainty_max"] == pytest.approx(u.max()) and res["ood_score_mean"] == pytest.approx(ood.mean())
    assert calc.get_property("forces_uncertainty_max", atoms) == pytest.approx(u.max())
    # the same numbers as LTAU.predict on the model's descriptors
    calls.clear()
    desc = original([atoms], ("energy", "descriptors"))[0]["descriptors"]
    pred = ltau.predict(desc, atoms.numbers, tolerance=0.05)
    np.testing.assert_allclose(u, pred.expected)
    np.testing.assert_allclose(forces, original([atoms], ("energy", "forces"))[0]["forces"])
    # a strongly compressed cell lies further from the training atoms than a training-like one
    squeezed = si8(4.7)
    squeezed.rattle(0.05, seed=5)
    r_in, r_out = calc.evaluate([atoms.copy(), squeezed])
    assert r_out["ood_score_mean"] > r_in["ood_score_mean"]


@pytest.mark.parametrize("workers", [1, 2])
def test_overlapped_lookup_equals_lookup_after_the_pass(ltau_built, monkeypatch, workers):
    """The lookup started between forward and backward pass gives the same numbers, per structure of a batch."""
    import pickle

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import PER_ATOM, PER_STRUCTURE, LTAULayer

    student, ltau, _ = ltau_built
    seen, order = [], []
    original = student.evaluate
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **kw: order.append("backward") or grad(*a, **kw))

    def spy(atoms_list, props, **kw):
        hook = kw.get("on_descriptors")
        if hook is not None:  # record what the adapter hands the layer, and when
            kw["on_descriptors"] = lambda desc, numbers, n_atoms: seen.append((desc.shape, numbers.tolist(), list(n_atoms))) or order.append("lookup") or hook(desc, numbers, n_atoms)
        return original(atoms_list, props, workers=workers, **kw)

    monkeypatch.setattr(student, "evaluate", spy)
    frames = [si8() for _ in range(3)]
    for i, a in enumerate(frames):
        a.rattle(0.04, seed=10 + i)
    frames.append(si8(5.2))
    overlapped = MLFFCalculator(student, layers=[LTAULayer(ltau)]).evaluate(frames, ("energy", "forces", "stress"))
    passes = 1 if workers == 1 else len(frames)
    if workers == 1:
        assert order == ["lookup", "backward"]  # the lookup starts before the backward pass
    assert len(seen) == passes and all(s[0] == (8 * len(frames) // passes, ltau.index.dim) for s in seen)
    assert sum(len(s[2]) for s in seen) == len(frames) and all(n == 8 for s in seen for n in s[2])
    seen.clear()
    after = MLFFCalculator(student, layers=[LTAULayer(ltau, overlap=False)]).evaluate(frames, ("energy", "forces", "stress"))
    assert not seen  # without overlap nothing is started early
    for a, b in zip(overlapped, after):
        assert "descriptor_jobs" not in a
        for key in PER_ATOM + PER_STRUCTURE + ("energy", "forces", "stress"):
            np.testing.assert_array_equal(a[key], b[key])
    assert overlapped[3]["ood_score_mean"] != overlapped[0]["ood_score_mean"]  # rows were not mixed up
    clone = pickle.loads(pickle.dumps(LTAULayer(ltau)))  # a layer with a started thread still pickles
    assert clone._pool is None


def test_overlapped_lookup_raises_in_the_calling_thread(ltau_built):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.errors import ArtifactError
    from mlff_calc.layers.ltau import LTAULayer

    student, ltau, _ = ltau_built
    layer = LTAULayer(ltau)
    calc = MLFFCalculator(student, layers=[layer])
    layer.ltau = synthetic_ltau(model_id=student.model_id, dim=ltau.index.dim + 1)  # swapped after bind
    with pytest.raises(ArtifactError, match="dimensional descriptors"):
        calc.evaluate([si8()])


def test_extxyz_round_trip(ltau_built, tmp_path):
    import ase.io

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import PER_ATOM, LTAULayer

    student, _, out = ltau_built
    calc = MLFFCalculator(student, layers=[LTAULayer.from_dir(out / "ltau", annotate=True)])
    frames = [si8(), si8()]
    frames[1].rattle(0.08, seed=6)
    results = calc.evaluate(frames, ("energy", "forces"))
    ase.io.write(tmp_path / "u.extxyz", frames, format="extxyz")
    back = ase.io.read(tmp_path / "u.extxyz", index=":", format="extxyz")
    for frame, res, read in zip(frames, results, back):
        for key in PER_ATOM:
            np.testing.assert_allclose(read.arrays[key], res[key], rtol=1e-6, atol=1e-8)  # extxyz writes 8 decimals
        assert read.arrays["forces_error_interval"].shape == (8, 2)
        assert read.info["forces_uncertainty_max"] == pytest.approx(res["forces_uncertainty_max"])
        assert read.info["ood_score_mean"] == pytest.approx(res["ood_score_mean"])


def test_monitor_stops_run_over_threshold(ltau_built, tmp_path):
    import ase.io
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer, UncertaintyMonitor, UncertaintyThresholdExceeded

    student, _, out = ltau_built
    calc = MLFFCalculator(student, layers=[LTAULayer.from_dir(out / "ltau")])
    atoms = si8()
    atoms.rattle(0.1, seed=7)
    atoms.calc = calc
    # a threshold far below any prediction: the first observer call raises
    opt = BFGS(atoms, logfile=None)
    monitor = UncertaintyMonitor(atoms, threshold=1e-9, save_frames=tmp_path / "hot.extxyz")
    opt.attach(monitor, interval=1)
    with pytest.raises(UncertaintyThresholdExceeded) as info:
        opt.run(fmax=1e-6, steps=20)
    assert opt.nsteps == 0 and monitor.stopped and info.value.value > 1e-9
    saved = ase.io.read(tmp_path / "hot.extxyz", index=":")
    assert len(saved) == 1 and "forces_uncertainty" in saved[0].arrays
    # "stop" ends an MD run cleanly after the crossing step
    atoms2 = si8()
    atoms2.rattle(0.1, seed=8)
    atoms2.calc = calc
    md = VelocityVerlet(atoms2, timestep=1.0, logfile=None)
    mon2 = UncertaintyMonitor(atoms2, threshold=1e-9, action="stop", dyn=md)
    md.attach(mon2, interval=2)
    md.run(10)
    assert mon2.stopped and md.nsteps == 0 and len(mon2.history) == 1
    # a threshold above every value: the run goes to the end and the history is logged
    atoms3 = si8()
    atoms3.rattle(0.05, seed=8)
    atoms3.calc = calc
    md3 = VelocityVerlet(atoms3, timestep=1.0, logfile=None)
    mon3 = UncertaintyMonitor(atoms3, threshold=1e9)
    md3.attach(mon3, interval=2)
    md3.run(6)
    assert md3.nsteps == 6 and len(mon3.history) == 4 and not mon3.stopped and mon3.max_value > 0


def test_on_demand_lookup_runs_only_when_asked_for_and_without_a_model_call(ltau_built, monkeypatch, tmp_path):
    from ase.md.verlet import VelocityVerlet

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import PER_ATOM, PER_STRUCTURE, LTAULayer, UncertaintyMonitor
    from mlff_calc.workflows import snapshot

    student, ltau, out = ltau_built
    layer = LTAULayer.from_dir(out / "ltau", on_demand=True)
    calc = MLFFCalculator(student, layers=[layer])
    model_calls, lookups = [], []
    original, predict = student.evaluate, layer._predict
    monkeypatch.setattr(student, "evaluate", lambda *a, **kw: model_calls.append(1) or original(*a, **kw))
    monkeypatch.setattr(layer, "_predict", lambda *a: lookups.append(1) or predict(*a))
    atoms = si8()
    atoms.rattle(0.05, seed=21)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert len(model_calls) == 1 and not lookups and "forces_uncertainty" not in calc.results
    u_max = calc.get_property("forces_uncertainty_max", atoms)  # same atoms: the lookup, no model call
    assert len(model_calls) == 1 and len(lookups) == 1
    eager = MLFFCalculator(student, layers=[LTAULayer(ltau)]).evaluate([atoms.copy()], ("energy", "forces"))[0]
    model_calls.clear(), lookups.clear()
    assert u_max == eager["forces_uncertainty_max"]
    for key in PER_ATOM + PER_STRUCTURE:
        np.testing.assert_array_equal(calc.results[key], eager[key])
    np.testing.assert_array_equal(forces, eager["forces"])
    atoms.positions[0, 0] += 0.01  # moved atoms: a new model call, then the lookup for them
    calc.get_property("forces_uncertainty", atoms)
    assert len(model_calls) == 1 and len(lookups) == 1
    # asked for explicitly, they come with the forces from one pass
    res = calc.evaluate([atoms], ("energy", "forces", "ood_score"))[0]
    assert "forces_uncertainty_max" in res and len(model_calls) == 2 and len(lookups) == 2
    # MD with a monitor every 3 steps and frames written every 3 steps: one lookup per check, none in between
    model_calls.clear(), lookups.clear()
    md = VelocityVerlet(atoms, timestep=1.0, logfile=None)
    monitor = UncertaintyMonitor(atoms, threshold=1e9)
    frames = []
    md.attach(monitor, interval=3)
    md.attach(lambda: frames.append(snapshot(atoms)), interval=3)
    md.run(9)
    assert len(model_calls) == 9 and len(lookups) == 3 and len(monitor.history) == 4  # the start was evaluated and looked up above
    assert all("forces_uncertainty" in f.arrays and f.info["forces_uncertainty_max"] > 0 for f in frames)
    assert [f.info["forces_uncertainty_max"] for f in frames] == [v for _, v in monitor.history]
    assert layer.describe()["on_demand"] is True


def test_calibrate_recovers_scale():
    """Errors drawn from the training distributions times 2: calibration finds scale ~ 2."""
    rng = np.random.default_rng(5)
    n, dim = 400, 4
    desc = rng.normal(size=(n, dim))
    sigma = np.exp(desc[:, 0])  # error scale varies smoothly with the descriptor
    errs = np.abs(rng.normal(size=(60, n))) * sigma * 0.05
    ltau = LTAU(LTAUIndex(desc, np.ones(n)), error_distributions(errs, n_bins=60, e_min=1e-5), model_id="m", model_sha256=None, spec={"family": "x", "dim": dim, "layer": "t"})
    vdesc = desc + rng.normal(scale=0.01, size=desc.shape)
    verr = 2.0 * np.abs(rng.normal(size=n)) * np.exp(vdesc[:, 0]) * 0.05
    cal = calibrate(ltau, vdesc, np.ones(n), verr, ks=(1, 5, 20))
    assert abs(cal.coverage - 0.9) < 0.02
    assert 1.5 < cal.scale < 2.6
    assert cal.coverage_uncalibrated < 0.85


def test_build_hnsw_per_element_and_refusals(ltau_built, ltau_store, tmp_path, mace_adapter):
    student, ltau, out = ltau_built
    build_ltau(student, ltau_store, out / "error_log.npz", tmp_path / "hnsw", n_bins=20, burn_in=1, index_kind="hnsw", per_element=True, k=3)
    assert sorted(p.name for p in (tmp_path / "hnsw").glob("*.faiss")) == ["index-14.faiss"]
    back = LTAU.load(tmp_path / "hnsw", adapter=student)
    assert back.index.kind == "hnsw" and back.index.per_element and back.k == 3 and back.dists.burn_in == 1
    desc = ltau.index.vectors()[:20]  # stored centred; vectors() adds the centre back
    assert np.all(back.index.query(desc, np.full(20, 14), k=1)[1][:, 0] < 1e-5)  # every training atom finds itself
    with pytest.raises(ArtifactError, match="built for model"):
        LTAU.load(tmp_path / "hnsw", adapter=mace_adapter)
    # an error log of other structures is refused
    from ase import Atoms

    recs = {r.index: r.atoms for r in ltau_store.records()}
    shuffled = {k: Atoms("Si2", positions=[[0, 0, 0], [1.2, 1.2, 1.2]], cell=[5, 5, 5], pbc=True) for k in recs}
    with pytest.raises(ConfigurationError, match="other structures"):
        build_ltau(student, shuffled, out / "error_log.npz")
    with pytest.raises(ConfigurationError, match="lacks"):
        build_ltau(student, {}, out / "error_log.npz")
