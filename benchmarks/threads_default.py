"""Time per CHGNet energy+forces+stress call against the number of CPU threads and atoms.

The CLI picks its thread count per job from these figures (mlff_calc.cli.threads).
Each (size, threads) pair runs in its own process, so every run starts with a fresh
OpenMP pool; pairs are interleaved, so a change of machine load hits them alike.

    python benchmarks/threads_default.py --quick          # 16, 64, 216 atoms; 1 and 2 threads
    python benchmarks/threads_default.py --sizes 8 64 512 --threads 1 2 4

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
import torch
from threadpoolctl import threadpool_limits
torch.set_num_threads(int(sys.argv[2]))
threadpool_limits(limits=int(sys.argv[2]), user_api="blas")
from ase.build import bulk
import mlff_calc
reps = {8: (1, 1, 1), 16: (2, 1, 1), 64: (2, 2, 2), 128: (4, 2, 2), 216: (3, 3, 3), 512: (4, 4, 4), 1000: (5, 5, 5)}
n = int(sys.argv[1])
atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps[n])
atoms.rattle(0.05, seed=0)
calc = mlff_calc.load("chgnet", device="cpu")
times = []
for k in range(int(sys.argv[3]) + 2):
    atoms.positions += 0.001
    t = time.perf_counter()
    calc.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
    times.append(time.perf_counter() - t)
print(json.dumps({"n_atoms": len(atoms), "threads": int(sys.argv[2]), "s_per_call": float(np.median(times[2:]))}))
"""


def run_one(n: int, threads: int, calls: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(threads), str(calls)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 64, 216, 512])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repeats of every pair; the fastest is kept")
    args = ap.parse_args()
    sizes, calls, rounds = ([16, 64, 216], 5, 1) if args.quick else (args.sizes, args.calls, args.rounds)
    started = time.time()
    best: dict[tuple[int, int], float] = {}
    for _ in range(rounds):
        for n in sizes:
            for t in args.threads:
                r = run_one(n, t, calls)
                best[(n, t)] = min(best.get((n, t), float("inf")), r["s_per_call"])
                print(f"{n:>5} atoms  {t} thread(s)  {1e3 * r['s_per_call']:9.1f} ms/call", flush=True)
    rows = [{"n_atoms": n, "threads": t, "ms_per_call": round(1e3 * s, 2)} for (n, t), s in sorted(best.items())]
    speedup = {str(n): round(best[(n, 1)] / best[(n, max(args.threads))], 3) for n in sizes}
    load = os.getloadavg()
    print(
        json.dumps(
            {
                "benchmark": "threads_default",
                "cpus": os.cpu_count(),
                "load_average": [round(x, 2) for x in load],
                "rows": rows,
                f"speedup_{max(args.threads)}_threads": speedup,
                "wall_s": round(time.time() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
