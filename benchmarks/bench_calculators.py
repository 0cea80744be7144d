"""Wall time per energy+forces+stress call: mlff_calc against each upstream ASE calculator.

Runs are interleaved (ours, upstream, ours, ...) so machine noise hits both alike;
the figure of merit is the ratio of medians. Also times one batched call on 32
structures against a loop of single calls through the same calculator.

    python benchmarks/bench_calculators.py --models chgnet m3gnet mace-medium --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes

from mlff_calc.models.base import split_results

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def rattled_si(n_rep: int, seed: int) -> Atoms:
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (n_rep, n_rep, n_rep)
    atoms.rattle(0.05, seed=seed)
    return atoms


def make_pair(name: str, device: str):
    """(ours, upstream) ASE calculators sharing the same weights."""
    from mlff_calc.calculator import MLFFCalculator

    if name == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        from mlff_calc.models.chgnet import CHGNetAdapter

        adapter = CHGNetAdapter.load(device=device)
        return MLFFCalculator(adapter), CHGNetCalculator(model=adapter.module, use_device=device)
    if name == "m3gnet":
        from matgl.ext.ase import PESCalculator

        from mlff_calc.models.m3gnet import M3GNetAdapter

        adapter = M3GNetAdapter.load(SHARED / "models" / "M3GNet-MP-2021.2.8-PES", device=device)
        return MLFFCalculator(adapter), PESCalculator(adapter.module, stress_unit="eV/A3")
    if name == "mace-medium":
        import tempfile

        from mlff_calc._runtime import isolated
        from mlff_calc.models.mace import MACEAdapter
        from mlff_calc.models.mace_build import build_scaleshift_mace

        path = Path(tempfile.mkdtemp()) / "mace-mp0-medium-arch.model"
        torch.save(build_scaleshift_mace(atomic_numbers=list(range(1, 90))), path)
        adapter = MACEAdapter.load(path, device=device, dtype="float32")
        with isolated(env_during={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}):
            from mace.calculators import MACECalculator

            upstream = MACECalculator(model_paths=str(path), device=device, default_dtype="float32")
        return MLFFCalculator(adapter), upstream
    raise SystemExit(f"unknown model {name}")


def one_call(calc, atoms) -> float:
    t = time.perf_counter()
    calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def compare_single(ours, upstream, n_rep: int, repeats: int) -> dict:
    times = {"ours": [], "upstream": []}
    for k in range(repeats + 1):
        atoms = rattled_si(n_rep, seed=k)
        order = [("ours", ours), ("upstream", upstream)] if k % 2 == 0 else [("upstream", upstream), ("ours", ours)]
        for label, calc in order:
            dt = one_call(calc, atoms.copy())
            if k > 0:  # the first round warms both up
                times[label].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"n_atoms": 8 * n_rep**3, "ours_ms": 1e3 * med["ours"], "upstream_ms": 1e3 * med["upstream"], "ratio": med["ours"] / med["upstream"], "repeats": repeats}


def compare_batched(ours, n_structures: int, repeats: int) -> dict:
    """Loop of single calls vs one batched forward pass vs the CPU worker pool, interleaved."""
    structures = [rattled_si(2, seed=100 + i) for i in range(n_structures)]
    props = ("energy", "forces", "stress")
    adapter = ours.adapter
    strategies = {
        "loop": lambda: [adapter.evaluate([a], props) for a in structures],
        "batch": lambda: split_results(adapter.compute(structures, stress=True), [len(a) for a in structures]),
        "evaluate": lambda: ours.evaluate(structures, props),
    }
    times = {k: [] for k in strategies}
    ours.evaluate(structures[:2], props)  # warm up
    for k in range(repeats):
        names = list(strategies)
        for name in names[k % len(names) :] + names[: k % len(names)]:
            t = time.perf_counter()
            strategies[name]()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "n_structures": n_structures,
        "n_atoms_each": 64,
        **{f"{k}_s": v for k, v in med.items()},
        "speedup_batch": med["loop"] / med["batch"],
        "speedup_evaluate": med["loop"] / med["evaluate"],
        "repeats": repeats,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["chgnet", "m3gnet", "mace-medium"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batched-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both sides (default: torch's own)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"device": args.device, "torch_threads": torch.get_num_threads(), "cpu": os.cpu_count(), "models": {}}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    for name in args.models:
        ours, upstream = make_pair(name, args.device)
        entry = {"single": [compare_single(ours, upstream, n, args.repeats) for n in (2, 3)]}
        entry["batched"] = compare_batched(ours, 32, args.batched_repeats)
        report["models"][name] = entry
        for row in entry["single"]:
            print(f"{name:<12} {row['n_atoms']:>4} atoms  ours {row['ours_ms']:8.1f} ms  upstream {row['upstream_ms']:8.1f} ms  ratio {row['ratio']:.2f}", flush=True)
        b = entry["batched"]
        print(
            f"{name:<12} 32x64 atoms: loop {b['loop_s']:.2f} s  one batched forward {b['batch_s']:.2f} s ({b['speedup_batch']:.2f}x)  calc.evaluate {b['evaluate_s']:.2f} s ({b['speedup_evaluate']:.2f}x)",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
