"""The adapter contract, run over every adapter kind: the three families, a distilled
student, a two-head model (prior head) and a fine-tuned model.

Finite-difference tolerances follow the model's dtype: float64 models (small MACE,
student, two-head, fine-tuned MACE) use a small step and tight tolerances; float32
models (CHGNet, M3GNet) a larger step, whose round-off (|E| x 6e-8 / 2h) and
truncation errors are ~1e-3 of the force scale.
"""

import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from helpers import STRUCTURES, fd_forces, fd_stress, rattled_nacl

from mlff_calc.calculator import MLFFCalculator
from mlff_calc.errors import CalculationFailed

ADAPTERS = ["chgnet_adapter", "m3gnet_adapter", "mace_adapter", "student_adapter", "two_head_adapter", "finetuned_adapter"]
PROPS = ("energy", "forces", "stress", "energies", "descriptors")
#: per dtype: FD steps (positions Å, strain), FD tolerances (forces eV/Å, stress eV/Å^3), the relative
#: tolerance of exact identities (energy sums, invariant energies) and the absolute one of invariant arrays
TOL = {
    torch.float64: {"h": 1e-4, "h_strain": 1e-5, "fd_forces": 1e-6, "fd_stress": 1e-8, "rel": 1e-12, "invariant": 1e-9},
    torch.float32: {"h": 1e-2, "h_strain": 1e-3, "fd_forces": 5e-3, "fd_stress": 5e-5, "rel": 2e-6, "invariant": 2e-4},
}
#: per-atom descriptor width of each kind
WIDTH = {"chgnet_adapter": 64, "m3gnet_adapter": 64, "mace_adapter": 16}
ARCH = {"channels": 8, "num_interactions": 1, "num_bessel": 6, "radial_mlp": [16]}


@pytest.fixture(scope="session")
def student_adapter():
    """An untrained float64 student (random weights: the contract holds for any weights)."""
    from mlff_calc.models.mace_build import SMALL_ELEMENTS
    from mlff_calc.models.student import StudentAdapter

    return StudentAdapter.create(SMALL_ELEMENTS, dtype="float64", architecture=ARCH, seed=1)


@pytest.fixture(scope="session")
def two_head_adapter():
    """A two-head model on its own float64 student, evaluated through its prior head."""
    from mlff_calc.models.mace_build import SMALL_ELEMENTS
    from mlff_calc.models.student import StudentAdapter
    from mlff_calc.models.two_head import PriorHead, TwoHeadModel, first_layer_columns

    base = StudentAdapter.create(SMALL_ELEMENTS, dtype="float64", architecture=ARCH, seed=2)
    head = PriorHead(first_layer_columns(base), hidden=8, e0={z: -0.2 * k for k, z in enumerate(SMALL_ELEMENTS)}, seed=3)
    model = TwoHeadModel(base, head, prior={"name": "lj", "params": {"sigma": 2.1, "epsilon": 0.4, "rc": 4.5}}, experimental=True)
    model.head = "prior"
    return model


@pytest.fixture(scope="session")
def finetuned_adapter(mace_small_path, tmp_path_factory):
    """The small float64 MACE after one readout fine-tuning epoch, loaded back from its folder."""
    from mlff_calc.data.dft import DFTDataset, DFTStructure
    from mlff_calc.finetune import finetune
    from mlff_calc.models.finetuned import load_finetuned
    from mlff_calc.models.mace import MACEAdapter

    def fresh():
        return MACEAdapter.load(mace_small_path, device="cpu", dtype="float64")

    adapter = fresh()
    atoms = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    atoms.rattle(0.05, seed=0)
    res = adapter.evaluate([atoms], ("energy", "forces"))[0]
    data = DFTDataset([DFTStructure(atoms, 1.4 * res["forces"], energy=float(res["energy"]), label="nacl")], "stiffened NaCl")
    folder = tmp_path_factory.mktemp("contract") / "ft"
    finetune(adapter, data, trainable="readout", epochs=1, lr=2e-3, progress=False, out_dir=folder)
    loaded = load_finetuned(folder, base_adapter=fresh())
    assert "+ft:" in loaded.model_id and loaded.evaluate([atoms])[0]["energy"] != res["energy"]  # really another model
    return loaded


