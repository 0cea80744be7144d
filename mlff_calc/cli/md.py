"""``mlff-calc md``: molecular dynamics (NVE, Langevin, Nose-Hoover, isotropic NPT).

mlff-calc md si64.extxyz --ensemble nvt-langevin --temperature-K 600 --timestep-fs 2 --steps 5000
mlff-calc md run/si64-md-restart.extxyz --restart --steps 5000       # continue a run
"""

from __future__ import annotations

import time

from .types import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, REAL

HELP = "molecular dynamics; writes a log, an extxyz trajectory, a restart file and energy/temperature traces"

#: defaults of the options a restart file may supply instead
THERMO_DEFAULTS = {"ensemble": "nve", "temperature_K": 300.0, "timestep_fs": 1.0, "pressure_GPa": 0.0}
#: mlff_calc.workflows.md.ENSEMBLES, spelled out so that `--help` imports no workflow (a test keeps them equal)
ENSEMBLE_CHOICES = ("npt", "nve", "nvt-langevin", "nvt-nose-hoover")


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p)
    p.add_argument("--ensemble", default=None, choices=ENSEMBLE_CHOICES, help="default: nve (or the restart file's)")
    p.add_argument("--temperature-K", type=NON_NEGATIVE, default=None, help="thermostat target and initial Maxwell-Boltzmann temperature, in K; default: 300")
    p.add_argument("--initial-temperature-K", type=NON_NEGATIVE, default=None, help="initial velocities at this temperature instead (K)")
    p.add_argument("--timestep-fs", type=POSITIVE, default=None, help="integration step, in fs; default: 1")
    p.add_argument("--steps", type=COUNT, default=1000, help="number of MD steps; default: 1000")
    p.add_argument("--pressure-GPa", type=REAL, default=None, help="NPT target pressure, in GPa; default: 0")
    p.add_argument("--friction-per-fs", type=NON_NEGATIVE, default=0.01, help="Langevin friction, in 1/fs; default: 0.01")
    p.add_argument("--tdamp-fs", type=POSITIVE, default=100.0, help="Nose-Hoover thermostat time, in fs; default: 100")
    p.add_argument("--pdamp-fs", type=POSITIVE, default=1000.0, help="MTK barostat time, in fs; default: 1000")
    p.add_argument("--supercell", type=POSITIVE_INT, nargs=3, default=None, metavar="N", help="repeat the input cell first, e.g. 2 2 2")
    p.add_argument("--log-interval", type=POSITIVE_INT, default=10, help="steps between log rows; default: 10")
    p.add_argument("--traj-interval", type=POSITIVE_INT, default=None, help="steps between trajectory frames; default: --log-interval")
    p.add_argument("--restart-interval", type=POSITIVE_INT, default=None, help="steps between restart files; default: at the end only")
    p.add_argument("--seed", type=COUNT, default=0, help="seeds the initial velocities and the Langevin noise; default: 0")
    p.add_argument(
        "--restart",
        action="store_true",
        help="STRUCTURE is a restart file (or trajectory with momenta) of an earlier run: continue it, numbering steps on; "
        "its ensemble, temperature, timestep and pressure are kept unless given. Use a new --out-dir to keep the earlier run's files",
    )
    add_model_options(p)
    add_output_options(p, "md")


def uncertainty_trace(frames, timestep_fs: float | None = None):
    """``(time_ps, values, label)`` of the largest per-atom uncertainty in each trajectory frame, or None.

    Looks for per-atom arrays (or scalars in ``info``) whose name contains
    ``uncertainty``, as written by uncertainty layers; forces uncertainties come first.
    """
    import numpy as np

    if not frames:
        return None
    first = frames[0]
    keys = sorted((k for k in first.arrays if "uncertainty" in k), key=lambda k: (not k.startswith("forces"), k))
    in_info = False
    if not keys:
        keys = sorted(k for k in first.info if "uncertainty" in k)
        in_info = True
    if not keys:
        return None
    key = keys[0]
    values, times = [], []
    for frame in frames:
        raw = frame.info.get(key) if in_info else frame.arrays.get(key)
        if raw is None:
            return None
        values.append(float(np.max(raw)))
        times.append(float(frame.info.get("time_fs", len(times) * (timestep_fs or 1.0))) / 1000.0)
    return np.array(times), np.array(values), f"max {key}"


