"""Phonon forces: batched ``calc.evaluate`` against one-by-one ``atoms.get_forces()``, same run, interleaved.

The displaced supercells are exactly those a phonon workflow evaluates:

- ``Si16``: the VASP reference dataset ../shared/data/phonopy/Si (16-atom supercell, 1 displacement);
- ``NaCl64``: ../shared/data/phonopy/NaCl (64-atom supercell, 2 displacements, BORN);
- ``NaCl64-rd``: ../shared/data/phonopy/NaCl-rd (10 random-displacement 64-atom supercells);
- ``Si54-pm``: Si primitive cell (from the Si reference) in a 3x3x3 supercell, 54 atoms, ±0.01 Å
  (phonopy's full finite-displacement set, ``is_plusminus=True``: 2 supercells);
- ``Si128-pm``: the same at 4x4x4, 128 atoms (2 supercells);
- ``Si54-rd32``: 3x3x3 Si, 32 random-displacement supercells (phonopy ``number_of_snapshots=32``,
  0.03 Å, seed 7), the shape of a symfc / random-displacement phonon run.

For each case and model: ``batched`` = ``evaluate_structures(calc, supercells, ("forces",), batch_size=32)``
(what ``Phonons.compute_forces`` calls); ``one-by-one`` = a fresh copy of each supercell with
``atoms.calc = calc; atoms.get_forces()`` (with ``calc.reset()`` first, so ASE's cache never answers;
through ASE our calculator computes energy, forces and stress of a periodic cell, while the batched
path asks for forces only — that is what each route does in practice). The two are alternated ``--repeats`` times after one
warm-up of each; the figure is the ratio of medians (one-by-one / batched; >1 means batching wins).
Runs once per ``--threads`` entry (``default`` = torch's own thread count at start-up, BLAS untouched;
an integer sets torch and BLAS threads to it).

    python benchmarks/phonons_batched.py --models chgnet m3gnet --threads default 1 --out phonons_batched.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PHONOPY = SHARED / "data" / "phonopy"
CASES = ("Si16", "NaCl64", "NaCl64-rd", "Si54-pm", "Si128-pm", "Si54-rd32")


def supercells(case: str) -> list:
    """The displaced supercells (ASE Atoms, phonopy's order) of one case."""
    from mlff_calc.workflows.phonons import Phonons, load_phonopy_reference, to_ase_atoms

    if case == "Si16":
        return Phonons.from_reference(PHONOPY / "Si", None).displaced_supercells()
    if case == "NaCl64":
        return Phonons.from_reference(PHONOPY / "NaCl", None).displaced_supercells()
    if case == "NaCl64-rd":
        return Phonons.from_phonopy_dataset(PHONOPY / "NaCl-rd" / "phonopy_disp.yaml", None).displaced_supercells()
    primitive = to_ase_atoms(load_phonopy_reference(PHONOPY / "Si").primitive)
    n = 4 if case.startswith("Si128") else 3
    if case.endswith("-pm"):
        return Phonons(primitive, None, supercell_matrix=[n, n, n], primitive_matrix=None, displacement=0.01, is_plusminus=True).displaced_supercells()
    wf = Phonons(primitive, None, supercell_matrix=[n, n, n], primitive_matrix=None, displacement=0.03)
    wf.phonon.generate_displacements(distance=0.03, number_of_snapshots=32, random_seed=7)
    return wf.displaced_supercells()


def make_calc(name: str):
    from mlff_calc.calculator import MLFFCalculator

    if name == "chgnet":
        from mlff_calc.models.chgnet import CHGNetAdapter

        return MLFFCalculator(CHGNetAdapter.load(device="cpu"))
    from mlff_calc.models.m3gnet import M3GNetAdapter

    return MLFFCalculator(M3GNetAdapter.load(SHARED / "models" / "M3GNet-MP-2021.2.8-PES", device="cpu"))


def batched(calc, structures):
    from mlff_calc.workflows import evaluate_structures

    return np.array([r["forces"] for r in evaluate_structures(calc, structures, ("forces",), batch_size=32, progress=False)])


def one_by_one(calc, structures):
    out = []
    for atoms in structures:
        work = atoms.copy()
        calc.reset()  # a structure equal to the previous one would otherwise come from ASE's cache
        work.calc = calc
        out.append(work.get_forces())
    return np.array(out)


def time_case(calc, structures, repeats: int) -> dict:
    f_b, f_o = batched(calc, structures), one_by_one(calc, structures)  # warm-up, and the agreement check
    t_b, t_o = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batched(calc, structures)
        t_b.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        one_by_one(calc, structures)
        t_o.append(time.perf_counter() - t0)
    mb, mo = statistics.median(t_b), statistics.median(t_o)
    return {
        "n_structures": len(structures),
        "n_atoms": len(structures[0]),
        "batched_s": t_b,
        "one_by_one_s": t_o,
        "batched_median_s": mb,
        "one_by_one_median_s": mo,
        "ratio_one_by_one_over_batched": mo / mb,
        "max_abs_force_diff_eV_per_A": float(np.abs(f_b - f_o).max()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["chgnet", "m3gnet"], choices=["chgnet", "m3gnet"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--threads", nargs="+", default=["default", "1"], help="'default' and/or integers")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    default_threads = torch.get_num_threads()
    if "m3gnet" in args.models and not (SHARED / "models" / "M3GNet-MP-2021.2.8-PES").is_dir():
        print(f"M3GNet weights not under {SHARED}/models: skipping m3gnet", file=sys.stderr)
        args.models = [m for m in args.models if m != "m3gnet"]
    structures = {case: supercells(case) for case in args.cases}
    calcs = {name: make_calc(name) for name in args.models}
    rows = []
    for threads in args.threads:
        n = default_threads if threads == "default" else int(threads)
        torch.set_num_threads(n)
        limits = threadpool_limits(limits=n, user_api="blas") if threads != "default" else None
        try:
            for name, calc in calcs.items():
                for case, cells in structures.items():
                    res = time_case(calc, cells, args.repeats)
                    row = {"model": name, "case": case, "threads": threads, "torch_threads": n} | res
                    rows.append(row)
                    print(
                        f"{name:7s} {case:10s} threads={threads:>7s}({n}) {res['n_structures']:3d}x{res['n_atoms']:4d} atoms: "
                        f"batched {res['batched_median_s']:.3f} s, one-by-one {res['one_by_one_median_s']:.3f} s, "
                        f"ratio {res['ratio_one_by_one_over_batched']:.2f}, max |ΔF| {res['max_abs_force_diff_eV_per_A']:.1e}",
                        flush=True,
                    )
        finally:
            if limits is not None:
                limits.unregister()
    torch.set_num_threads(default_threads)

    print("\n| model | case | supercells × atoms | torch threads | batched (s) | one-by-one (s) | one-by-one / batched |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['case']} | {r['n_structures']} × {r['n_atoms']} | {r['threads']} ({r['torch_threads']}) | {r['batched_median_s']:.3f} | {r['one_by_one_median_s']:.3f} | {r['ratio_one_by_one_over_batched']:.2f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__, "default_torch_threads": default_threads},
                    "repeats": args.repeats,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
