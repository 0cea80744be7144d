"""``mlff-calc relax``: relax positions and (by default) the cell of one structure.

mlff-calc relax si.cif --fmax 0.005 --out-dir run/relax
"""

from __future__ import annotations

import time

from .types import COUNT, POSITIVE, REAL

HELP = "relax atomic positions and the cell of a structure; writes the trajectory and the relaxed structure"


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p)
    p.add_argument("--fmax", type=POSITIVE, default=0.01, help="convergence threshold on the largest force, in eV/Å (also bounds the cell forces); default: 0.01")
    p.add_argument("--steps", type=COUNT, default=500, help="optimiser steps at most; default: 500")
    p.add_argument("--optimizer", default="FIRE", choices=["FIRE", "LBFGS", "BFGS"], help="default: FIRE")
    p.add_argument("--fixed-cell", action="store_true", help="relax positions only, at fixed cell")
    p.add_argument("--keep-symmetry", action="store_true", help="symmetrise the input and keep its space group")
    p.add_argument("--symprec", type=POSITIVE, default=1e-3, help="symmetry tolerance (Å) for --keep-symmetry and the reported space group")
    p.add_argument("--pressure-GPa", type=REAL, default=0.0, help="external hydrostatic pressure for the cell relaxation, in GPa; default: 0")
    add_model_options(p)
    add_output_options(p, "relax")


def run(args) -> int:
    from ..workflows import UNITS
    from ..workflows.relax import Relax
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    atoms = read_structure(args.structure, args.index)
    calc = load_calculator(args, n_atoms=len(atoms))
    stem = args.out_dir / args.structure.stem
    wf = Relax(
        atoms,
        calc,
        optimizer=args.optimizer,
        relax_cell=not args.fixed_cell,
        keep_symmetry=args.keep_symmetry,
        symprec=args.symprec,
        fmax_eV_per_A=args.fmax,
        max_steps=args.steps,
        pressure_GPa=args.pressure_GPa,
        trajectory=f"{stem}-relax-traj.extxyz",
        prefix=stem,
    )
    res = wf.run()
    outputs = {"trajectory": wf.output_files["trajectory"], "structure": wf.write_structure()}
    results = res.to_dict() | {"initial_lattice_parameters": {k: float(v) for k, v in zip(("a", "b", "c", "alpha", "beta", "gamma"), atoms.cell.cellpar())}}
    results["energy_eV"], results["energies_eV"] = results.pop("energy"), results.pop("energies")
    summary = write_summary(args, calc, name="relax", started=started, outputs=outputs, results=results, units=UNITS | {"angles": "degree", "volume": "Å³"})
    lp = res.lattice_parameters
    print(f"{results['formula']}: {'converged' if res.converged else 'NOT converged'} after {res.n_steps} steps (fmax {args.fmax} eV/Å)")
    print(f"  E = {res.energy:.6f} eV ({results['energy_per_atom_eV']:.6f} eV/atom), max force {res.max_force_eV_per_A:.2e} eV/Å")
    print(f"  a, b, c = {lp['a']:.4f}, {lp['b']:.4f}, {lp['c']:.4f} Å; angles {lp['alpha']:.2f}, {lp['beta']:.2f}, {lp['gamma']:.2f}°; V = {lp['volume']:.3f} Å³; space group {res.spacegroup}")
    show_outputs(outputs, summary)
    return 0
