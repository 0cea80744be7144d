"""Section ``md``: NVE of Si near 300 K and its energy drift."""

from __future__ import annotations

import time

from .framework import DemoContext, _f, _relaxed_a, print_table


def section_md(ctx: DemoContext) -> dict:
    import numpy as np
    from ase.build import bulk

    from ...plots import md_traces
    from ...workflows.md import MolecularDynamics

    sizes = ctx.sizes
    atoms = bulk("Si", "diamond", _relaxed_a(ctx, "Si"), cubic=True).repeat(sizes.md_repeat)
    wf = MolecularDynamics(
        atoms,
        ctx.calc,
        ensemble="nve",
        temperature_K=300.0,
        initial_temperature_K=600.0,  # NVE shares the kinetic energy with the potential: starts at 2T to settle near T
        timestep_fs=sizes.md_timestep_fs,
        steps=sizes.md_steps,
        log_interval=sizes.md_log_interval,
        trajectory=ctx.out_dir / "md-Si-traj.extxyz",
        seed=0,
        prefix=ctx.out_dir / "md-Si",
    )
    t0 = time.perf_counter()
    res = wf.run()
    elapsed = time.perf_counter() - t0
    ctx.state["md"] = {"workflow": wf, "result": res}
    log, n = res.log, len(atoms)
    drift = log["drift_eV_per_atom"]
    out = {
        "formula": atoms.get_chemical_formula(),
        "n_atoms": n,
        "ensemble": "nve",
        "timestep_fs": sizes.md_timestep_fs,
        "n_steps": res.n_steps,
        "initial_temperature_K": 600.0,
        "mean_temperature_K": res.mean_temperature_K,
        "drift_eV_per_atom_per_ps": res.drift_eV_per_atom_per_ps,
        "max_abs_drift_eV_per_atom": float(np.max(np.abs(drift))),
        "final_drift_eV_per_atom": float(drift[-1]),
        "ms_per_step": 1e3 * elapsed / max(res.n_steps, 1),
        "log": log,
    }
    ctx.add_output("md_trajectory", wf.trajectory)
    ctx.add_output("md_log", wf.output_files["log"])
    plot = md_traces(
        ctx.out_dir / "md-energy.png",
        time_ps=log["time_ps"],
        energies_eV_per_atom={"E_pot": log["E_pot_eV"] / n, "E_kin": log["E_kin_eV"] / n, "E_tot": log["E_tot_eV"] / n},
        conserved_eV_per_atom=log["E_tot_eV"] / n,
        temperature_K=log["T_K"],
        title=f"Si{n} NVE, {sizes.md_timestep_fs:g} fs ({ctx.calc.adapter.model_id})",
    )
    ctx.add_output("md_plot", plot)
    rows = [
        [
            out["formula"],
            f"{res.n_steps} x {sizes.md_timestep_fs:g} fs",
            _f(res.mean_temperature_K, ".1f"),
            _f(1e3 * out["drift_eV_per_atom_per_ps"], ".3f"),
            _f(1e3 * out["max_abs_drift_eV_per_atom"], ".3f"),
            _f(out["ms_per_step"], ".1f"),
        ]
    ]
    print_table("Molecular dynamics (NVE, velocities drawn at 600 K)", ["system", "steps", "<T> (K)", "drift (meV/atom/ps)", "max |ΔE_tot| (meV/atom)", "ms/step"], rows)
    return out
