"""Surface energies of Si(100) and Cu(111), vacancy formation energies of Si and Cu, next to PBE literature.

For each model (CHGNet 0.3.0; M3GNet-MP-2021.2.8 when ../shared/models holds it):

1. the lattice constant of diamond Si and fcc Cu is relaxed with the same calculator
   (:class:`Relax`, cell + positions, symmetry kept, fmax 1e-3 eV/Å);
2. :class:`SurfaceEnergy` on the relaxed *primitive* cell, so the slabs have the true 1x1 surface
   cell (one atom per plane): Si(100) = Miller (0,1,1) of the fcc primitive basis, unreconstructed
   1x1 (a 1x1 cell cannot dimerise); Cu(111) = Miller (1,1,1) of the primitive basis. The slab
   thickness is stepped (``--si-planes``, ``--cu-planes``) to show convergence, 12 Å of vacuum on
   each side, unrelaxed and relaxed (positions at fixed cell, fmax 0.01 eV/Å);
3. :class:`PointDefect` vacancies in cubic supercells of the relaxed conventional cell
   (``--si-supercells``, ``--cu-supercells``), unrelaxed and relaxed (positions at fixed cell),
   μ = energy per atom of the host. The relaxation starts from the ideal (Td) vacancy and is not
   rattled, so a symmetry-lowering (e.g. the D2d Jahn-Teller distortion of V_Si in DFT) is not sought.

The literature values in ``LITERATURE`` were read in the cited sources (see there for method
details); they are PBE unless stated. Prints a markdown table, writes everything as JSON to --out.

    python benchmarks/surface_defects.py --models chgnet m3gnet --out surface_defects.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))

#: property -> literature entries. Only numbers read in a source are here; "read_in" says where
#: the number was read (the primary paper, or a secondary document quoting it) and "caveat" what
#: could not be checked. Functional: PBE unless the caveat says it was not confirmed.
LITERATURE: dict[str, list[dict]] = {
    "Si(100) surface energy (J/m²)": [
        {
            "key": "EPJAP2022",
            "value": "2.28 (1x1, 0.142 eV/Å²); 1.46 (2x1, 0.091 eV/Å²)",
            "source": "Eur. Phys. J. Appl. Phys. (2022), article ap210276, Table 1 'Surface energies of Si calculated by DFT' (bare surfaces), values reproduced there from that paper's ref. [4]",
            "url": "https://www.epjap.org/articles/epjap/full_html/2022/01/ap210276/T1.html",
            "read_in": "the table page itself (eV/Å², converted here with 16.0218 J/m² per eV/Å²)",
            "caveat": "the exchange-correlation functional and the primary reference [4] are not named in the table page read; not confirmed PBE",
        },
    ],
    "Cu(111) surface energy (J/m²)": [
        {
            "key": "Tran2016",
            "value": "1.314",
            "source": "R. Tran, Z. Xu, B. Radhakrishnan, D. Winston, W. Sun, K. A. Persson, S. P. Ong, 'Surface energies of elemental crystals', Sci. Data 3, 160080 (2016); Dryad doi:10.5061/dryad.f2n6f, surfaces.json (VASP, PBE)",
            "url": "https://doi.org/10.1038/sdata.2016.80",
            "read_in": "a public GitHub file quoting surfaces.json (Lean module Lupine.CalcEvidence.Cu: 'gamma_111 ... reference 1.3140'); the primary dataset itself was not reachable here",
            "caveat": "secondary quotation, not checked against surfaces.json",
        },
    ],
    "Si vacancy formation energy (eV)": [
        {
            "key": "Seeberger2017",
            "value": "3.67 (neutral, D2d, 432-atom cell); 3.86 (Td)",
            "source": "P. Seeberger, J. Vidal, EPJ Photovoltaics 8, 85505 (2017), doi:10.1051/epjpv/2017006, Table 1 (also lists 3.66 and 3.52 eV from its refs. [37], [38]); title not read",
            "url": "https://www.epj-pv.org/articles/epjpv/full_html/2017/01/pv160014/T1.html",
            "read_in": "the table page itself",
            "caveat": "functional not confirmed in what was read (not confirmed PBE)",
        },
        {
            "key": "Sholihun2015",
            "value": "3.46 (cells up to 1728 sites)",
            "source": "Sholihun, M. Saito, T. Ohno, T. Yamasaki, 'Density-functional-theory-based calculations of formation energy and concentration of the silicon monovacancy', Jpn. J. Appl. Phys. 54, 041301 (2015)",
            "url": "http://jairo.nii.ac.jp/0034/00040538/en",
            "read_in": "the abstract",
            "caveat": "functional not stated in the abstract (not confirmed PBE)",
        },
    ],
    "Cu vacancy formation energy (eV)": [
        {
            "key": "Angsten2014",
            "value": "1.07",
            "source": "T. Angsten, T. Mayeshiba, H. Wu, D. Morgan, 'Elemental vacancy diffusion database from high-throughput first-principles calculations for fcc and hcp structures', New J. Phys. 16, 015018 (2014), Table A.1 (VASP, PBE)",
            "url": "https://doi.org/10.1088/1367-2630/16/1/015018",
            "read_in": "a public GitHub file quoting Table A.1 (Lean module Lupine.CalcEvidence.Cu: 'vacancy_formation_energy ... reference 1.0700'); the paper's table itself was not reachable here",
            "caveat": "secondary quotation, not checked against the paper",
        },
    ],
}


def make_calc(name: str):
    from mlff_calc.calculator import MLFFCalculator

    if name == "chgnet":
        from mlff_calc.models.chgnet import CHGNetAdapter

        return MLFFCalculator(CHGNetAdapter.load(device="cpu"))
    from mlff_calc.models.m3gnet import M3GNetAdapter

    return MLFFCalculator(M3GNetAdapter.load(SHARED / "models" / "M3GNet-MP-2021.2.8-PES", device="cpu"))


def relaxed_lattice_constant(calc, element: str, structure: str, a0: float) -> float:
    from ase.build import bulk

    from mlff_calc.workflows.relax import Relax

    res = Relax(bulk(element, structure, a0, cubic=True), calc, relax_cell=True, keep_symmetry=True, fmax_eV_per_A=1e-3, max_steps=500, progress=False).run()
    if not res.converged:
        print(f"warning: {element} bulk relaxation did not converge", file=sys.stderr)
    return float(res.lattice_parameters["a"])


def surfaces(calc, element: str, structure: str, a: float, miller, planes: list[int], per_layer: int, vacuum: float) -> list[dict]:
    from ase.build import bulk

    from mlff_calc.workflows.surface import SurfaceEnergy

    prim = bulk(element, structure, a)
    rows = []
    for n in planes:
        if n % per_layer:
            raise SystemExit(f"{element}: {n} planes is not a multiple of {per_layer}")
        row = {"planes": n}
        for relax in (False, True):
            t0 = time.perf_counter()
            res = SurfaceEnergy(prim, calc, miller=miller, layers=n // per_layer, vacuum=vacuum, relax=relax, fmax_eV_per_A=0.01, max_steps=500, progress=False).run()
            key = "relaxed" if relax else "unrelaxed"
            row[f"{key}_J_per_m2"] = res.surface_energy_J_per_m2
            row["n_atoms"] = res.n_atoms
            row["area_A2"] = res.area_A2
            if relax:
                row["relax_converged"] = res.relax_converged
            row[f"{key}_s"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"  {element}{tuple(miller)} {n:2d} planes: γ = {row['unrelaxed_J_per_m2']:.3f} (unrelaxed), {row['relaxed_J_per_m2']:.3f} J/m² (relaxed, converged={row['relax_converged']})", flush=True
        )
    return rows


def vacancies(calc, element: str, structure: str, a: float, sizes: list[int]) -> list[dict]:
    from ase.build import bulk

    from mlff_calc.workflows.defects import PointDefect

    conv = bulk(element, structure, a, cubic=True)
    rows = []
    for n in sizes:
        row = {"supercell": n}
        for relax in (False, True):
            t0 = time.perf_counter()
            res = PointDefect(conv, calc, supercell=(n, n, n), kind="vacancy", relax=relax, fmax_eV_per_A=0.01, max_steps=500, progress=False).run()
            key = "relaxed" if relax else "unrelaxed"
            row[f"{key}_eV"] = res.formation_energy_eV
            row["n_atoms_host"] = res.n_atoms_host
            if relax:
                row["relax_converged"] = res.relax_converged
            row[f"{key}_s"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"  {element} vacancy, {row['n_atoms_host']}-atom host: E_f = {row['unrelaxed_eV']:.3f} (unrelaxed), {row['relaxed_eV']:.3f} eV (relaxed, converged={row['relax_converged']})", flush=True
        )
    return rows


def lit_text(prop: str) -> str:
    entries = LITERATURE.get(prop) or []
    if not entries:
        return "not found"
    return "; ".join(f"{e['value']} [{e['key']}]" for e in entries)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["chgnet", "m3gnet"], choices=["chgnet", "m3gnet"])
    p.add_argument("--si-planes", nargs="+", type=int, default=[8, 12, 16, 24])
    p.add_argument("--cu-planes", nargs="+", type=int, default=[6, 9, 12, 15])
    p.add_argument("--si-supercells", nargs="+", type=int, default=[2, 3])
    p.add_argument("--cu-supercells", nargs="+", type=int, default=[2, 3])
    p.add_argument("--vacuum", type=float, default=12.0, help="Å on each side of the slab")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--render", type=Path, default=None, help="print the tables of an earlier --out JSON (with the current literature) and exit")
    args = p.parse_args(argv)
    if args.render:
        out = json.loads(args.render.read_text())
        out["literature"] = LITERATURE
        report(out)
        if args.out:
            args.out.write_text(json.dumps(out, indent=1))
        return 0

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")
    if "m3gnet" in args.models and not (SHARED / "models" / "M3GNet-MP-2021.2.8-PES").is_dir():
        print(f"M3GNet weights not under {SHARED}/models: skipping m3gnet", file=sys.stderr)
        args.models = [m for m in args.models if m != "m3gnet"]

    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "literature": LITERATURE, "models": {}}
    for name in args.models:
        print(f"== {name}", flush=True)
        calc = make_calc(name)
        a_si = relaxed_lattice_constant(calc, "Si", "diamond", 5.43)
        a_cu = relaxed_lattice_constant(calc, "Cu", "fcc", 3.61)
        print(f"  relaxed a: Si {a_si:.4f} Å, Cu {a_cu:.4f} Å", flush=True)
        out["models"][name] = {
            "a_Si_A": a_si,
            "a_Cu_A": a_cu,
            "Si(100)": surfaces(calc, "Si", "diamond", a_si, (0, 1, 1), args.si_planes, 2, args.vacuum),
            "Cu(111)": surfaces(calc, "Cu", "fcc", a_cu, (1, 1, 1), args.cu_planes, 1, args.vacuum),
            "Si vacancy": vacancies(calc, "Si", "diamond", a_si, args.si_supercells),
            "Cu vacancy": vacancies(calc, "Cu", "fcc", a_cu, args.cu_supercells),
        }
        if args.out:  # keep what is done so far
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=1))
    report(out)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


def report(out: dict) -> None:
    labels = {"chgnet": "CHGNet 0.3.0", "m3gnet": "M3GNet-MP-2021.2.8"}
    print("\n| property | model | size | unrelaxed | relaxed | DFT literature (see sources and caveats) |")
    print("|---|---|---|---|---|---|")
    for prop, key, size, unit in (
        ("Si(100) surface energy (J/m²)", "Si(100)", lambda r: f"{r['planes']} planes, 1x1", "J_per_m2"),
        ("Cu(111) surface energy (J/m²)", "Cu(111)", lambda r: f"{r['planes']} planes, 1x1", "J_per_m2"),
        ("Si vacancy formation energy (eV)", "Si vacancy", lambda r: f"{r['n_atoms_host']}-atom host", "eV"),
        ("Cu vacancy formation energy (eV)", "Cu vacancy", lambda r: f"{r['n_atoms_host']}-atom host", "eV"),
    ):
        for name, data in out["models"].items():
            for r in data[key]:
                print(f"| {prop} | {labels[name]} | {size(r)} | {r[f'unrelaxed_{unit}']:.3f} | {r[f'relaxed_{unit}']:.3f} | {lit_text(prop)} |")
    print("\nLattice constants (Å): " + "; ".join(f"{labels[n]}: Si {d['a_Si_A']:.4f}, Cu {d['a_Cu_A']:.4f}" for n, d in out["models"].items()))
    print("\nSources:")
    seen = set()
    for entries in LITERATURE.values():
        for e in entries:
            if e["key"] not in seen:
                seen.add(e["key"])
                print(f"- [{e['key']}] {e['source']} {e.get('url', '')}. Read in: {e['read_in']}. Caveat: {e['caveat']}.")


if __name__ == "__main__":
    sys.exit(main())