@pytest.fixture(params=ADAPTERS)
def adapter(request):
    return request.getfixturevalue(request.param)


def test_shapes_and_input_untouched(adapter):
    atoms = rattled_nacl()
    before = (atoms.positions.copy(), atoms.cell.array.copy(), atoms.numbers.copy(), dict(atoms.info), atoms.calc)
    res = adapter.evaluate([atoms], PROPS)[0]
    n = len(atoms)
    assert isinstance(res["energy"], float)
    assert res["forces"].shape == (n, 3) and res["stress"].shape == (6,) and res["energies"].shape == (n,)
    assert res["descriptors"].shape[0] == n and res["descriptors"].ndim == 2
    assert all(v.dtype == np.float64 for k, v in res.items() if isinstance(v, np.ndarray))
    np.testing.assert_array_equal(atoms.positions, before[0])
    np.testing.assert_array_equal(atoms.cell.array, before[1])
    np.testing.assert_array_equal(atoms.numbers, before[2])
    assert atoms.info == before[3] and atoms.calc is before[4]


def test_single_atom_cell_keeps_dimensions(adapter):
    cu = bulk("Cu", "fcc", 3.6)
    res = adapter.evaluate([cu], PROPS)[0]
    assert res["forces"].shape == (1, 3) and res["energies"].shape == (1,)
    np.testing.assert_allclose(res["forces"], 0, atol=1e-4)  # every atom is an inversion centre


def test_lattice_translation_of_one_atom_changes_nothing(adapter):
    atoms = rattled_nacl()
    moved = atoms.copy()
    moved.positions[3] += atoms.cell[0] - 2 * atoms.cell[2]
    a, b = adapter.evaluate([atoms, moved], ("energy", "forces", "stress"))
    assert a["energy"] == pytest.approx(b["energy"], abs=2e-4)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=2e-4)
    np.testing.assert_allclose(a["stress"], b["stress"], atol=2e-6)


def test_molecule_without_periodicity(adapter):
    mol = molecule("CH4")
    res = adapter.evaluate([mol], ("energy", "forces"))[0]
    assert np.isfinite(res["energy"])
    np.testing.assert_allclose(res["forces"].sum(axis=0), 0, atol=1e-4)


def test_dtype_is_preserved(adapter):
    adapter.evaluate([bulk("Si", "diamond", 5.43)])
    assert {p.dtype for p in adapter.module.parameters()} == {adapter.dtype}
    assert torch.get_default_dtype() == torch.float32


