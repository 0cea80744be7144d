"""``mlff-calc eos``: energy-volume curve and Birch-Murnaghan fit of one structure.

    mlff-calc eos si.cif --relax --strain-range 0.06 --points 9
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
    p.add_argument("--relax", action="store_true", help="relax positions and cell first (FIRE, --fmax), then scale the relaxed cell")
    p.add_argument("--fmax", type=POSITIVE, default=0.005, help="force threshold of --relax, in eV/Å; default: 0.005")
    p.add_argument("--steps", type=COUNT, default=500, help="optimiser steps at most for --relax; default: 500")
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
        "element": symbol,
        "bulk_modulus_GPa": float(data["wien2k_B"]),
        "bulk_modulus_derivative": float(data["wien2k_Bp"]),
        "v0_per_atom_A3": float(data["wien2k_volume"]),
        "experiment_bulk_modulus_GPa": float(data["exp_B"]),
    }


def eos_results(res, atoms) -> dict:
    """Plain numbers of an EOSResult for a summary."""
    return {
        "formula": atoms.get_chemical_formula(),
        "n_atoms": res.n_atoms,
        "volumes_A3": res.volumes_A3,
        "energies_eV": res.energies_eV,
        "v0_A3": res.v0_A3,
        "v0_per_atom_A3": res.v0_per_atom_A3,
        "e0_eV": res.e0_eV,
        "e0_per_atom_eV": res.e0_eV / res.n_atoms,
        "bulk_modulus_GPa": res.bulk_modulus_GPa,
        "bulk_modulus_derivative": res.bulk_modulus_derivative,
        "fit_rms_eV": res.fit_rms_eV,
        "scale_to_v0": res.scale_to_v0,
    }


def run(args) -> int:
    from ..workflows import UNITS
    from ..workflows.eos import EquationOfState
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    atoms = read_structure(args.structure, args.index)
    calc = load_calculator(args, n_atoms=len(atoms))
    stem = args.out_dir / args.structure.stem
    outputs = {}
    relaxed = None
    if args.relax:
        from ..workflows.relax import Relax

        relax = Relax(atoms, calc, relax_cell=True, fmax_eV_per_A=args.fmax, max_steps=args.steps, prefix=stem)
        relaxed = relax.run()
        atoms = relaxed.atoms.copy()
        atoms.calc = None
        outputs["relaxed"] = relax.write_structure()
    wf = EquationOfState(atoms, calc, strain_range=args.strain_range, n_points=args.points, prefix=stem)
    res = wf.run()
    outputs["plot"] = wf.plot()
    results = eos_results(res, atoms)
    if relaxed is not None:
        results["relax"] = {"converged": relaxed.converged, "n_steps": relaxed.n_steps, "energy_eV": relaxed.energy}
    reference = dcdft_reference(atoms)
    if reference is not None:
        results["reference"] = reference
    summary = write_summary(args, calc, name="eos", started=started, outputs=outputs, results=results, units=UNITS | {"volume": "Å³", "bulk_modulus": "GPa"})
    print(f"{results['formula']}: Birch-Murnaghan fit of {args.points} volumes (±{100 * args.strain_range:g}%), rms {1e3 * res.fit_rms_eV:.3f} meV")
    print(f"  V0 = {res.v0_A3:.4f} Å³ ({res.v0_per_atom_A3:.4f} Å³/atom), E0 = {res.e0_eV:.6f} eV")
    ref_text = f"   [{reference['source']}: B = {reference['bulk_modulus_GPa']:.1f} GPa, V0 = {reference['v0_per_atom_A3']:.3f} Å³/atom]" if reference else ""
    print(f"  B = {res.bulk_modulus_GPa:.1f} GPa, B' = {res.bulk_modulus_derivative:.2f}{ref_text}")
    show_outputs(outputs, summary)
    return 0
