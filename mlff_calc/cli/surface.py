"""``mlff-calc surface``: surface energy of a slab cut from a bulk crystal.

mlff-calc surface si-conventional.cif --miller 1 1 1 --layers 6 --vacuum 10 --relax
"""

from __future__ import annotations

import time

from .types import COUNT, INT, POSITIVE, POSITIVE_INT, Checked, not_all_zero

HELP = "surface energy γ (eV/Å² and J/m²) of a slab cut from a bulk crystal"


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p, help="bulk crystal (any ASE-readable file, primitive or conventional); Miller indices refer to its conventional standard cell")
    p.add_argument("--miller", type=INT, action=Checked, check=not_all_zero, nargs=3, default=[1, 0, 0], metavar=("H", "K", "L"), help="Miller indices of the surface; default: 1 0 0")
    p.add_argument(
        "--miller-cell",
        default="conventional",
        choices=["conventional", "input"],
        help="the cell the Miller indices refer to: the conventional standard cell (spglib) or the input cell as given; default: conventional",
    )
    p.add_argument("--layers", type=POSITIVE_INT, default=6, help="repeats of the cell's lattice planes in the slab; default: 6")
    p.add_argument("--vacuum", type=POSITIVE, default=10.0, help="vacuum on each side of the slab, in Å; default: 10")
    p.add_argument("--relax", action="store_true", help="relax the slab's positions at fixed cell (the bulk is taken as relaxed)")
    p.add_argument("--fmax", type=POSITIVE, default=0.02, help="force threshold of --relax, in eV/Å; default: 0.02")
    p.add_argument("--steps", type=COUNT, default=300, help="optimiser steps at most for --relax; default: 300")
    p.add_argument("--optimizer", default="FIRE", choices=["FIRE", "LBFGS", "BFGS"], help="default: FIRE")
    add_model_options(p)
    add_output_options(p, "surface")


def run(args) -> int:
    from ..workflows import UNITS
    from ..workflows.surface import SurfaceEnergy
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    atoms = read_structure(args.structure, args.index)
    calc = load_calculator(args, n_atoms=len(atoms) * args.layers)
    wf = SurfaceEnergy(
        atoms,
        calc,
        miller=args.miller,
        layers=args.layers,
        vacuum=args.vacuum,
        relax=args.relax,
        fmax_eV_per_A=args.fmax,
        max_steps=args.steps,
        optimizer=args.optimizer,
        miller_cell=args.miller_cell,
        prefix=args.out_dir / args.structure.stem,
    )
    res = wf.run()
    outputs = {"slab": wf.write_slab()}
    results = {"formula": atoms.get_chemical_formula()} | res.to_dict()
    summary = write_summary(args, calc, name="surface", started=started, outputs=outputs, results=results, units=UNITS | {"area": "Å²", "surface_energy": "eV/Å² and J/m²"})
    in_input = "" if res.miller_cell == "input" else f" = ({''.join(map(str, res.miller_input_cell))}) of the input cell"
    print(f"{results['formula']} {res.plane}{in_input}: slab of {res.n_atoms} atoms, area {res.area_A2:.3f} Å²{', relaxed' if res.relaxed else ''}")
    print(f"  γ = {res.surface_energy_eV_per_A2:.5f} eV/Å² = {res.surface_energy_J_per_m2:.4f} J/m²")
    if res.relaxed and not res.relax_converged:
        print("  warning: the slab relaxation did not converge; raise --steps")
    show_outputs(outputs, summary)
    return 0
