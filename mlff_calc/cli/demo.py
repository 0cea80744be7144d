"""``mlff-calc demo``: the suite end to end on the embedded default model (CHGNet)."""

from __future__ import annotations

import time
from pathlib import Path

HELP = "run the suite end to end on CHGNet (no other files needed) and write a summary and plots"


def add_arguments(p) -> None:
    from .options import add_output_options

    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--models", nargs="*", default=None, help="models for the single-point table; default: every model available here")
    add_output_options(p, "demo")


def available_models() -> list[str]:
    from ..models.registry import KNOWN_MODELS, locate

    return [name for name, spec in KNOWN_MODELS.items() if spec.bundled or locate(spec)]


def singlepoint_table(models, device) -> list[dict]:
    """Energy per atom and max force of a few structures with every available model."""
    from ase.build import bulk, molecule

    import mlff_calc

    from ..errors import MLFFError

    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.03, seed=0)
    structures = {"Si (diamond, rattled)": si, "NaCl (rocksalt)": bulk("NaCl", "rocksalt", 5.64), "MoS (CsCl, a=4)": None, "H2O (molecule)": molecule("H2O")}
    from ..models.fingerprints import mos_cscl

    structures["MoS (CsCl, a=4)"] = mos_cscl()
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


def run(args) -> int:
    from ..artifacts import write_json
    from .options import run_summary

    started = time.time()
    out: Path = args.out_dir
    models = args.models or available_models()
    rows = singlepoint_table(models, args.device)
    summary_path = out / "demo-summary.json"
    write_json(summary_path, run_summary(args, None, started=started, outputs={"summary": summary_path}, results={"singlepoint": rows}))
    print("\nSingle points")
    print(f"{'model':<28} {'structure':<24} {'E (eV/atom)':>12} {'Fmax (eV/Å)':>12} {'time (ms)':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<28} error: {r['error']}")
        else:
            print(f"{r['model']:<28} {r['structure']:<24} {r['energy_per_atom_eV']:>12.4f} {r['fmax_eV_per_A']:>12.4f} {r['time_ms']:>10.1f}")
    print(f"\nOutputs in {out.resolve()}: {summary_path.name}")
    return 0
