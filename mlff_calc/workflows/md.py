"""Molecular dynamics with ASE integrators and any ASE calculator.

Output while running (streamed, so a long run can be watched and a crash keeps
what was done): a whitespace-separated log and an extxyz trajectory. Each frame
keeps the calculator's standard results (energy, forces, stress) and every other
per-atom array or scalar it gave (``forces_uncertainty``, ``r_star``, ...), plus
the momenta. The restart file (the last frame, with momenta) is written
atomically at the end and every ``restart_interval`` steps;
:meth:`MolecularDynamics.restart` continues from it. Thermostat/barostat chain
variables are not stored: a Nose-Hoover or MTK run restarts them from zero.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import read, write
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from ..artifacts import atomic_path
from ..errors import ArtifactError, ConfigurationError
from . import UNITS, default_prefix, output_path, progress_bar, snapshot
from .base import Workflow, result_dict

log = logging.getLogger(__name__)

LOG_COLUMNS = ("step", "time_ps", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "drift_eV_per_atom", "pressure_GPa", "volume_A3")


def _nve(atoms, md):
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep=md.timestep_fs * units.fs)


def _langevin(atoms, md):
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    # ASE >= 3.28: fixcm=True samples NVT only approximately; FixCom is the exact way
    if not any(isinstance(c, FixCom) for c in atoms.constraints):
        atoms.set_constraint(list(atoms.constraints) + [FixCom()])
    return Langevin(atoms, timestep=md.timestep_fs * units.fs, temperature_K=md.temperature_K, friction=md.friction_per_fs / units.fs, fixcm=False, rng=md.rng)


def _nose_hoover(atoms, md):
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    return NoseHooverChainNVT(atoms, timestep=md.timestep_fs * units.fs, temperature_K=md.temperature_K, tdamp=md.tdamp_fs * units.fs)


def _npt(atoms, md):
    from ase.md.nose_hoover_chain import IsotropicMTKNPT

    return IsotropicMTKNPT(
        atoms,
        timestep=md.timestep_fs * units.fs,
        temperature_K=md.temperature_K,
        pressure_au=md.pressure_GPa * units.GPa,
        tdamp=md.tdamp_fs * units.fs,
        pdamp=md.pdamp_fs * units.fs,
    )


#: ensemble name -> builder of the ASE integrator
ENSEMBLES = {"nve": _nve, "nvt-langevin": _langevin, "nvt-nose-hoover": _nose_hoover, "npt": _npt}


@dataclass
class MDResult:
    """Outcome of :meth:`MolecularDynamics.run`. ``log`` maps each of LOG_COLUMNS to an array.

    The E_tot drift is a check of energy conservation, so it is given for NVE only
    (``None`` with a thermostat or barostat, which exchange energy by design).
    """

    atoms: Atoms
    n_steps: int
    log: dict[str, np.ndarray] = field(default_factory=dict)
    drift_eV_per_atom_per_ps: float | None = float("nan")
    mean_temperature_K: float = float("nan")
    ensemble: str = "nve"
    max_abs_drift_eV_per_atom: float | None = None

    def to_dict(self) -> dict:
        out = {"formula": self.atoms.get_chemical_formula(), "n_atoms": len(self.atoms), "n_log_rows": len(self.log.get("step", ()))} | result_dict(self)
        if self.ensemble != "nve":
            out = {k: v for k, v in out.items() if "drift" not in k}
            out["log"] = {k: v for k, v in out["log"].items() if "drift" not in k}
        return out


class MolecularDynamics(Workflow):
    """MD of ``atoms`` in one of :data:`ENSEMBLES`.

    Parameters
    ----------
    ensemble: ``"nve"`` (velocity Verlet), ``"nvt-langevin"``, ``"nvt-nose-hoover"``
        (Nose-Hoover chain) or ``"npt"`` (isotropic MTK barostat with Nose-Hoover chains).
    temperature_K: thermostat target; also the Maxwell-Boltzmann temperature of the
        initial velocities (see ``initial_temperature_K``).
    timestep_fs, steps: integration step and number of steps.
    friction_per_fs: Langevin friction; tdamp_fs / pdamp_fs: thermostat / barostat times.
    pressure_GPa: NPT target pressure.
    log_interval: steps between log rows; traj_interval: steps between trajectory frames
        (default ``log_interval``); restart_interval: steps between restart files (default: at the end only).
    trajectory: extxyz path (default ``<prefix>-md-traj.extxyz``); ``False`` writes none.
    initial_temperature_K: draw Maxwell-Boltzmann velocities at this temperature; the
        default draws them at ``temperature_K`` unless ``atoms`` already carries momenta.
    seed: seeds the velocities and the Langevin noise.
    first_step: number of the first step (set by :meth:`restart` so numbering continues).
    """

    name = "md"

    def __init__(
        self,
        atoms: Atoms,
        calc,
        *,
        ensemble: str = "nve",
        temperature_K: float = 300.0,
        timestep_fs: float = 1.0,
        steps: int = 1000,
        friction_per_fs: float = 0.01,
        tdamp_fs: float = 100.0,
        pdamp_fs: float = 1000.0,
        pressure_GPa: float = 0.0,
        log_interval: int = 10,
        traj_interval: int | None = None,
        restart_interval: int | None = None,
        trajectory=None,
        initial_temperature_K: float | None = None,
        seed: int | None = None,
        prefix=None,
        progress: bool | None = None,
        first_step: int = 0,
    ):
        if ensemble not in ENSEMBLES:
            raise ConfigurationError(f"ensemble {ensemble!r} is not known; choose one of {sorted(ENSEMBLES)}")
        if not timestep_fs > 0 or steps < 0 or log_interval < 1:
            raise ConfigurationError(f"need timestep_fs > 0, steps >= 0 and log_interval >= 1; got {timestep_fs}, {steps}, {log_interval}")
        if ensemble == "npt" and not atoms.pbc.all():
            raise ConfigurationError(f"NPT needs a cell periodic in all directions; this one has pbc={atoms.pbc.tolist()}")
        if temperature_K < 0 or (initial_temperature_K is not None and initial_temperature_K < 0):
            raise ConfigurationError("temperatures must be >= 0 K")
        self.atoms = atoms
        self.calc = calc
        self.ensemble = ensemble
        self.temperature_K = float(temperature_K)
        self.timestep_fs = float(timestep_fs)
        self.steps = int(steps)
        self.friction_per_fs = float(friction_per_fs)
        self.tdamp_fs = float(tdamp_fs)
        self.pdamp_fs = float(pdamp_fs)
        self.pressure_GPa = float(pressure_GPa)
        self.log_interval = int(log_interval)
        self.traj_interval = int(traj_interval or log_interval)
        self.restart_interval = restart_interval
        self.initial_temperature_K = initial_temperature_K
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.prefix = default_prefix(atoms, prefix)
        self.trajectory = None if trajectory is False else Path(trajectory or output_path(self.prefix, "md-traj.extxyz"))
        self.progress = progress
        self.step_offset = int(first_step)
        self.result: MDResult | None = None

    @classmethod
    def restart(cls, path, calc, **kwargs) -> MolecularDynamics:
        """Continue from the last frame of ``path`` (a restart file or trajectory with momenta).

        Step numbering continues; the ensemble, temperature, timestep and pressure of
        the previous run are reused unless given in ``kwargs``.
        """
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"MD restart file {path} does not exist")
        atoms = read(path, index=-1, format="extxyz")
        if "momenta" not in atoms.arrays:
            raise ArtifactError(f"the last frame of {path} holds no momenta; it cannot restart a run")
        info = atoms.info
        defaults = {
            "ensemble": info.get("md_ensemble"),
            "temperature_K": info.get("md_temperature_K"),
            "timestep_fs": info.get("md_timestep_fs"),
            "pressure_GPa": info.get("md_pressure_GPa"),
        }
        for key, value in defaults.items():
            if value is not None:
                kwargs.setdefault(key, value)
        atoms.calc = None
        kwargs.setdefault("first_step", int(info.get("step", 0)))
        return cls(atoms, calc, **kwargs)

    @property
    def output_files(self) -> dict[str, Path | None]:
        return {
            "log": output_path(self.prefix, "md-log.txt"),
            "trajectory": self.trajectory,
            "restart": output_path(self.prefix, "md-restart.extxyz"),
            "summary": output_path(self.prefix, "md-summary.json"),
            "plot": output_path(self.prefix, "md-energy.png"),
        }

    def _prepare(self) -> Atoms:
        work = self.atoms.copy()
        work.calc = self.calc
        has_momenta = "momenta" in work.arrays and np.any(work.arrays["momenta"])
        t_init = self.initial_temperature_K
        if t_init is None and not has_momenta:
            t_init = self.temperature_K
        if t_init is not None:
            MaxwellBoltzmannDistribution(work, temperature_K=t_init, force_temp=True, rng=self.rng)
            Stationary(work, preserve_temperature=True)
        return work

    def _row(self, work: Atoms, step: int, e_tot0: float) -> dict[str, float]:
        e_pot = float(work.get_potential_energy())
        e_kin = float(work.get_kinetic_energy())
        n = len(work)
        pressure = volume = float("nan")
        if work.pbc.all():
            volume = float(work.get_volume())
            with contextlib.suppress(PropertyNotImplementedError):
                pressure = float(-np.mean(work.get_stress(include_ideal_gas=True, voigt=True)[:3]) / units.GPa)
        return {
            "step": step,
            "time_ps": step * self.timestep_fs / 1000.0,
            "T_K": float(work.get_temperature()),
            "E_pot_eV": e_pot,
            "E_kin_eV": e_kin,
            "E_tot_eV": e_pot + e_kin,
            "drift_eV_per_atom": (e_pot + e_kin - e_tot0) / n,
            "pressure_GPa": pressure,
            "volume_A3": volume,
        }

    def _frame(self, work: Atoms, step: int) -> Atoms:
        frame = snapshot(work)
        frame.info.update(
            {
                "step": step,
                "time_fs": step * self.timestep_fs,
                "md_ensemble": self.ensemble,
                "md_temperature_K": self.temperature_K,
                "md_timestep_fs": self.timestep_fs,
                "md_pressure_GPa": self.pressure_GPa,
            },
        )
        return frame

    def run(self) -> MDResult:
        work = self._prepare()
        dyn = ENSEMBLES[self.ensemble](work, self)
        rows: list[dict] = []
        e_tot0 = float(work.get_potential_energy() + work.get_kinetic_energy())
        files = self.output_files
        files["log"].parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            log_fh = stack.enter_context(open(files["log"], "w"))
            log_fh.write("# " + " ".join(LOG_COLUMNS) + "\n")
            traj_fh = None
            if self.trajectory is not None:
                self.trajectory.parent.mkdir(parents=True, exist_ok=True)
                traj_fh = stack.enter_context(open(self.trajectory, "w"))

            clock = [time.perf_counter(), dyn.nsteps]

            def log_step():
                row = self._row(work, self.step_offset + dyn.nsteps, e_tot0)
                rows.append(row)
                now, steps = time.perf_counter(), dyn.nsteps - clock[1]
                if steps:
                    bar.set_postfix_str(f"step {row['step']}, T={row['T_K']:.0f} K, E={row['E_pot_eV'] / len(work):.4f} eV/atom, {1e3 * (now - clock[0]) / steps:.0f} ms/step", refresh=False)
                clock[:] = [now, dyn.nsteps]
                log_fh.write(" ".join(f"{row[c]:d}" if c == "step" else f"{row[c]:.8g}" for c in LOG_COLUMNS) + "\n")
                log_fh.flush()

            def write_frame():
                write(traj_fh, self._frame(work, self.step_offset + dyn.nsteps), format="extxyz")
                traj_fh.flush()

            bar = stack.enter_context(progress_bar(total=self.steps, desc=f"md {self.ensemble}", enabled=self.progress, unit="step"))
            dyn.attach(log_step, interval=self.log_interval)
            if traj_fh is not None:
                dyn.attach(write_frame, interval=self.traj_interval)
            if self.restart_interval:
                dyn.attach(lambda: self.write_restart(work=work, step=self.step_offset + dyn.nsteps), interval=int(self.restart_interval))
            for _ in dyn.irun(self.steps):
                if dyn.nsteps:
                    bar.update(1)
            bar.refresh()  # the final status, drawn even when the run was shorter than the bar's refresh interval
        final_step = self.step_offset + dyn.nsteps
        self.write_restart(work=work, step=final_step)
        table = {c: np.array([r[c] for r in rows]) for c in LOG_COLUMNS}
        table["step"] = table["step"].astype(int)
        nve = self.ensemble == "nve"
        drift_rate = max_drift = None
        if nve:
            drift_rate = float(np.polyfit(table["time_ps"], table["drift_eV_per_atom"], 1)[0]) if len(rows) > 1 else float("nan")
            max_drift = float(np.max(np.abs(table["drift_eV_per_atom"]))) if rows else float("nan")
        self.result = MDResult(
            atoms=self._frame(work, final_step),
            n_steps=int(dyn.nsteps),
            log=table,
            drift_eV_per_atom_per_ps=drift_rate,
            mean_temperature_K=float(np.mean(table["T_K"])),
            ensemble=self.ensemble,
            max_abs_drift_eV_per_atom=max_drift,
        )
        drift_text = f", E_tot drift {drift_rate:.3g} eV/atom/ps" if nve else ""
        log.info("md %s %s: %d steps, <T> = %.1f K%s", self.ensemble, work.get_chemical_formula(), dyn.nsteps, self.result.mean_temperature_K, drift_text)
        return self.result

    def write_restart(self, path=None, *, work: Atoms | None = None, step: int | None = None) -> Path:
        """The current (or final) frame with momenta, written atomically."""
        if work is None:
            frame = self._need_result().atoms
        else:
            frame = self._frame(work, step if step is not None else self.step_offset)
        return self._write_frame(frame, path or self.output_files["restart"])

    def write_summary(self, path=None) -> Path:
        res = self._need_result()
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={
                "ensemble": self.ensemble,
                "temperature_K": self.temperature_K,
                "timestep_fs": self.timestep_fs,
                "steps": self.steps,
                "friction_per_fs": self.friction_per_fs,
                "tdamp_fs": self.tdamp_fs,
                "pdamp_fs": self.pdamp_fs,
                "pressure_GPa": self.pressure_GPa,
                "seed": self.seed,
                "step_offset": self.step_offset,
            },
            result={k: v for k, v in res.to_dict().items() if k != "log"},
            units=UNITS,
            output_files={k: v for k, v in self.output_files.items() if v is not None},
        )

    def plot(self, path=None) -> Path:
        """PNG of the energy traces (per atom, shifted to their first value) and the temperature."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        res = self._need_result()
        path = Path(path or self.output_files["plot"])
        n = len(res.atoms)
        t = res.log["time_ps"]
        fig = Figure(figsize=(6, 5), dpi=120)
        FigureCanvasAgg(fig)
        ax, ax_t = fig.subplots(2, 1, sharex=True)
        for key, name in (("E_pot_eV", "E_pot"), ("E_kin_eV", "E_kin"), ("E_tot_eV", "E_tot")):
            ax.plot(t, (res.log[key] - res.log[key][0]) / n, label=name)
        ax.set_ylabel("E − E(0) (eV/atom)")
        ax.legend()
        ax_t.plot(t, res.log["T_K"], color="C3")
        ax_t.set_ylabel("T (K)")
        ax_t.set_xlabel("time (ps)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return path