def test_out_of_memory_becomes_calculation_failed(adapter, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(adapter, "_forward", boom)
    with pytest.raises(CalculationFailed, match="ran out of memory on 1 structure.* 16 atoms"):
        adapter.evaluate([rattled_nacl()])


# physics and bookkeeping ---------------------------------------------------------------
def test_forces_are_minus_the_gradient_of_the_energy(adapter):
    h, atol = TOL[adapter.dtype]["h"], TOL[adapter.dtype]["fd_forces"]
    atoms = rattled_nacl()
    calc = MLFFCalculator(adapter)
    forces = calc.evaluate([atoms], ("energy", "forces"))[0]["forces"]
    rows = [0, 5, 11]
    assert np.abs(forces[rows]).max() > 20 * atol  # not vacuous
    np.testing.assert_allclose(forces[rows], fd_forces(calc, atoms, h=h, indices=rows), atol=atol)


def test_stress_is_the_strain_derivative_of_the_energy(adapter):
    h, atol = TOL[adapter.dtype]["h_strain"], TOL[adapter.dtype]["fd_stress"]
    atoms = rattled_nacl()
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0], [0, 0.99, 0.015], [0, 0, 1.01]]), scale_atoms=True)
    calc = MLFFCalculator(adapter)
    stress = calc.evaluate([atoms], ("energy", "stress"))[0]["stress"]
    assert np.abs(stress).max() > 20 * atol
    np.testing.assert_allclose(stress, fd_stress(calc, atoms, h=h), atol=atol)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_per_atom_energies_sum_to_the_energy_and_descriptors_have_one_width(adapter, request, name):
    rel = TOL[adapter.dtype]["rel"]
    atoms = STRUCTURES[name]()
    res = adapter.evaluate([atoms], ("energy", "energies", "descriptors"))[0]
    assert res["energies"].shape == (len(atoms),)
    assert res["energies"].sum() == pytest.approx(res["energy"], rel=rel, abs=rel)
    width = WIDTH.get(request.node.callspec.params["adapter"], res["descriptors"].shape[1])
    assert res["descriptors"].shape == (len(atoms), width) and np.isfinite(res["descriptors"]).all()
    probe = adapter.evaluate([bulk("Si", "diamond", 5.43)], ("descriptors",))[0]["descriptors"]
    assert probe.shape[1] == width


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_permutation_translation_and_rotation_invariance(adapter, name):
    rel, atol = TOL[adapter.dtype]["rel"], TOL[adapter.dtype]["invariant"]
    atoms = STRUCTURES[name]()
    ref = adapter.evaluate([atoms], PROPS)[0]
    order = np.random.default_rng(4).permutation(len(atoms))
    shifted = atoms.copy()
    shifted.positions += [0.31, -1.7, 2.2]
    turned = atoms.copy()
    turned.rotate(37, (1, 2, 3), rotate_cell=True)
    permuted, moved, rotated = adapter.evaluate([atoms[order], shifted, turned], PROPS)
    for res, rows in ((permuted, order), (moved, slice(None))):
        assert res["energy"] == pytest.approx(ref["energy"], rel=rel)
        np.testing.assert_allclose(res["forces"], ref["forces"][rows], atol=atol)
        np.testing.assert_allclose(res["energies"], ref["energies"][rows], atol=atol)
        np.testing.assert_allclose(res["stress"], ref["stress"], atol=atol / 10)
        np.testing.assert_allclose(res["descriptors"], ref["descriptors"][rows], atol=atol)
    assert rotated["energy"] == pytest.approx(ref["energy"], rel=rel)
    r_t = np.linalg.solve(atoms.cell.array, turned.cell.array)  # turned cell = cell @ R^T
    np.testing.assert_allclose(rotated["forces"], ref["forces"] @ r_t, atol=atol)
    np.testing.assert_allclose(rotated["descriptors"], ref["descriptors"], atol=atol)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_a_batch_equals_a_loop_of_single_calls(adapter, name):
    atol = 1e-9 if adapter.dtype == torch.float64 else 1e-4
    structures = [STRUCTURES[name](), rattled_nacl(seed=9), bulk("Si", "diamond", 5.43)]
    props = ("energy", "forces", "energies", "descriptors", "stress")
    batched = adapter.evaluate(structures, props)
    for atoms, res in zip(structures, batched):
        single = adapter.evaluate([atoms], props)[0]
        assert res["energy"] == pytest.approx(single["energy"], abs=atol)
        for key in props[1:]:
            np.testing.assert_allclose(res[key], single[key], atol=atol / 10 if key == "stress" else atol)


def test_pickle_round_trip_gives_the_same_numbers(adapter):
    atoms = rattled_nacl()
    want = adapter.evaluate([atoms], PROPS)[0]
    copy = pickle.loads(pickle.dumps(adapter))
    assert type(copy) is type(adapter) and copy.model_id == adapter.model_id and copy.dtype == adapter.dtype
    got = copy.evaluate([atoms], PROPS)[0]
    assert got["energy"] == want["energy"]
    for key in PROPS[1:]:
        np.testing.assert_array_equal(got[key], want[key])
