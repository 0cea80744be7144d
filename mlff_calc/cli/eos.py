"""``mlff-calc eos``: energy-volume curve and Birch-Murnaghan fit of one structure.

mlff-calc eos si.cif --strain-range 0.06 --points 9          # relaxes first, then the grid around V_relaxed
mlff-calc eos si.cif --no-relax                              # the grid around the input's volume
"""

from __future__ import annotations

import time

from .types import COUNT, FRACTION, POSITIVE, Number

HELP = "energy-volume curve and third-order Birch-Murnaghan fit (V0, E0, bulk modulus in GPa)"


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p)
    p.add_argument("--strain-range", type=FRACTION, default=0.06, help="volumes span V*(1 ± this) (volumetric strain); default: 0.06")
    p.add_argument("--points", type=Number(int, 5), default=9, help="number of volumes (at least 5); default: 9")
    p.add_argument("--relax", action="store_true", help="relax positions and cell first (the default; kept for old command lines)")
    p.add_argument("--no-relax", action="store_true", help="no relaxation: centre the volumes on the input's instead of the model's relaxed volume")
    p.add_argument("--fmax", type=POSITIVE, default=0.001, help="force threshold of the relaxation, in eV/Å (also bounds the cell forces); default: 0.001")
    p.add_argument("--steps", type=COUNT, default=500, help="optimiser steps at most for the relaxation; default: 500")
    add_model_options(p)
    add_output_options(p, "eos")


def dcdft_reference(atoms) -> dict | None:
    """WIEN2k-PBE equation of state of an element from ase.collections.dcdft (the Delta test), else None.

    Only for elemental structures; the reference is the element's own Delta-test
    crystal, so it is a comparison for its ground-state structure only.
    """
    from ase.collections import dcdft

    symbols = set(atoms.get_chemical_symbols())
    if len(symbols) != 1:
        return None
    (symbol,) = symbols
    data = dcdft.data.get(symbol)
    if data is None:
        return None
    return {
        "source": "ase.collections.dcdft (WIEN2k PBE, Delta test)",
        "label": "PBE (WIEN2k, dcdft)",
        "element": symbol,
        "bulk_modulus_GPa": float(data["wien2k_B"]),
        "bulk_modulus_derivative": float(data["wien2k_Bp"]),
        "v0_per_atom_A3": float(data["wien2k_volume"]),
        "experiment_bulk_modulus_GPa": float(data["exp_B"]),
    }


def run(args) -> int:
    from ..workflows import UNITS
    from ..workflows.eos import EquationOfState
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    atoms = read_structure(args.structure, args.index)
    calc = load_calculator(args, n_atoms=len(atoms))
    stem = args.out_dir / args.structure.stem
    wf = EquationOfState(atoms, calc, strain_range=args.strain_range, n_points=args.points, relax=not args.no_relax, fmax_eV_per_A=args.fmax, max_steps=args.steps, prefix=stem)
    res = wf.run()
    outputs = {}
    if wf.relax_result is not None:
        outputs["relaxed"] = wf._write_frame(wf.relax_result.atoms, f"{stem}-relaxed.extxyz")
    reference = dcdft_reference(atoms)
    outputs["plot"] = wf.plot(reference=reference)
    results = {"formula": atoms.get_chemical_formula()} | res.to_dict()
    if wf.relax_result is not None:
        results["relax"] = {"converged": wf.relax_result.converged, "n_steps": wf.relax_result.n_steps, "energy_eV": wf.relax_result.energy}
    if reference is not None:
        results["reference"] = reference
    summary = write_summary(args, calc, name="eos", started=started, outputs=outputs, results=results, units=UNITS | {"volume": "Å³", "bulk_modulus": "GPa"})
    centre = f"the relaxed volume ({wf.relax_result.n_steps} FIRE steps)" if res.relaxed else "the input volume"
    print(f"{results['formula']}: Birch-Murnaghan fit of {args.points} volumes (±{100 * args.strain_range:g}% around {centre})")
    print(f"  fit residual: rms {1e3 * res.fit_rms_eV_per_atom:.4f} meV/atom, max {1e3 * res.fit_max_residual_eV / res.n_atoms:.4f} meV/atom")
    print(f"  V0 = {res.v0_A3:.4f} Å³ ({res.v0_per_atom_A3:.4f} Å³/atom, {res.v0_offset_percent:+.3f}% from the centre), E0 = {res.e0_eV / res.n_atoms:.6f} eV/atom")
    ref_text = f"   [{reference['source']}: B = {reference['bulk_modulus_GPa']:.1f} GPa, V0 = {reference['v0_per_atom_A3']:.3f} Å³/atom]" if reference else ""
    print(f"  B = {res.bulk_modulus_GPa:.1f} GPa, B' = {res.bulk_modulus_derivative:.2f}{ref_text}")
    show_outputs(outputs, summary)
    return 0
