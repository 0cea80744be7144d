"""Sections ``singlepoint``, ``relax`` and ``eos``."""

from __future__ import annotations

import time

from .framework import (
    START_A,
    DemoContext,
    _f,
    _relaxed_a,
    dcdft_lattice_constant,
    fcc_lattice_constant,
    primitive,
    print_table,
)


def available_models() -> list[str]:
    from ...models.registry import KNOWN_MODELS, locate

    return [name for name, spec in KNOWN_MODELS.items() if spec.bundled or locate(spec)]


def singlepoint_table(models, device) -> list[dict]:
    """Energy per atom and max force of a few structures with every available model."""
    from ase.build import bulk, molecule

    import mlff_calc

    from ...errors import MLFFError
    from ...models.fingerprints import mos_cscl

    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.03, seed=0)
    structures = {"Si (diamond, rattled)": si, "NaCl (rocksalt)": bulk("NaCl", "rocksalt", 5.64), "MoS (CsCl, a=4)": mos_cscl(), "H2O (molecule)": molecule("H2O")}
    rows = []
    for name in models:
        try:
            calc = mlff_calc.load(name, device=device)
        except MLFFError as exc:
            rows.append({"model": name, "error": str(exc)})
            continue
        for label, atoms in structures.items():
            atoms = atoms.copy()
            atoms.calc = calc
            t = time.perf_counter()
            energy = atoms.get_potential_energy()
            fmax = float(abs(atoms.get_forces()).max())
            rows.append({"model": name, "structure": label, "energy_per_atom_eV": energy / len(atoms), "fmax_eV_per_A": fmax, "time_ms": 1e3 * (time.perf_counter() - t)})
    return rows


def section_singlepoint(ctx: DemoContext) -> dict:
    rows = singlepoint_table(ctx.args.models or available_models(), ctx.args.device)
    print("\nSingle points")
    print(f"{'model':<28} {'structure':<24} {'E (eV/atom)':>12} {'Fmax (eV/Å)':>12} {'time (ms)':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<28} error: {r['error']}")
        else:
            print(f"{r['model']:<28} {r['structure']:<24} {r['energy_per_atom_eV']:>12.4f} {r['fmax_eV_per_A']:>12.4f} {r['time_ms']:>10.1f}")
    return {"rows": rows}


def section_relax(ctx: DemoContext) -> dict:
    from ...workflows.relax import Relax
    from ..eos import dcdft_reference

    sizes, out = ctx.sizes, {}
    for k, name in enumerate(START_A):
        start = primitive(name, START_A[name][1])
        start.rattle(0.02, seed=k)
        # symprec 0.01 Å: the space group of the relaxed cell, not of the rattle's remainder below fmax
        res = Relax(start, ctx.calc, optimizer="FIRE", relax_cell=True, fmax_eV_per_A=sizes.relax_fmax_eV_per_A, max_steps=sizes.relax_steps, symprec=0.01, prefix=ctx.out_dir / name).run()
        reference = dcdft_reference(start)
        out[name] = {
            "a_A": fcc_lattice_constant(res.atoms),
            "a_start_A": START_A[name][1],
            "a_pbe_dcdft_A": dcdft_lattice_constant(reference),
            "energy_per_atom_eV": res.energy / len(start),
            "converged": res.converged,
            "n_steps": res.n_steps,
            "max_force_eV_per_A": res.max_force_eV_per_A,
            "spacegroup": res.spacegroup,
            "lattice_parameters": res.lattice_parameters,
        }
    rows = [
        [name, _f(r["a_start_A"]), _f(r["a_A"], ".4f"), _f(r["a_pbe_dcdft_A"], ".4f"), _f(r["energy_per_atom_eV"], ".4f"), r["n_steps"], "yes" if r["converged"] else "NO", r["spacegroup"]]
        for name, r in out.items()
    ]
    print_table(
        f"Relaxation (cell + positions, FIRE, fmax {sizes.relax_fmax_eV_per_A:g} eV/Å)",
        ["crystal", "a start (Å)", "a (Å)", "a PBE dcdft (Å)", "E (eV/atom)", "steps", "converged", "space group"],
        rows,
    )
    return out


def section_eos(ctx: DemoContext) -> dict:
    from ...plots import eos_curves
    from ...workflows.eos import (
        EquationOfState,
        eos_curve,
        reference_curve,
        reference_label,
    )
    from ..eos import dcdft_reference

    sizes, out, curves, references = ctx.sizes, {}, {}, {}
    for name in START_A:
        atoms = primitive(name, _relaxed_a(ctx, name))
        wf = EquationOfState(atoms, ctx.calc, strain_range=sizes.eos_strain_range, n_points=sizes.eos_points, fmax_eV_per_A=sizes.relax_fmax_eV_per_A)
        res = wf.run()
        reference = dcdft_reference(atoms)
        out[name] = res.to_dict() | {
            "a0_A": (4.0 * res.v0_A3) ** (1.0 / 3.0),
            "bulk_modulus_pbe_dcdft_GPa": None if reference is None else reference["bulk_modulus_GPa"],
            "reference": reference,
        }
        label = f"{name}: B = {res.bulk_modulus_GPa:.1f} GPa"
        curves[label] = eos_curve(res)
        if reference is not None:
            references[label] = (f"{name} {reference_label(reference)}", *reference_curve(reference, res))
    title = f"{ctx.calc.adapter.model_id}: Birch-Murnaghan fits"
    ctx.add_output("eos_plot", eos_curves(ctx.out_dir / "eos.png", curves, references=references, title=title))
    rows = [
        [
            name,
            _f(r["v0_per_atom_A3"]),
            _f(r["a0_A"], ".4f"),
            _f(r["bulk_modulus_GPa"], ".1f"),
            _f(r["bulk_modulus_pbe_dcdft_GPa"], ".1f"),
            _f(r["bulk_modulus_derivative"], ".2f"),
            _f(1e3 * r["fit_rms_eV_per_atom"], ".4f"),
        ]
        for name, r in out.items()
    ]
    print_table(
        f"Equation of state (relaxed first; ±{100 * sizes.eos_strain_range:g}% volume around it, {sizes.eos_points} points, BM3)",
        ["crystal", "V0 (Å³/atom)", "a0 (Å)", "B (GPa)", "B PBE dcdft (GPa)", "B'", "rms (meV/atom)"],
        rows,
    )
    return out
