"""Test-time radius refinement: Laplacian spectra, the spectrum reference, choosing r*, the layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlff_calc.artifacts import write_json
from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import ArtifactError, ConfigurationError, InvalidStructureError
from mlff_calc.layers.rewiring import RewiringLayer, system_key
from mlff_calc.rewiring import (
    SpectrumReference,
    candidate_radii,
    choose_radius,
    histogram_distance,
    histogram_edges,
    jackson_kernel,
    laplacian_spectrum,
    spectrum_from_adjacency,
)

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")


def chain(n: int, spacing: float = 1.0) -> Atoms:
    """n atoms on a line, periodic along x with period n * spacing: the ring C_n at r = 1.5 spacing."""
    return Atoms("H" * n, positions=[[k * spacing, 0.0, 0.0] for k in range(n)], cell=[n * spacing, 10.0, 10.0], pbc=[True, False, False])


def si(n=2, scale=1.0, rattle=0.05, seed=1, strain=0.0) -> Atoms:
    atoms = bulk("Si", "diamond", 5.43 * scale * (1 + strain), cubic=True) * (n, n, n)
    atoms.rattle(rattle, seed=seed)
    return atoms


def training_set(count=8, seed=0):
    rng = np.random.default_rng(seed)
    return [si(2, rattle=0.08, seed=100 + k + 50 * seed, strain=float(rng.uniform(-0.02, 0.02))) for k in range(count)]


@pytest.fixture(scope="module")
def reference(mace_adapter):
    return SpectrumReference.build(training_set(), adapter=mace_adapter, source="8 rattled Si64")


# spectra of small graphs ------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_ring_spectrum(n):
    # n = 2 is the multigraph with A_01 = 2 (both images of the neighbour count)
    ev = laplacian_spectrum(chain(n), 1.5).eigenvalues
    expected = np.sort(1.0 - np.cos(2.0 * np.pi * np.arange(n) / n))
    np.testing.assert_allclose(ev, expected, atol=1e-10)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_complete_graph_spectrum(n):
    atoms = Atoms("H" * n, positions=np.random.default_rng(n).random((n, 3)))
    ev = laplacian_spectrum(atoms, 10.0).eigenvalues
    np.testing.assert_allclose(ev, [0.0] + [n / (n - 1)] * (n - 1), atol=1e-10)


def test_isolated_nodes_give_eigenvalue_one():
    spread = Atoms("H3", positions=[[0, 0, 0], [5, 0, 0], [0, 5, 0]])
    spec = laplacian_spectrum(spread, 2.0)
    np.testing.assert_allclose(spec.eigenvalues, [1.0, 1.0, 1.0])
    assert spec.n_isolated == 3
    # a triangle (K3) plus one far atom
    mixed = Atoms("H4", positions=[[0, 0, 0], [1, 0, 0], [0.5, 0.8, 0], [20, 0, 0]])
    np.testing.assert_allclose(laplacian_spectrum(mixed, 1.5).eigenvalues, [0.0, 1.0, 1.5, 1.5], atol=1e-10)
    # the same through KPM: all mass at 1
    kpm = spectrum_from_adjacency(np.zeros((50, 50)), method="kpm")
    assert kpm.band_fraction() == pytest.approx(1.0, abs=1e-3)  # Jackson broadening: width ~ pi/400


def test_self_image_convention():
    cu = bulk("Cu", "fcc", 3.6)  # one atom, 12 images of itself at 2.55 Å
    np.testing.assert_allclose(laplacian_spectrum(cu, 3.0, self_images="drop").eigenvalues, [1.0])
    np.testing.assert_allclose(laplacian_spectrum(cu, 3.0, self_images="count").eigenvalues, [0.0], atol=1e-12)
    with pytest.raises(ConfigurationError, match="self_images"):
        laplacian_spectrum(cu, 3.0, self_images="maybe")


def test_spectrum_bounds_and_histogram_normalised():
    spec = laplacian_spectrum(si(2), 5.0)
    assert spec.eigenvalues.min() >= 0 and spec.eigenvalues.max() <= 2
    assert spec.eigenvalues[0] == pytest.approx(0.0, abs=1e-10)
    assert spec.histogram(histogram_edges()).sum() == pytest.approx(1.0)


def test_kpm_matches_dense_on_300_atoms():
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 4)  # 288 atoms
    atoms.rattle(0.3, seed=4)
    dense = laplacian_spectrum(atoms, 5.0, method="dense")
    kpm = laplacian_spectrum(atoms, 5.0, method="kpm")
    assert laplacian_spectrum(atoms, 5.0, dense_max=100).method == "kpm"
    assert jackson_kernel(10)[0] == pytest.approx(1.0)
    edges = histogram_edges()
    tv = histogram_distance(dense.histogram(edges), kpm.histogram(edges))
    assert tv < 0.05, tv
    assert abs(dense.band_fraction() - kpm.band_fraction()) < 0.02
    sorted_kpm = kpm.sorted_values()
    assert sorted_kpm.shape == (len(atoms),)
    assert np.abs(sorted_kpm - dense.eigenvalues).mean() < 0.02


# the reference ------------------------------------------------------------------------
def test_reference_statistics(reference, mace_adapter):
    assert reference.cutoff == mace_adapter.cutoff and reference.model_id == mace_adapter.model_id
    assert reference.padded_size == 64 and reference.n_structures == 8
    assert reference.histogram.sum() == pytest.approx(1.0)
    assert 0 <= reference.band_fraction <= 1


def test_reference_round_trip_and_tampering(reference, mace_adapter, tmp_path):
    path = reference.save(tmp_path / "ref")
    assert path.name == "ref.json" and (tmp_path / "ref.npz").is_file()
    manifest = json.loads(path.read_text())
    assert manifest["format"] == "mlff_calc.spectrum" and manifest["format_version"] == 1
    assert manifest["graph"]["self_images"] == "drop" and manifest["cutoff_A"] == 5.0
    loaded = SpectrumReference.load(path, adapter=mace_adapter)
    np.testing.assert_array_equal(loaded.mean_sorted, reference.mean_sorted)
    np.testing.assert_array_equal(loaded.histogram, reference.histogram)
    atoms = si(2, seed=7)
    assert choose_radius(atoms, loaded).r_star == choose_radius(atoms, reference).r_star
    # edited manifest
    edited = dict(manifest, cutoff_A=4.0)
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="checksum"):
        SpectrumReference.load(tmp_path / "edited.json")
    # changed arrays
    np.savez(tmp_path / "ref.npz", mean_sorted=np.zeros(3), histogram=np.zeros(3), edges=np.zeros(4), sizes=np.zeros(1))
    with pytest.raises(ArtifactError, match="sha256"):
        SpectrumReference.load(path)
    with pytest.raises(ArtifactError, match="does not exist"):
        SpectrumReference.load(tmp_path / "missing.json")
    write_json(tmp_path / "other.json", {"format": "mlff_calc.student", "format_version": 1})
    with pytest.raises(ArtifactError, match="not a mlff_calc.spectrum"):
        SpectrumReference.load(tmp_path / "other.json")


def test_reference_of_another_model_or_cutoff_is_refused(mace_adapter):
    train = training_set(2)
    other_model = SpectrumReference.build(train, model_id="someone-else", cutoff=mace_adapter.cutoff)
    with pytest.raises(ArtifactError, match="someone-else"):
        MLFFCalculator(mace_adapter, [RewiringLayer(other_model)])
    other_cutoff = SpectrumReference.build(train, model_id=mace_adapter.model_id, cutoff=4.0)
    with pytest.raises(ArtifactError, match="cutoff"):
        MLFFCalculator(mace_adapter, [RewiringLayer(other_cutoff)])
    with pytest.raises(ConfigurationError, match="native cutoff"):
        SpectrumReference.build(train, adapter=mace_adapter, cutoff=4.0)


# choosing r* --------------------------------------------------------------------------
def test_candidate_radii():
    grid = candidate_radii(5.0)
    assert len(grid) == 10 and grid[0] == pytest.approx(2.5) and grid[-1] == 5.0
    assert candidate_radii(5.0, [3.0, 4.0])[-1] == 5.0  # the native cutoff is always a candidate
    with pytest.raises(ConfigurationError, match="native cutoff"):
        candidate_radii(5.0, [3.0, 5.5])
    with pytest.raises(ConfigurationError, match="outside"):
        candidate_radii(5.0, [0.0, 3.0])


@pytest.mark.parametrize("distance", ["padded_l2", "histogram", "band_fraction"])
def test_in_distribution_structures_pick_native_cutoff(reference, distance):
    step = candidate_radii(reference.cutoff)[-1] - candidate_radii(reference.cutoff)[-2]
    for atoms in training_set(3, seed=1):  # held out: same distribution, other seeds
        choice = choose_radius(atoms, reference, distance=distance)
        assert choice.r_star >= reference.cutoff - step - 1e-9, (choice.r_star, choice.distances)
        assert len(choice.distances) == len(choice.radii) == 10


def test_compressed_cell_picks_a_smaller_radius(reference):
    # 10 % compressed: the graph at r in [4.05, 4.89) Å is the training graph's topology
    choice = choose_radius(si(2, scale=0.9), reference)
    assert 4.0 < choice.r_star < 4.9
    assert choice.distances.argmin() != len(choice.radii) - 1


def test_error_cases(reference):
    with pytest.raises(InvalidStructureError, match="padded size 64"):
        choose_radius(si(3), reference, distance="padded_l2")
    assert choose_radius(si(3), reference, distance="histogram").r_star > 0  # histogram has no size limit
    with pytest.raises(ConfigurationError, match="native cutoff"):
        RewiringLayer(reference, radii=[3.0, 6.0])
    with pytest.raises(ConfigurationError, match="spectral distance"):
        RewiringLayer(reference, distance="wasserstein")
    with pytest.raises(ConfigurationError, match="SpectrumReference"):
        RewiringLayer("ref.json")


def test_isolated_atoms_at_small_radii_are_handled(reference):
    pair = Atoms("Si2", positions=[[0, 0, 0], [3.5, 0, 0]], cell=[20, 20, 20], pbc=True)
    choice = choose_radius(pair, reference)
    below = choice.radii < 3.5
    assert np.all(choice.n_isolated[below] == 2) and np.all(choice.n_isolated[~below] == 0)
    assert np.all(np.isfinite(choice.distances))


# the layer ---------------------------------------------------------------------------
def test_r_star_is_fixed_during_md_and_used_for_the_graph(reference, mace_adapter):
    layer = RewiringLayer(reference)
    calc = MLFFCalculator(mace_adapter, [layer])
    atoms = si(2, scale=0.9, seed=3)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=2000, rng=np.random.default_rng(0))
    seen = []
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    dyn.attach(lambda: seen.append((calc.results["r_star"], layer.n_refinements)), interval=1)
    dyn.run(6)
    assert len(seen) == 7
    r_star = seen[0][0]
    assert all(r == r_star for r, _ in seen) and all(n == 1 for _, n in seen)
    assert r_star < reference.cutoff
    assert "r_star" in calc.implemented_properties and calc.get_property("r_star", atoms) == r_star
    assert calc.results["rewiring_distances"].shape == (10,)
    # the model really ran on the graph at r*
    direct = mace_adapter.evaluate([atoms], ("energy",), cutoff=r_star)[0]["energy"]
    native = mace_adapter.evaluate([atoms], ("energy",))[0]["energy"]
    assert atoms.get_potential_energy() == pytest.approx(direct, abs=1e-9)
    assert abs(direct - native) > 1e-6


def test_reset_and_refine_pick_again(reference, mace_adapter):
    layer = RewiringLayer(reference)
    calc = MLFFCalculator(mace_adapter, [layer])
    compressed, normal = si(2, scale=0.9), si(2, seed=5)
    assert system_key(compressed) == system_key(normal) == "Si64|64"
    r_compressed = calc.evaluate([compressed])[0]["r_star"]
    assert calc.evaluate([normal])[0]["r_star"] == r_compressed  # same system: held
    assert layer.n_refinements == 1
    calc.reset_layers()
    assert layer.choice(normal) is None
    assert calc.evaluate([normal])[0]["r_star"] == reference.cutoff
    assert layer.n_refinements == 2
    assert layer.refine(compressed).r_star == r_compressed
    assert calc.evaluate([normal])[0]["r_star"] == r_compressed
    assert layer.describe()["r_star"] == {"Si64|64": r_compressed}


def test_batch_with_different_radii_is_refused(reference, mace_adapter):
    layer = RewiringLayer(reference)
    calc = MLFFCalculator(mace_adapter, [layer])
    compressed = si(2, scale=0.9)
    small = si(1)
    layer.refine(compressed)
    r_small = layer.refine(small).r_star
    if r_small == layer.choice(compressed).r_star:  # pragma: no cover - depends on the spectra
        pytest.skip("both systems chose the same radius")
    with pytest.raises(ConfigurationError, match="separate calls"):
        calc.evaluate([compressed, small])


def test_hessian_uses_r_star(reference, mace_adapter):
    layer = RewiringLayer(reference)
    calc = MLFFCalculator(mace_adapter, [layer])
    atoms = si(1, scale=0.9)
    rows = calc.get_hessian(atoms, rows=[0, 4])
    r_star = layer.choice(atoms).r_star
    np.testing.assert_allclose(rows, mace_adapter.hessian(atoms, [0, 4], cutoff=r_star), atol=1e-10)


# centring r* in its gap ----------------------------------------------------------------
def test_centred_r_star_gives_the_same_graph_and_prediction(reference, mace_adapter, monkeypatch):
    """Same graph, so the same prediction with the sharp cut; MACE's smooth switch (default) weighs edges near r*."""
    from mlff_calc.rewiring import radius_graph

    monkeypatch.setattr(mace_adapter, "switch_width_A", 0.0)

    atoms = si(2, scale=0.9, seed=3)
    grid_choice = choose_radius(atoms, reference, centre=False)
    choice = choose_radius(atoms, reference)
    assert grid_choice.r_star == grid_choice.r_grid == choice.r_grid < reference.cutoff
    lo, hi = choice.gap
    assert lo < choice.r_grid <= hi and choice.r_star == pytest.approx(0.5 * (lo + hi))
    np.testing.assert_array_equal(choice.distances, grid_choice.distances)
    assert (radius_graph(atoms, choice.r_star) != radius_graph(atoms, choice.r_grid)).nnz == 0
    at_grid, at_centre = (mace_adapter.evaluate([atoms], ("energy", "forces"), cutoff=r)[0] for r in (choice.r_grid, choice.r_star))
    assert at_centre["energy"] == pytest.approx(at_grid["energy"], abs=1e-10)
    np.testing.assert_allclose(at_centre["forces"], at_grid["forces"], atol=1e-10)
    assert choice.as_dict()["gap"] == [lo, hi]
    # the native cutoff is never moved
    native = choose_radius(training_set(1, seed=2)[0], reference)
    assert native.r_star == native.r_grid == reference.cutoff
    assert RewiringLayer(reference, centre=False).describe()["centre"] is False


