"""Cost of candidate student sizes (ScaleShiftMACE, float32, diamond Si), for choosing the default.

For each candidate: parameter count; the median wall time of one energy+forces+stress
call on 64 and 216 atoms; one training step on a batch of 4x64 atoms with the
energy+force loss, and with 4 Hessian rows per structure added (VJP with
create_graph). Calls are interleaved across candidates so machine noise hits all
alike; CHGNet's 64-atom call is timed in the same loop for reference.

    python benchmarks/student_sizes.py --repeats 5 --out student_sizes.json

With ``--labels FOLDER`` (a label store) it also trains every candidate at equal budget
(``--epochs`` epochs, λ_KD = 0, seed 0) and reports its test force MAE against the teacher;
``--candidates`` picks a subset by name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from ase.build import bulk

CANDIDATES = {
    "c16-L0-ell2-corr2-int1-r4.5": dict(channels=16, max_L=0, max_ell=2, correlation=2, num_interactions=1, r_max=4.5),
    "c16-L0-ell2-corr3-int1-r5.0": dict(channels=16, max_L=0, max_ell=2, correlation=3, num_interactions=1, r_max=5.0),
    "c16-L0-ell2-corr2-int2-r4.5": dict(channels=16, max_L=0, max_ell=2, correlation=2, num_interactions=2, r_max=4.5),
    "c16-L0-ell2-corr2-int2-r5.0": dict(channels=16, max_L=0, max_ell=2, correlation=2, num_interactions=2, r_max=5.0),
    "c32-L0-ell2-corr2-int2-r4.5": dict(channels=32, max_L=0, max_ell=2, correlation=2, num_interactions=2, r_max=4.5),
    "c16-L1-ell2-corr2-int2-r4.5": dict(channels=16, max_L=1, max_ell=2, correlation=2, num_interactions=2, r_max=4.5),
    # cheaper single-interaction variants (fewer channels, max_ell 1, 6 Bessel, one-layer radial MLP)
    "c16-L0-ell1-corr2-int1-r4.5": dict(channels=16, max_L=0, max_ell=1, correlation=2, num_interactions=1, r_max=4.5),
    "c16-L0-ell2-corr2-int1-r4.5-b6-mlp16": dict(channels=16, max_L=0, max_ell=2, correlation=2, num_interactions=1, r_max=4.5, num_bessel=6, radial_mlp=[16]),
    "c8-L0-ell2-corr2-int1-r4.5-b6-mlp16": dict(channels=8, max_L=0, max_ell=2, correlation=2, num_interactions=1, r_max=4.5, num_bessel=6, radial_mlp=[16], mlp_irreps="8x0e"),
    "c8-L0-ell1-corr2-int1-r4.5-b6-mlp16": dict(channels=8, max_L=0, max_ell=1, correlation=2, num_interactions=1, r_max=4.5, num_bessel=6, radial_mlp=[16], mlp_irreps="8x0e"),
}


def si(n_rep: int, seed: int = 0):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (n_rep, n_rep, n_rep)
    atoms.rattle(0.05, seed=seed)
    return atoms


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_step(adapter, batch, rows: int) -> None:
    out = adapter.compute(batch, create_graph=True, min_distance=None)
    loss = out["forces"].pow(2).mean() + out["energy"].pow(2).mean()
    flat, pos = out["forces"].reshape(-1), out["_positions"]
    for r in range(rows):
        v = torch.zeros_like(flat)
        v[[3 * 64 * b + 5 * r + b for b in range(len(batch))]] = 1.0
        g = torch.autograd.grad(flat, pos, grad_outputs=v, create_graph=True, retain_graph=True)[0]
        loss = loss + g.pow(2).mean()
    loss.backward()
    adapter.module.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--candidates", nargs="+", default=None, help="names from CANDIDATES (default: all)")
    parser.add_argument("--labels", default=None, help="label store: also train each candidate and report its test force MAE")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--no-timing", action="store_true", help="accuracy only")
    args = parser.parse_args()
    names = args.candidates or list(CANDIDATES)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.models.chgnet import CHGNetAdapter
    from mlff_calc.models.student import StudentAdapter

    s64, s216 = si(2), si(3)
    batch = [si(2, seed=k) for k in range(4)]
    accuracy = {}
    if args.labels:
        from mlff_calc import distill

        for name in names:
            t = time.perf_counter()
            res = distill.train_student(args.labels, architecture=CANDIDATES[name], epochs=args.epochs, lambda_kd=0.0, seed=0, progress=False)
            accuracy[name] = {"test_force_mae": res.metrics["test"]["force_mae"], "test_energy_mae_per_atom": res.metrics["test"]["energy_mae_per_atom"], "train_s": time.perf_counter() - t}
            print(name, accuracy[name], flush=True)
    if args.no_timing:
        if args.out:
            with open(args.out, "w") as fh:
                json.dump({"epochs": args.epochs, "labels": args.labels, "accuracy": accuracy}, fh, indent=2)
        return
    models = {name: StudentAdapter.create([14], dtype="float32", architecture=CANDIDATES[name]) for name in names}
    chgnet = MLFFCalculator(CHGNetAdapter.load(device="cpu"))
    times: dict[str, dict[str, list[float]]] = {name: {"efs64": [], "efs216": [], "train": [], "train_h4": []} for name in models}
    times["chgnet"] = {"efs64": [], "efs216": []}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name, ad in models.items():
            row = {
                "efs64": timed(lambda: ad.compute([s64], stress=True)),
                "efs216": timed(lambda: ad.compute([s216], stress=True)),
                "train": timed(lambda: train_step(ad, batch, 0)),
                "train_h4": timed(lambda: train_step(ad, batch, 4)),
            }
            if rep:
                for k, v in row.items():
                    times[name][k].append(v)
        c64 = timed(lambda: chgnet.evaluate([s64], ("energy", "forces", "stress")))
        c216 = timed(lambda: chgnet.evaluate([s216], ("energy", "forces", "stress")))
        if rep:
            times["chgnet"]["efs64"].append(c64)
            times["chgnet"]["efs216"].append(c216)
    table = {}
    for name, t in times.items():
        table[name] = {k: 1e3 * statistics.median(v) for k, v in t.items()}
        if name in models:
            table[name]["params"] = sum(p.numel() for p in models[name].module.parameters())
    print(f"{'candidate':<30} {'params':>7} {'EFS64 ms':>9} {'EFS216 ms':>10} {'train ms':>9} {'train+H4 ms':>12}")
    for name, row in table.items():
        print(f"{name:<30} {row.get('params', 0):>7} {row['efs64']:>9.1f} {row['efs216']:>10.1f} {row.get('train', float('nan')):>9.0f} {row.get('train_h4', float('nan')):>12.0f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"threads": args.threads, "repeats": args.repeats, "median_ms": table, "epochs": args.epochs, "labels": args.labels, "accuracy": accuracy}, fh, indent=2)


if __name__ == "__main__":
    main()
