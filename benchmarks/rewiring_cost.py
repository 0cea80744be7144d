"""Cost of choosing r* (test-time radius refinement) for diamond Si supercells, 64 to ~10k atoms.

    python benchmarks/rewiring_cost.py --out mlff_results/rewiring_cost   # writes rewiring_cost.json and .md

The reference holds 8 rattled, strained Si64 cells at rc = 5.0 Å (the small MACE
test model's cutoff). Each test cell is a rattled (0.05 Å) cubic Si supercell; r* is
chosen over the default 10 candidate radii (2.5 ... 5.0 Å) with the histogram
distance (padded L2 cannot compare graphs larger than the reference's 64 atoms).
Spectra are dense (eigvalsh) up to 2,000 atoms, KPM above. For the cells where
both work, the exact and KPM choices are both timed and their histograms compared
(total-variation distance on 50 bins over [0, 2]) at the native cutoff.
One BLAS thread; times are the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from threadpoolctl import threadpool_limits

from mlff_calc.artifacts import atomic_path, write_json
from mlff_calc.rewiring import (
    DENSE_MAX,
    SpectrumReference,
    choose_radius,
    histogram_distance,
    laplacian_spectrum,
)
from mlff_calc.rewiring.spectrum import _pairs

RC = 5.0
REPS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11)  # 64 ... 10,648 atoms


def si_cell(n: int, seed: int = 1, strain: float = 0.0):
    atoms = bulk("Si", "diamond", 5.43 * (1 + strain), cubic=True) * (n, n, n)
    atoms.rattle(0.05, seed=seed)
    return atoms


def reference() -> SpectrumReference:
    rng = np.random.default_rng(0)
    train = [si_cell(2, seed=10 + k, strain=float(rng.uniform(-0.01, 0.01))) for k in range(8)]
    return SpectrumReference.build(train, model_id="bench:si", cutoff=RC, source="8 rattled Si64")


def best_time(fn, repeats: int):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mlff_results/rewiring_cost")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-reps", type=int, default=REPS[-1])
    args = parser.parse_args()
    ref = reference()
    rows = []
    with threadpool_limits(limits=1):
        for n in [r for r in REPS if r <= args.max_reps]:
            atoms = si_cell(n)
            t_nl, _ = best_time(lambda: _pairs(atoms, RC), args.repeats)
            t_auto, choice = best_time(lambda: choose_radius(atoms, ref, distance="histogram"), args.repeats)
            row = {"n_atoms": len(atoms), "method": choice.methods[-1], "seconds": t_auto, "neighbor_list_s": t_nl, "r_star": choice.r_star, "min_distance": float(choice.distances.min())}
            if len(atoms) <= DENSE_MAX:
                t_kpm, kchoice = best_time(lambda: choose_radius(atoms, ref, distance="histogram", method="kpm"), args.repeats)
                dense = laplacian_spectrum(atoms, RC, method="dense")
                kpm = laplacian_spectrum(atoms, RC, method="kpm")
                row.update(kpm_seconds=t_kpm, kpm_r_star=kchoice.r_star, kpm_vs_dense_tv=histogram_distance(dense.histogram(ref.edges), kpm.histogram(ref.edges)))
            rows.append(row)
            print(row, flush=True)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"reference": ref.source, "cutoff_A": RC, "distance": "histogram", "n_radii": 10, "dense_max": DENSE_MAX, "rows": rows})
    lines = ["| atoms | method | choose r* (s) | neighbour list (s) | r* (Å) | KPM forced (s) | KPM r* | TV(dense, KPM) at rc |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        kpm = f"{r['kpm_seconds']:.3f} | {r['kpm_r_star']:.3f} | {r['kpm_vs_dense_tv']:.3f}" if "kpm_seconds" in r else "- | - | -"
        lines.append(f"| {r['n_atoms']} | {r['method']} | {r['seconds']:.3f} | {r['neighbor_list_s']:.3f} | {r['r_star']:.3f} | {kpm} |")
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