def run(args) -> int:
    from ase.io import read

    from ..plots import md_traces
    from ..workflows import UNITS
    from ..workflows.md import MolecularDynamics
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    md_kwargs = dict(
        steps=args.steps,
        friction_per_fs=args.friction_per_fs,
        tdamp_fs=args.tdamp_fs,
        pdamp_fs=args.pdamp_fs,
        log_interval=args.log_interval,
        traj_interval=args.traj_interval,
        restart_interval=args.restart_interval,
        initial_temperature_K=args.initial_temperature_K,
        seed=args.seed,
    )
    thermo = {k: getattr(args, k) for k in THERMO_DEFAULTS}
    stem = args.out_dir / args.structure.stem.removesuffix("-md-restart")
    if args.restart:
        last = read_structure(args.structure, -1)  # a clear error for a missing or unreadable file
        calc = load_calculator(args, n_atoms=len(last))
        given = {k: v for k, v in thermo.items() if v is not None}
        wf = MolecularDynamics.restart(args.structure, calc, prefix=stem, **given, **md_kwargs)
    else:
        atoms = read_structure(args.structure, args.index)
        if args.supercell:
            atoms = atoms.repeat(tuple(args.supercell))
        calc = load_calculator(args, n_atoms=len(atoms))
        filled = {k: (THERMO_DEFAULTS[k] if v is None else v) for k, v in thermo.items()}
        wf = MolecularDynamics(atoms, calc, prefix=stem, **filled, **md_kwargs)
    res = wf.run()
    files = wf.output_files
    n = len(res.atoms)
    uncertainty = uncertainty_trace(read(files["trajectory"], index=":"), wf.timestep_fs) if files["trajectory"] is not None and files["trajectory"].is_file() else None
    log = res.log
    plot = md_traces(
        files["plot"],
        time_ps=log["time_ps"],
        energies_eV_per_atom={"E_pot": log["E_pot_eV"] / n, "E_kin": log["E_kin_eV"] / n, "E_tot": log["E_tot_eV"] / n},
        conserved_eV_per_atom=log["E_tot_eV"] / n if wf.ensemble == "nve" else None,
        temperature_K=log["T_K"],
        uncertainty=uncertainty,
        title=f"{res.atoms.get_chemical_formula()} {wf.ensemble}, {wf.timestep_fs:g} fs",
    )
    outputs = {"log": files["log"], "trajectory": files["trajectory"], "restart": files["restart"], "plot": plot}
    results = res.to_dict() | {"temperature_K": wf.temperature_K, "timestep_fs": wf.timestep_fs, "pressure_GPa": wf.pressure_GPa, "first_step": wf.step_offset}
    if uncertainty is not None:
        results["uncertainty"] = {"label": uncertainty[2], "time_ps": uncertainty[0], "values": uncertainty[1]}
    summary = write_summary(args, calc, name="md", started=started, outputs=outputs, results=results, units=UNITS)
    print(f"{results['formula']} {wf.ensemble}: {res.n_steps} steps of {wf.timestep_fs:g} fs ({res.n_steps * wf.timestep_fs / 1000:.3f} ps) from step {wf.step_offset}")
    if wf.ensemble == "nve":
        print(f"  <T> = {res.mean_temperature_K:.1f} K, E_tot drift {1e3 * res.drift_eV_per_atom_per_ps:.3f} meV/atom/ps, max |ΔE_tot| {1e3 * res.max_abs_drift_eV_per_atom:.3f} meV/atom")
    else:
        print(f"  <T> = {res.mean_temperature_K:.1f} K (target {wf.temperature_K:g} K; no E_tot drift: the {wf.ensemble} integrator exchanges energy with its bath)")
    show_outputs(outputs, summary)
    return 0
