"""``mlff-calc defect``: formation energy of a point defect in a supercell.

mlff-calc defect si.cif --kind vacancy --supercell 3 3 3
mlff-calc defect nacl.cif --kind antisite --site 0 --chemical-potential-eV Na=-1.31 Cl=-1.84
"""

from __future__ import annotations

import time

from .types import COUNT, POSITIVE, POSITIVE_INT, REAL

HELP = "formation energy of a vacancy, interstitial or antisite in a supercell"
#: mlff_calc.workflows.defects.KINDS, spelled out so that `--help` imports no workflow (a test keeps them equal)
KINDS = ("vacancy", "interstitial", "antisite")


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p, help="bulk crystal (any ASE-readable file)")
    p.add_argument("--kind", default="vacancy", choices=list(KINDS), help="default: vacancy")
    p.add_argument("--site", type=COUNT, default=0, help="index (in the input cell) of the atom removed or replaced; default: 0")
    p.add_argument("--species", default=None, help="element inserted (interstitial) or put on --site (antisite)")
    p.add_argument("--position", type=REAL, nargs=3, default=None, metavar=("X", "Y", "Z"), help="Cartesian position of an interstitial, in Å; default: the largest void")
    p.add_argument("--supercell", type=POSITIVE_INT, nargs=3, default=[3, 3, 3], metavar="N", help="repeats of the input cell; default: 3 3 3")
    p.add_argument(
        "--chemical-potential-eV",
        nargs="+",
        default=None,
        metavar="EL=MU",
        help="chemical potentials in eV/atom, e.g. Na=-1.31; default: the host (elemental crystals) or the relaxed ase.build.bulk crystal of the element",
    )
    p.add_argument("--no-relax", action="store_true", help="no relaxation of host and defect supercells")
    p.add_argument("--fmax", type=POSITIVE, default=0.02, help="force threshold of the relaxations, in eV/Å; default: 0.02")
    p.add_argument("--steps", type=COUNT, default=300, help="optimiser steps at most per relaxation; default: 300")
    p.add_argument("--optimizer", default="FIRE", choices=["FIRE", "LBFGS", "BFGS"], help="default: FIRE")
    add_model_options(p)
    add_output_options(p, "defect")


def chemical_potentials(values) -> dict[str, float]:
    """``["Na=-1.3", "Cl=-1.8"]`` (or a mapping, from a YAML config) -> ``{"Na": -1.3, "Cl": -1.8}``."""
    from ..errors import ConfigurationError

    if values is None:
        return {}
    if isinstance(values, dict):
        items = list(values.items())
    else:
        items = []
        for text in [values] if isinstance(values, str) else values:
            element, sep, mu = str(text).partition("=")
            if not sep:
                raise ConfigurationError(f"--chemical-potential-eV takes ELEMENT=VALUE pairs (eV/atom), got {text!r}")
            items.append((element, mu))
    out = {}
    for element, mu in items:
        try:
            out[str(element).strip()] = float(mu)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"chemical potential of {element}: {mu!r} is not a number (eV/atom)") from exc
    return out


def run(args) -> int:
    from ..workflows import UNITS
    from ..workflows.defects import PointDefect
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    atoms = read_structure(args.structure, args.index)
    mu = chemical_potentials(args.chemical_potential_eV)
    calc = load_calculator(args, n_atoms=len(atoms) * args.supercell[0] * args.supercell[1] * args.supercell[2])
    wf = PointDefect(
        atoms,
        calc,
        supercell=args.supercell,
        kind=args.kind,
        site=args.site,
        species=args.species,
        position=args.position,
        chemical_potentials=mu,
        relax=not args.no_relax,
        fmax_eV_per_A=args.fmax,
        max_steps=args.steps,
        optimizer=args.optimizer,
        prefix=args.out_dir / args.structure.stem,
    )
    res = wf.run()
    outputs = {"defect": wf.write_defect()}
    results = res.to_dict() | {"input_formula": atoms.get_chemical_formula()}
    summary = write_summary(args, calc, name="defect", started=started, outputs=outputs, results=results, units=UNITS | {"chemical_potential": "eV/atom"})
    change = ", ".join(f"{'+' if n > 0 else ''}{n} {el}" for el, n in res.delta_n.items())
    repeat = "x".join(str(n) for n in args.supercell)
    print(f"{res.kind} in {res.host_formula} ({repeat} supercell of {results['input_formula']}, {change}){', relaxed' if res.relaxed else ''}")
    print(f"  E_f = {res.formation_energy_eV:.4f} eV")
    for el, value in res.chemical_potentials_eV.items():
        print(f"  μ({el}) = {value:.4f} eV/atom")
    for note in res.notes:
        print(f"  note: {note}")
    if res.relaxed and not res.relax_converged:
        print("  warning: a relaxation did not converge; raise --steps")
    show_outputs(outputs, summary)
    return 0
