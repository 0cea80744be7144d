"""EquationOfState: our Birch-Murnaghan fit against ASE's, batched evaluation, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.collections import dcdft
from ase.eos import EquationOfState as AseEOS
from helpers import CountingCalc

from mlff_calc.errors import ConfigurationError
from mlff_calc.workflows.eos import EquationOfState, birch_murnaghan, fit_birch_murnaghan


class PlainCalc(Calculator):
    """A plain ASE calculator (no ``evaluate``) delegating to ours."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.inner
        self.results = {"energy": work.get_potential_energy(), "forces": work.get_forces()}


@pytest.fixture(scope="module")
def si_eos(calc):
    counting = CountingCalc(calc)
    wf = EquationOfState(bulk("Si", "diamond", 5.43), counting, strain_range=0.06, n_points=9, relax=False, progress=False)
    return wf, wf.run(), counting


def test_fit_recovers_known_parameters():
    v = np.linspace(17.0, 23.0, 11)
    e = birch_murnaghan(v, -5.0, 20.0, 0.6, 4.5)
    fit = fit_birch_murnaghan(v, e)
    assert fit["e0"] == pytest.approx(-5.0, abs=1e-8)
    assert fit["v0"] == pytest.approx(20.0, rel=1e-7)
    assert fit["b0"] == pytest.approx(0.6, rel=1e-6)
    assert fit["bp"] == pytest.approx(4.5, rel=1e-5)
    assert fit["rms"] < 1e-9


def test_agrees_with_ase_birch_murnaghan(si_eos):
    wf, res, counting = si_eos
    assert counting.calls == [9]  # all volumes in one batched call
    assert np.all(np.diff(res.volumes_A3) > 0)
    assert res.volumes_A3[0] == pytest.approx(0.94 * bulk("Si", "diamond", 5.43).get_volume())
    v0, e0, b = AseEOS(res.volumes_A3, res.energies_eV, eos="birchmurnaghan").fit()
    assert res.v0_A3 == pytest.approx(v0, abs=1e-3)
    assert res.e0_eV == pytest.approx(e0, abs=1e-5)
    assert res.bulk_modulus_GPa == pytest.approx(b / units.GPa, rel=0.01)

    ref = dcdft.data["Si"]  # WIEN2k PBE (the Delta-test reference) and experiment
    a_eos = (8 * res.v0_per_atom_A3) ** (1 / 3)  # 8 atoms in the cubic diamond cell
    print(
        f"\nCHGNet Si EOS (±6% volume, 9 points): V0 = {res.v0_per_atom_A3:.3f} Å³/atom (a = {a_eos:.4f} Å), "
        f"B = {res.bulk_modulus_GPa:.1f} GPa, B' = {res.bulk_modulus_derivative:.2f}, fit rms {res.fit_rms_eV * 1e3:.2f} meV; "
        f"dcdft WIEN2k-PBE: V0 = {ref['wien2k_volume']} Å³/atom, B = {ref['wien2k_B']} GPa, B' = {ref['wien2k_Bp']}; exp B = {ref['exp_B']:.1f} GPa"
    )
    assert 40 < res.bulk_modulus_GPa < 130
    assert 19.0 < res.v0_per_atom_A3 < 21.5


def test_plain_ase_calculator_gives_the_same_points(calc, si_eos):
    _, res, _ = si_eos
    plain = EquationOfState(bulk("Si", "diamond", 5.43), PlainCalc(calc), strain_range=0.06, n_points=9, relax=False, progress=False).run()
    np.testing.assert_allclose(plain.energies_eV, res.energies_eV, atol=1e-4)
    np.testing.assert_allclose(plain.volumes_A3, res.volumes_A3)


def test_outputs(si_eos, tmp_path):
    wf, res, _ = si_eos
    png = wf.plot(tmp_path / "eos.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(wf.write_summary(tmp_path / "eos.json").read_text())
    assert data["result"]["bulk_modulus_GPa"] == pytest.approx(res.bulk_modulus_GPa)
    assert data["units"]["bulk_modulus"] == "GPa"
    scaled = wf.atoms_at_minimum()
    assert scaled.get_volume() == pytest.approx(res.v0_A3)


def test_bad_parameters_raise():
    with pytest.raises(ConfigurationError, match="n_points"):
        EquationOfState(bulk("Si"), None, n_points=3)
    with pytest.raises(ConfigurationError, match="strain_range"):
        EquationOfState(bulk("Si"), None, strain_range=0.7)


@pytest.fixture(scope="module")
def relaxed_eos(calc):
    """Default EOS (relax first) of Si and NaCl from textbook cells, over ±6 % and ±3 %."""
    out = {}
    for name, (kind, a) in {"Si": ("diamond", 5.43), "NaCl": ("rocksalt", 5.64)}.items():
        for strain in (0.06, 0.03):
            wf = EquationOfState(bulk(name, kind, a), calc, strain_range=strain, n_points=9, progress=False)
            out[name, strain] = (wf, wf.run())
    return out


@pytest.mark.parametrize("name", ["Si", "NaCl"])
def test_grid_is_centred_on_the_relaxed_volume(relaxed_eos, name):
    wf, res = relaxed_eos[name, 0.06]
    v_relaxed = wf.relax_result.atoms.get_volume()
    assert res.relaxed and res.relax_converged
    assert np.abs(wf.relax_result.stress_GPa).max() < 0.05  # the relaxed cell is at the model's zero pressure
    assert res.center_volume_A3 == pytest.approx(v_relaxed, rel=1e-9)
    assert res.volumes_A3[len(res.volumes_A3) // 2] == pytest.approx(v_relaxed, rel=1e-9)
    assert abs(v_relaxed / bulk(name, *{"Si": ("diamond", 5.43), "NaCl": ("rocksalt", 5.64)}[name]).get_volume() - 1) > 0.01  # the input was off
    _, res3 = relaxed_eos[name, 0.03]
    b6, b3 = res.bulk_modulus_GPa, res3.bulk_modulus_GPa
    print(
        f"\nCHGNet {name}: V_relaxed {v_relaxed / res.n_atoms:.4f} Å³/atom; ±6 %: V0 {res.v0_offset_percent:+.3f} %, B {b6:.2f} GPa, B' {res.bulk_modulus_derivative:.2f}, "
        f"rms {1e3 * res.fit_rms_eV_per_atom:.4f} meV/atom; ±3 %: V0 {res3.v0_offset_percent:+.3f} %, B {b3:.2f} GPa, B' {res3.bulk_modulus_derivative:.2f}"
    )
    # CHGNet's E(V) is not BM3-shaped over ±6 % (its pressure is not monotonic there), so V0 and B keep a range dependence
    assert abs(res.v0_offset_percent) < 0.5
    assert abs(res3.v0_offset_percent) < 0.15
    assert b6 == pytest.approx(b3, rel=0.04)


def test_unphysical_bulk_modulus_derivative_warns(relaxed_eos, caplog):
    _, si = relaxed_eos["Si", 0.06]
    _, nacl = relaxed_eos["NaCl", 0.06]
    assert 1.0 <= si.bulk_modulus_derivative <= 10.0 and not si.warnings
    assert not 1.0 <= nacl.bulk_modulus_derivative <= 10.0
    assert len(nacl.warnings) == 1 and "B'" in nacl.warnings[0]
    assert nacl.to_dict()["warnings"] == nacl.warnings
    assert nacl.fit_max_residual_eV >= nacl.fit_rms_eV > 0
