"""HNSW build settings for an LTAU index: the efSearch each needs for recall@k >= target, and its query time.

The 1M-atom set is the synthetic one of ``ltau_speed.py`` (real training descriptors of
``--ltau`` spread along their manifold); queries are the student's descriptors of a rattled
216-atom Si cell; recall against float64 brute force. Builds use ``--build-threads`` faiss
threads, queries one (medians of 7).

    python benchmarks/ltau_hnsw_build.py --student DIR --ltau DIR --out benchmarks/results/ltau_hnsw_build.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from ltau_speed import brute_ids, med_ms, recall, synthetic


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", type=Path, required=True)
    p.add_argument("--ltau", type=Path, required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--settings", nargs="+", default=["32:80", "32:200", "16:200", "48:200"], help="M:efConstruction pairs")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ltau_hnsw_build.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import faiss
    import torch
    from ase.build import bulk
    from threadpoolctl import threadpool_limits

    from mlff_calc import distill
    from mlff_calc.ltau import LTAU

    torch.set_num_threads(1)
    threadpool_limits(1)
    adapter = distill.load_student(args.student, device="cpu")
    real = LTAU.load(args.ltau, adapter=adapter)
    cell = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=11)
    q = adapter.evaluate([cell], ("energy", "descriptors"))[0]["descriptors"].astype(np.float32)
    X, _ = synthetic(real.index.vectors(), real.dists.probabilities, args.n, np.random.default_rng(0))
    truth = brute_ids(X, q, args.k)
    mu = X.mean(axis=0)
    xc, qc = np.ascontiguousarray(X - mu), np.ascontiguousarray(q - mu)
    rows = []
    for setting in args.settings:
        m, efc = (int(v) for v in setting.split(":"))
        faiss.omp_set_num_threads(args.build_threads)
        t0 = time.perf_counter()
        index = faiss.IndexHNSWFlat(xc.shape[1], m)
        index.hnsw.efConstruction = efc
        index.add(xc)
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        row = {"m": m, "ef_construction": efc, "build_s": build, "ef_search": None}
        for ef in (10, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128):
            index.hnsw.efSearch = ef
            r = recall(index.search(qc, args.k)[1], truth)
            if r >= args.recall_target:
                row.update(ef_search=ef, recall_at_k=r, query_ms=med_ms(lambda index=index: index.search(qc, args.k)))
                break
        print(row, flush=True)
        rows.append(row)
        del index
    report = {
        "command": "python benchmarks/ltau_hnsw_build.py " + " ".join(os.sys.argv[1:]),
        "cpu": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "n": args.n,
        "k": args.k,
        "queries": len(q),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
