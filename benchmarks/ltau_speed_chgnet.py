"""Cost of the LTAU layer on CHGNet (216-atom Si cell): exact 100k and IVF 1M indexes of CHGNet descriptors.

The companion of ``ltau_speed.py`` (which measures the student). Real CHGNet
descriptors (input of the site-energy readout) of the label store's training
structures seed the synthetic index sets (same recipe as ``ltau_speed.py``);
error distributions are borrowed from the student's index (they only matter for
the averaging cost, not the search). Bare CHGNet and CHGNet + layer are timed
interleaved, medians.

    python benchmarks/ltau_speed_chgnet.py --labels LABELS --ltau LTAU_DIR --out benchmarks/results/ltau_speed_chgnet.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from ltau_speed import brute_ids, med_ms, recall, synthetic


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--ltau", type=Path, required=True, help="any LTAU index: its error distributions are reused")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ltau_speed_chgnet.json"))
    p.add_argument("--n-structures", type=int, default=60)
    p.add_argument("--n-exact", type=int, default=100_000)
    p.add_argument("--n-ivf", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import faiss
    import torch
    from ase.build import bulk
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)
    import mlff_calc
    from mlff_calc import distill
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.ltau import (
        LTAU,
        Calibration,
        ErrorDistributions,
        LTAUIndex,
        compute_descriptors,
        descriptor_spec,
    )

    rng = np.random.default_rng(0)
    calc = mlff_calc.load("chgnet", device="cpu")
    adapter = calc.adapter
    store = distill.LabelStore(args.labels)
    train = [r.atoms for r in store.records("train")][: args.n_structures]
    t = time.perf_counter()
    real, _ = compute_descriptors(adapter, train, batch_size=4)
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "descriptor_dim": int(real.shape[1]), "real_atoms": len(real), "descriptor_s": time.perf_counter() - t}
    borrowed = LTAU.load(args.ltau)
    cell = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=11)
    q = adapter.evaluate([cell], ("energy", "descriptors"))[0]["descriptors"].astype(np.float32)
    X, _ = synthetic(real, np.zeros(len(real)), args.n_ivf, rng)
    probs = borrowed.dists.probabilities[rng.integers(0, borrowed.index.ntotal, args.n_ivf)]
    k = args.k

    def make(desc, pr, **kw):
        t0 = time.perf_counter()
        index = LTAUIndex(desc, np.full(len(desc), 14), **kw)
        d = ErrorDistributions(edges=borrowed.dists.edges, probabilities=pr)
        return LTAU(index, d, model_id=adapter.model_id, model_sha256=adapter.sha256, spec=descriptor_spec(adapter, real.shape[1]), calibration=Calibration(k=k, interval_level=0.9)), time.perf_counter() - t0

    truth_e, truth_i = brute_ids(X[: args.n_exact], q, k), brute_ids(X, q, k)
    variants, report["indexes"] = {}, {}
    for name, desc, pr, kw, truth in (
        ("exact100k_faiss", X[: args.n_exact], probs[: args.n_exact], {"exact_search": "faiss"}, truth_e),
        ("exact100k_kdtree", X[: args.n_exact], probs[: args.n_exact], {"exact_search": "kdtree"}, truth_e),
        ("ivf1M", X, probs, {"kind": "ivf", "ivf_nprobe": 8}, truth_i),
    ):
        lt, b = make(desc, pr, **kw)
        got, _ = lt.index.query(q, k=k)
        row = {"n": len(desc), "build_s": b, "recall_at_k": recall(got, truth), "query_ms": med_ms(lambda: lt.index.query(q, k=k), 5)}
        if name == "ivf1M":  # smallest nprobe reaching recall 0.95
            for nprobe in (1, 2, 3, 4, 6, 8, 12, 16, 32):
                lt.index.indexes[0].nprobe = nprobe
                got, _ = lt.index.query(q, k=k)
                if recall(got, truth) >= 0.95:
                    break
            row.update(nprobe=nprobe, recall_at_k=recall(got, truth), query_ms=med_ms(lambda: lt.index.query(q, k=k), 5), nlist=int(lt.index.indexes[0].nlist))
            name = f"ivf1M_nprobe{nprobe}"
        report["indexes"][name] = row
        variants[name] = lt
        print(name, row, flush=True)

    calcs = {"bare": MLFFCalculator(adapter), **{f"{name}_k{k}": MLFFCalculator(adapter, layers=[LTAULayer(lt)]) for name, lt in variants.items()}}
    times = {name: [] for name in calcs}
    for r in range(args.repeats + 1):
        for name, c in calcs.items():
            t0 = time.perf_counter()
            c.evaluate([cell], ("energy", "forces"))
            if r:
                times[name].append(time.perf_counter() - t0)
    med = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    report["chgnet_216_atoms_ms"] = {name: {"median_ms": m, "overhead_ms": m - med["bare"], "overhead_pct": 100 * (m / med["bare"] - 1)} for name, m in med.items()}
    print(json.dumps(report["chgnet_216_atoms_ms"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
