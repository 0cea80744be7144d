"""MolecularDynamics: NVE energy conservation, trajectory contents, restart, thermostats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read

from mlff_calc.errors import ArtifactError, ConfigurationError
from mlff_calc.workflows.md import LOG_COLUMNS, MolecularDynamics

A0 = 5.461  # CHGNet's lattice constant of Si (see test_relax)


class ExtrasCalc(Calculator):
    """A plain ASE calculator (not ours) that adds results of the kind layers add."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "forces_uncertainty", "r_star"]

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.inner
        forces = work.get_forces()
        self.results = {
            "energy": work.get_potential_energy(),
            "free_energy": work.get_potential_energy(),
            "forces": forces,
            "stress": work.get_stress(),
            "forces_uncertainty": 0.1 * np.linalg.norm(forces, axis=1),
            "r_star": 5.0,
            "contributions": {"toy": {"energy": 0.25}},
        }


@pytest.fixture(scope="module")
def nve(calc, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("md") / "si-nve"
    wf = MolecularDynamics(
        bulk("Si", "diamond", A0, cubic=True),
        ExtrasCalc(calc),
        ensemble="nve",
        temperature_K=300,
        timestep_fs=1.0,
        steps=200,
        log_interval=10,
        seed=7,
        prefix=prefix,
        progress=False,
    )
    return wf, wf.run()


def test_nve_conserves_energy(nve):
    wf, res = nve
    assert res.n_steps == 200
    assert set(res.log) == set(LOG_COLUMNS)
    np.testing.assert_array_equal(res.log["step"], np.arange(0, 201, 10))
    np.testing.assert_allclose(res.log["time_ps"], np.arange(0, 201, 10) / 1000)
    assert res.log["T_K"][0] == pytest.approx(300.0, rel=1e-6)  # velocities drawn at exactly 300 K
    assert np.all(np.isfinite(res.log["pressure_GPa"]))
    drift = np.abs(res.log["drift_eV_per_atom"]).max()
    print(
        f"\nNVE Si8, 200 x 1 fs at 300 K: max |E_tot - E_tot(0)| = {drift:.2e} eV/atom, drift rate {res.drift_eV_per_atom_per_ps:.2e} eV/atom/ps, <T> = {res.mean_temperature_K:.0f} K",
    )
    assert drift < 1e-3
    assert abs(res.drift_eV_per_atom_per_ps) < 5e-3
    np.testing.assert_allclose(res.log["E_tot_eV"], res.log["E_pot_eV"] + res.log["E_kin_eV"])

    table = np.loadtxt(wf.output_files["log"])
    header = wf.output_files["log"].read_text().splitlines()[0].lstrip("# ").split()
    assert header == list(LOG_COLUMNS) and table.shape == (21, len(LOG_COLUMNS))
    np.testing.assert_allclose(table[:, header.index("E_tot_eV")], res.log["E_tot_eV"], rtol=1e-7)


def test_nve_reports_its_drift(nve):
    _, res = nve
    summary = res.to_dict()
    assert summary["drift_eV_per_atom_per_ps"] == pytest.approx(res.drift_eV_per_atom_per_ps)
    assert summary["max_abs_drift_eV_per_atom"] == pytest.approx(np.abs(res.log["drift_eV_per_atom"]).max())


def test_trajectory_keeps_forces_and_extra_results(nve):
    wf, res = nve
    frames = read(wf.output_files["trajectory"], ":")
    assert len(frames) == 21
    for frame in frames[1::10]:
        forces = frame.get_forces()
        assert forces.shape == (8, 3) and np.abs(forces).max() > 0.01
        assert frame.calc.results["stress"].shape == (6,)
        # extxyz writes 8 decimals
        np.testing.assert_allclose(frame.arrays["forces_uncertainty"], 0.1 * np.linalg.norm(forces, axis=1), rtol=1e-5, atol=2e-8)
        assert frame.info["r_star"] == 5.0
        assert frame.info["contributions_toy_energy"] == 0.25
        assert frame.get_momenta().shape == (8, 3)
    assert frames[-1].info["step"] == 200
    assert frames[-1].get_potential_energy() == pytest.approx(res.log["E_pot_eV"][-1], abs=1e-6)


def test_restart_continues_from_last_frame(nve, calc, tmp_path):
    wf, res = nve
    restart_file = wf.output_files["restart"]
    last = read(restart_file)
    np.testing.assert_allclose(last.get_momenta(), res.atoms.get_momenta(), atol=1e-10)
    again = MolecularDynamics.restart(restart_file, calc, steps=20, log_interval=10, prefix=tmp_path / "cont", progress=False)
    assert again.ensemble == "nve" and again.timestep_fs == 1.0
    more = again.run()
    np.testing.assert_array_equal(more.log["step"], [200, 210, 220])
    assert more.log["E_tot_eV"][0] == pytest.approx(res.log["E_tot_eV"][-1], abs=1e-6)
    assert more.log["T_K"][0] == pytest.approx(res.log["T_K"][-1], rel=1e-6)
    assert abs(more.log["E_tot_eV"][-1] - res.log["E_tot_eV"][0]) / 8 < 1e-3

    png = wf.plot(tmp_path / "energy.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(wf.write_summary(tmp_path / "summary.json").read_text())
    assert data["parameters"]["timestep_fs"] == 1.0 and data["units"]["temperature"] == "K"


def test_langevin_temperature(calc, tmp_path):
    wf = MolecularDynamics(
        bulk("Si", "diamond", A0, cubic=True),
        calc,
        ensemble="nvt-langevin",
        temperature_K=300,
        timestep_fs=2.0,
        steps=200,
        friction_per_fs=0.05,
        log_interval=5,
        seed=3,
        trajectory=False,
        prefix=tmp_path / "lgv",
        progress=False,
    )
    res = wf.run()
    t_late = res.log["T_K"][len(res.log["T_K"]) // 2 :].mean()
    print(f"\nLangevin Si8 at 300 K: <T> over the second half = {t_late:.0f} K")
    assert 150 < t_late < 500
    assert wf.output_files["trajectory"] is None
    # E_tot is not conserved with a thermostat: no "drift" is reported for it
    assert res.drift_eV_per_atom_per_ps is None and res.max_abs_drift_eV_per_atom is None
    summary = res.to_dict()
    assert not [k for k in summary if "drift" in k] and "drift_eV_per_atom" not in summary["log"]
    assert summary["mean_temperature_K"] == pytest.approx(res.log["T_K"].mean())


@pytest.mark.parametrize("ensemble", ["nvt-nose-hoover", "npt"])
def test_other_ensembles_run(calc, tmp_path, ensemble):
    atoms = bulk("Si", "diamond", A0, cubic=True)
    res = MolecularDynamics(
        atoms, calc, ensemble=ensemble, temperature_K=300, steps=20, log_interval=10, tdamp_fs=50, pdamp_fs=200, seed=5, trajectory=False, prefix=tmp_path / ensemble, progress=False
    ).run()
    assert res.n_steps == 20 and np.all(np.isfinite(res.log["E_tot_eV"]))
    volume_changed = not np.allclose(res.log["volume_A3"], atoms.get_volume())
    assert volume_changed == (ensemble == "npt")


def test_bad_inputs_raise(calc, tmp_path):
    with pytest.raises(ConfigurationError, match="ensemble"):
        MolecularDynamics(bulk("Si"), calc, ensemble="nvk")
    with pytest.raises(ArtifactError, match="does not exist"):
        MolecularDynamics.restart(tmp_path / "missing.extxyz", calc)


def test_progress_shows_step_temperature_energy_and_time_per_step(calc, tmp_path, capsys):
    atoms = bulk("Si", "diamond", A0, cubic=True)
    res = MolecularDynamics(atoms, calc, steps=4, log_interval=2, seed=1, trajectory=False, prefix=tmp_path / "p", progress=True).run()
    err = capsys.readouterr().err
    last = [line for line in err.replace("\r", "\n").splitlines() if "step 4" in line][-1]
    assert "md nve" in last and "step 4" in last and "ms/step" in last
    t_shown = float(last.split("T=")[1].split(" K")[0])
    assert t_shown == pytest.approx(res.log["T_K"][-1], abs=0.6)  # the status is the run's own numbers
    e_shown = float(last.split("E=")[1].split(" eV/atom")[0])
    assert e_shown == pytest.approx(res.log["E_pot_eV"][-1] / len(atoms), abs=1e-4)


def test_progress_is_off_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    import io

    from mlff_calc._runtime import on_terminal, progress_bar

    assert not on_terminal()  # pytest captures stderr
    with progress_bar(total=3, desc="quiet") as bar:
        bar.update(3)
    assert bar.disable and "quiet" not in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert on_terminal()
    with progress_bar(total=3, desc="shown") as bar:
        assert not bar.disable