# bad inputs ----------------------------------------------------------------------------
def test_bad_structures_and_settings_are_refused(reference):
    with pytest.raises(InvalidStructureError, match="no atoms"):
        choose_radius(Atoms(), reference)
    nan = si(1)
    nan.positions[0, 0] = np.nan
    with pytest.raises(InvalidStructureError, match="NaN"):
        choose_radius(nan, reference)
    with pytest.raises(ConfigurationError, match="at least one structure"):
        SpectrumReference.build([], model_id="m", cutoff=5.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="cutoff"):
            SpectrumReference.build([si(1)], model_id="m", cutoff=bad)
    with pytest.raises(ConfigurationError, match="needs an adapter"):
        SpectrumReference.build([si(1)], model_id="m")
    with pytest.raises(ConfigurationError, match="at least one candidate"):
        RewiringLayer(reference, n_radii=0)
    with pytest.raises(ConfigurationError, match="finite"):
        RewiringLayer(reference, radii=[float("nan")])
    with pytest.raises(ConfigurationError, match="spectrum method"):
        choose_radius(si(1), reference, method="lanczos")
    with pytest.raises(ConfigurationError, match="graph radius"):
        laplacian_spectrum(si(1), 0.0)


def test_a_refined_radius_next_to_neighbour_distances_is_warned_about(reference, caplog):
    from mlff_calc.layers.rewiring import NARROW_GAP

    layer = RewiringLayer(reference)
    with caplog.at_level("WARNING", logger="mlff_calc.layers.rewiring"):
        wide = layer.refine(si(2, scale=0.9, rattle=0.02, seed=3))  # r* between the 3rd and 4th shells
    assert wide.r_star < reference.cutoff and wide.gap[1] - wide.gap[0] > NARROW_GAP and not caplog.records
    with caplog.at_level("WARNING", logger="mlff_calc.layers.rewiring"):
        narrow = layer.refine(si(2, scale=0.93, rattle=0.1, seed=3))  # r* inside a smeared shell
    assert narrow.r_star < reference.cutoff and narrow.gap[1] - narrow.gap[0] < NARROW_GAP
    assert "will cross it" in caplog.text
