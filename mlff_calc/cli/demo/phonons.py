"""Section ``phonons``: Si and NaCl bands at the relaxed lattice constants, against VASP where its data are here."""

from __future__ import annotations

import os
from pathlib import Path

from .framework import START_A, DemoContext, _f, _relaxed_a, primitive, print_table

#: where the VASP-PBE phonopy datasets (``<dir>/<crystal>/``) may be: $MLFF_CALC_SHARED/data, the repository's
#: tests/data, the shared folder beside the repository
REFERENCE_DIRS = ("{shared}/data/phonopy", "{repo}/tests/data/phonopy", "{repo}/../shared/data/phonopy")


def vasp_reference(name: str):
    """The VASP-PBE phonopy reference of ``name`` without its non-analytical correction, or None when absent."""
    from ...workflows.phonons import load_phonopy_reference

    repo = Path(__file__).resolve().parents[3]
    shared = os.environ.get("MLFF_CALC_SHARED", str(repo.parent / "shared"))
    for pattern in REFERENCE_DIRS:
        folder = Path(pattern.format(shared=shared, repo=repo)) / name
        if folder.is_dir():
            reference = load_phonopy_reference(folder)
            reference.nac_params = None  # the model's bands are drawn without NAC too
            return reference, folder
    return None, None


def section_phonons(ctx: DemoContext) -> dict:
    from ...workflows.phonons import FCC_POINTS, Phonons
    from ..phonons import bands_dos_plot

    sizes, out = ctx.sizes, {}
    n = sizes.phonon_supercell
    model = ctx.calc.adapter.model_id
    for name in START_A:
        atoms = primitive(name, _relaxed_a(ctx, name))
        wf = Phonons(atoms, ctx.calc, supercell_matrix=[n, n, n], mesh=(sizes.phonon_mesh,) * 3, band_npoints=sizes.band_npoints, symmetrize_fc=True, prefix=ctx.out_dir / name)
        res = wf.run()
        highest = {"Γ" if k == "G" else k: v for k, v in wf.highest_branch_at(FCC_POINTS).items()}
        out[name] = res.to_dict() | {"supercell": [n, n, n], "highest_branch_THz": highest, "symmetrized_fc": True}
        reference, folder = vasp_reference(name)
        title = f"{name} ({model}, {n}x{n}x{n} supercell, no NAC)"
        if reference is not None:
            reference.run_qpoints(list(FCC_POINTS.values()))
            ref_highest = {"Γ" if k == "G" else k: float(f.max()) for k, f in zip(FCC_POINTS, reference.qpoints.frequencies)}
            out[name]["reference"] = {"source": str(folder), "method": "VASP PBE (phonopy example), no NAC", "highest_branch_THz": ref_highest}
            if highest["Γ"] < 0.5 * ref_highest["Γ"]:
                caveat = f"{model}'s optical modes at Γ are at {highest['Γ']:.1f} THz against VASP-PBE's {ref_highest['Γ']:.1f} THz: the model is far too soft there"
                out[name]["caveat"] = caveat
                title += f"\nΓ optical: {highest['Γ']:.1f} THz vs VASP {ref_highest['Γ']:.1f} THz: the model is far too soft"
        plot = bands_dos_plot(wf, ctx.out_dir / f"phonons-{name}.png", reference, label=model, reference_label="VASP PBE (no NAC)", title=title)
        ctx.add_output(f"bands_{name}", plot)
    rows = []
    for name, r in out.items():
        ref = r.get("reference", {}).get("highest_branch_THz", {})
        points = [f"{_f(r['highest_branch_THz'][p], '.2f')}" + (f" ({ref[p]:.2f})" if p in ref else "") for p in ("Γ", "X", "L")]
        rows.append(
            [
                name,
                f"{n}x{n}x{n} ({r['n_atoms_supercell']})",
                r["n_displacements"],
                *points,
                _f(0.0 if abs(r["min_frequency_THz"]) < 5e-4 else r["min_frequency_THz"], ".3f"),
                "yes" if r["has_imaginary_modes"] else "no",
            ]
        )
    print_table(
        "Phonons at the relaxed lattice constants (symmetrised force constants; highest branch in THz, VASP-PBE in brackets; no non-analytical correction, so NaCl's Γ is TO)",
        ["crystal", "supercell (atoms)", "displacements", "Γ", "X", "L", "min (THz)", "imaginary"],
        rows,
    )
    for name, r in out.items():
        if "caveat" in r:  # the workflow's own warnings are logged already
            print(f"{name}: {r['caveat']}")
    return out
