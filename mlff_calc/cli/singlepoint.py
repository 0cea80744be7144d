"""``mlff-calc singlepoint``: energy, forces and stress of every frame in a structure file."""

from __future__ import annotations

import time
from pathlib import Path

from .types import POSITIVE_INT, ase_index

HELP = "energy, forces and stress for each structure in a file (any ASE-readable format)"


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options

    p.add_argument("structures", type=Path, help="input file, e.g. an extxyz with several frames")
    p.add_argument("--index", type=ase_index, default=":", help="frames to read (ASE slice syntax); default: all")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="structures per forward pass")
    add_model_options(p)
    add_output_options(p, "singlepoint")


def run(args) -> int:
    import ase.io

    from .._runtime import progress_bar, snapshot
    from ..artifacts import atomic_path, write_json
    from .options import load_calculator, read_frames, run_summary

    started = time.time()
    frames = read_frames(args.structures, args.index)
    calc = load_calculator(args, n_atoms=max(sum(len(a) for a in frames[i : i + args.batch_size]) for i in range(0, len(frames), args.batch_size)))
    out_xyz = args.out_dir / f"{args.structures.stem}-results.extxyz"
    results = []
    for start in progress_bar(range(0, len(frames), args.batch_size), desc="singlepoint", unit="batch", enabled=None if len(frames) > args.batch_size else False):
        chunk = frames[start : start + args.batch_size]
        props = ("energy", "forces", "stress") if all(a.pbc.all() for a in chunk) else ("energy", "forces")
        results.extend(calc.evaluate(chunk, props))
    for k, (atoms, res) in enumerate(zip(frames, results)):
        atoms.calc = None
        # layer outputs (e.g. LTAU uncertainties) go into arrays/info as snapshot() writes them
        atoms = frames[k] = snapshot(atoms, {key: v for key, v in res.items() if key not in ("energy", "forces", "stress")})
        atoms.info["energy"] = res["energy"]
        atoms.arrays["forces"] = res["forces"]
        if "stress" in res:
            atoms.info["stress"] = res["stress"]
    with atomic_path(out_xyz) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    table = [{"index": i, "formula": a.get_chemical_formula(), "energy_eV": r["energy"], "energy_per_atom_eV": r["energy"] / len(a)} for i, (a, r) in enumerate(zip(frames, results))]
    summary_path = args.out_dir / "singlepoint-summary.json"
    units = {"energy": "eV", "energy_per_atom": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³ (Voigt order xx yy zz yz xz xy)"}
    write_json(summary_path, run_summary(args, calc, started=started, outputs={"structures": out_xyz, "summary": summary_path}, results={"frames": table}, units=units))
    for row in table:
        print(f"{row['index']:>5}  {row['formula']:<16} {row['energy_eV']:>14.6f} eV  {row['energy_per_atom_eV']:>10.6f} eV/atom")
    print(f"wrote {out_xyz} and {summary_path}")
    return 0
