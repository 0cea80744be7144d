"""NVE energy drift of a distilled student, next to a deliberately non-conservative baseline.

64-atom diamond Si, velocities drawn at 600 K (equipartition brings the cell to ~300 K),
velocity Verlet, ``--ps`` ps at ``--timestep-fs`` fs, with two force fields:

- ``student``: the student as it is. Its forces are -∇E by autograd, so the total
  energy E_kin + E_pot is conserved up to the integrator's error.
- ``student+curl``: the same student plus a small rotational force on every atom,
  F_i += κ A u_i, where u_i is the atom's displacement from its starting site and
  A the antisymmetric matrix of a rotation about (1, 1, 1)/√3. This field has a
  constant non-zero curl (2κ along the axis): its work around a closed loop
  is 2κ times the loop's projected area, so it is the gradient of no energy. It
  stands for the error of a direct-force model whose forces are not a gradient;
  κ (``--kappa``, eV/Å²) is small: 0.01 eV/Å² times thermal displacements of ~0.1 Å
  is ~1 meV/Å. In a harmonic crystal it
  makes circular motions about the axis grow or decay at a rate ~ω κ / (2k), so the
  energy changes steadily instead of fluctuating about a constant.
  The reported potential energy stays the student's, so its total energy drifts.

The drift is the slope of a straight-line fit of (E_tot(t) - E_tot(0))/N over time
(eV/atom/ps). The student is a folder (``--student``); ``--compiled`` runs it
through ``StudentAdapter.compile()``. Writes JSON and a PNG of E_tot(t).

    OMP_NUM_THREADS=1 python benchmarks/student_md_drift.py --student mlff_results/student_dft/Si/student \\
        --json benchmarks/results/student_md_drift.json --png benchmarks/results/student_md_drift.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes


def rotation_generator(axis=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Antisymmetric A with A u = axis × u (unit axis)."""
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


class CurlForces(Calculator):
    """``inner``'s energy, stress and forces, plus the non-conservative term κ A (r_i - r_i(0))."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, inner, reference_positions: np.ndarray, kappa: float):
        super().__init__()
        self.inner, self.ref, self.kappa = inner, np.array(reference_positions), float(kappa)
        self.generator = rotation_generator()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.inner.calculate(self.atoms, ["energy", "forces", "stress"], system_changes)
        self.results = dict(self.inner.results)
        u = self.atoms.positions - self.ref  # no atom moves near half a cell in 10 ps at 300 K
        self.results["forces"] = self.inner.results["forces"] + self.kappa * u @ self.generator.T


def run_nve(calc, *, ps: float, timestep_fs: float, seed: int, prefix: Path) -> dict:
    from mlff_calc.workflows.md import MolecularDynamics

    steps = int(round(ps * 1000 / timestep_fs))
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    if isinstance(calc, CurlForces):
        calc.ref = atoms.positions.copy()
    t = time.perf_counter()
    md = MolecularDynamics(
        atoms,
        calc,
        ensemble="nve",
        temperature_K=300.0,
        initial_temperature_K=600.0,
        timestep_fs=timestep_fs,
        steps=steps,
        log_interval=max(steps // 500, 1),
        trajectory=False,
        seed=seed,
        prefix=prefix,
        progress=False,
    )
    res = md.run()
    wall = time.perf_counter() - t
    e = np.asarray(res.log["E_tot_eV"])
    return {
        "steps": steps,
        "timestep_fs": timestep_fs,
        "length_ps": ps,
        "mean_temperature_K": res.mean_temperature_K,
        "drift_eV_per_atom_per_ps": res.drift_eV_per_atom_per_ps,
        "max_abs_dE_tot_eV_per_atom": float(np.max(np.abs(e - e[0])) / len(atoms)),
        "wall_s": wall,
        "ms_per_step": 1e3 * wall / steps,
        "time_ps": np.asarray(res.log["time_ps"]).tolist(),
        "dE_tot_eV_per_atom": ((e - e[0]) / len(atoms)).tolist(),
    }


def plot(path: Path, runs: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, r in runs.items():
        ax.plot(r["time_ps"], 1e3 * np.asarray(r["dE_tot_eV_per_atom"]), lw=1.0, label=f"{name}: {r['drift_eV_per_atom_per_ps']:.2e} eV/atom/ps")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_tot(t) − E_tot(0) (meV/atom)")
    ax.set_title("NVE, 64-atom Si, ~300 K")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True)
    p.add_argument("--ps", type=float, default=10.0)
    p.add_argument("--timestep-fs", type=float, default=1.0)
    p.add_argument("--kappa", type=float, default=0.01, help="curl strength κ, eV/Å²")
    p.add_argument("--compiled", action="store_true")
    p.add_argument("--only", choices=["student", "student+curl"], default=None, help="run one of the two (e.g. in two processes); the JSON is merged")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("mlff_results/student_md_drift"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import mlff_calc

    student = mlff_calc.load(args.student, device="cpu")
    if args.compiled:
        student.adapter.compile()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    calcs = {"student": student, "student+curl": CurlForces(student, np.zeros((64, 3)), args.kappa)}
    for name, calc in calcs.items():
        if args.only in (None, name):
            runs[name] = run_nve(calc, ps=args.ps, timestep_fs=args.timestep_fs, seed=args.seed, prefix=args.out / name)
            print(name, {k: v for k, v in runs[name].items() if not isinstance(v, list)}, flush=True)
    if args.json:
        runs = merge(
            args.json,
            runs,
            {
                "command": "OMP_NUM_THREADS=1 python benchmarks/student_md_drift.py --student <folder> [--compiled] [--only NAME] --json ... --png ...",
                "student": args.student,
                "compiled": args.compiled,
                "kappa_eV_per_A2": args.kappa,
                "curl_axis": [1, 1, 1],
            },
        )
    if args.png:
        plot(args.png, runs)


def merge(path: Path, runs: dict, header: dict) -> dict:
    """Add ``runs`` to the JSON at ``path`` (under a lock: two processes may finish together)."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = json.loads(path.read_text()) if path.exists() else {}
        report.update(header)
        report["runs"] = {**report.get("runs", {}), **runs}
        path.write_text(json.dumps(report, indent=2))
    path.with_suffix(".lock").unlink(missing_ok=True)
    return report["runs"]


if __name__ == "__main__":
    main()
