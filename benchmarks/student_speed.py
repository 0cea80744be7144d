"""Speed of a distilled student against CHGNet, M3GNet and the MACE-MP-0-medium architecture.

One energy+forces+stress call through the ASE calculator (``calc.calculate`` with
all changes, so nothing is cached) on rattled 64- and 216-atom diamond Si cells.
All models are timed in the same loop, round after round (interleaved), so machine
noise hits them alike; the first round warms up and is dropped; medians are reported
with their ratios. With ``--calls-per-round N`` each model makes N consecutive calls
per round and the first of each block is dropped: the steady state of MD, where one
model runs back to back; with 1 (default) every call follows another model's, whose
memory traffic has evicted the caches (a 64-atom compiled student call then takes
~1 ms longer). The student runs eager and, separately, through
``StudentAdapter.compile()`` (torch.compile; inference only). MACE-medium has the
published architecture with random weights (its cost does not depend on the weights).
Cost does not depend on a student's weights either, so ``--student`` is optional:
without it a freshly built default student is timed.

    OMP_NUM_THREADS=1 python benchmarks/student_speed.py --repeats 10 --architecture default={} \\
        'small={"channels": 8, "max_ell": 1, "num_bessel": 6, "radial_mlp": [16], "mlp_irreps": "8x0e"}' \\
        --json benchmarks/results/student_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from ase.build import bulk
from ase.calculators.calculator import all_changes


def rattled_si(n_rep: int):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (n_rep, n_rep, n_rep)
    atoms.rattle(0.05, seed=n_rep)
    return atoms


def one_call(calc, atoms) -> float:
    t = time.perf_counter()
    calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    return time.perf_counter() - t


def student_calcs(path: str | None, architectures: dict) -> dict:
    """Eager and compiled calculators: of the student folder ``path``, or of fresh students."""
    import mlff_calc
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.models.student import StudentAdapter

    makers = (
        {"student": lambda: mlff_calc.load(path, device="cpu").adapter}
        if path
        else {f"student[{name}]": (lambda arch=arch: StudentAdapter.create([14], dtype="float32", architecture=arch)) for name, arch in architectures.items()}
    )
    calcs = {}
    for name, make in makers.items():
        calcs[name] = MLFFCalculator(make())
        calcs[f"{name} compiled"] = MLFFCalculator(make().compile())
    return calcs


def teachers(names) -> dict:
    import mlff_calc
    from mlff_calc.calculator import MLFFCalculator

    calcs = {}
    for name in names:
        if name == "mace-medium":
            from mlff_calc.models.mace import MACEAdapter
            from mlff_calc.models.mace_build import build_medium_mace

            calcs[name] = MLFFCalculator(MACEAdapter(build_medium_mace(), model_id="mace-mp-0-medium-architecture", device="cpu", dtype="float32"))
        elif name == "m3gnet":
            calcs[name] = mlff_calc.load("m3gnet-mp-2021.2.8", device="cpu")
        else:
            calcs[name] = mlff_calc.load(name, device="cpu")
    return calcs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default=None, help="a student folder (default: a fresh default student)")
    p.add_argument("--architecture", nargs="+", default=["default={}"], help="NAME=JSON architecture overrides of fresh students (one or more)")
    p.add_argument("--models", nargs="+", default=["chgnet", "m3gnet", "mace-medium"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--calls-per-round", type=int, default=1, help="consecutive calls of each model per round; above 1 the first of each block is dropped (warm caches, as in MD)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    archs = {a.split("=", 1)[0]: json.loads(a.split("=", 1)[1]) for a in args.architecture}
    load_start = list(os.getloadavg())
    cells = {64: rattled_si(2), 216: rattled_si(3)}
    t = time.perf_counter()
    calcs = student_calcs(args.student, archs)
    for name, calc in calcs.items():  # compile now, outside the timed loop
        for atoms in cells.values():
            one_call(calc, atoms)
    compile_s = time.perf_counter() - t
    students = list(calcs)
    calcs.update(teachers(args.models))
    times = {name: {n: [] for n in cells} for name in calcs}
    for rep in range(args.repeats + 1):
        for name, calc in calcs.items():
            for n, atoms in cells.items():
                block = [one_call(calc, atoms) for _ in range(args.calls_per_round)]
                if rep:  # with blocks, the first call (caches cold after the other models) is dropped
                    times[name][n].extend(block[1:] if len(block) > 1 else block)
    med = {name: {n: 1e3 * statistics.median(v) for n, v in t.items()} for name, t in times.items()}
    rows = {name: {str(n): {"median_ms": med[name][n], **{f"{s} speed-up": med[name][n] / med[s][n] for s in students}} for n in cells} for name in calcs}
    for n in cells:
        print(f"\n{n} atoms: median ms, and how many times faster each student is")
        print(f"{'model':<34}{'ms':>9}" + "".join(f"{s[:22]:>24}" for s in students))
        for name, r in rows.items():
            print(f"{name:<34}{r[str(n)]['median_ms']:>9.1f}" + "".join(f"{r[str(n)][f'{s} speed-up']:>24.1f}" for s in students))
    if args.json:
        report = {
            "command": "OMP_NUM_THREADS=1 python benchmarks/student_speed.py " + " ".join(os.sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "processor": platform.processor(),
                "torch": torch.__version__,
                "note": "shared 2-core CPU",
                "load_average_at_start_and_end": [load_start, list(os.getloadavg())],
            },
            "repeats": args.repeats,
            "calls_per_round": args.calls_per_round,
            "students": {name: {"architecture": calcs[name].adapter.architecture, "n_parameters": int(sum(p.numel() for p in calcs[name].adapter.module.parameters()))} for name in students},
            "compile_and_first_calls_s": compile_s,
            "median_ms_and_speedups": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
