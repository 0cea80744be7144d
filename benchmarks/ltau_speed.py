"""Cost of the LTAU layer on a 216-atom Si cell: exact 100k and HNSW 1M indexes.

Bare forward: the distilled Si student (energy + forces, one torch thread) and,
for comparison, CHGNet (the same cell). With layer: the same calculator with an
:class:`~mlff_calc.layers.ltau.LTAULayer` (descriptors from the same forward pass,
k-NN, distribution averaging). Runs are interleaved round by round; medians.

Index sizes beyond the real training set use synthetic descriptors built from
the student's real training descriptors (``--ltau``, an index built for it): a
random real atom ``i``, moved a random fraction of the way to one of its 5
nearest real neighbours ``j``, plus Gaussian noise of 1/4 of ``|x_j - x_i|``
spread over the dimensions; its error distribution is atom ``i``'s. Such points
lie on the real descriptor manifold (random Gaussian vectors would not: there
k-d trees and HNSW behave very differently). Queries are the real descriptors of
the 216-atom cell.

Stages: profile (descriptor extraction, k-NN, averaging: old per-bin path vs
precomputed path), recall of each index against float64 brute force, HNSW
efSearch sweep for recall@k >= 0.95, then the interleaved timing.

    python benchmarks/ltau_speed.py --student STUDENT_DIR --ltau LTAU_DIR --out benchmarks/results/ltau_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", type=Path, required=True)
    p.add_argument("--ltau", type=Path, required=True, help="an LTAU index built for --student (real descriptors and distributions)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ltau_speed.json"))
    p.add_argument("--n-exact", type=int, default=100_000)
    p.add_argument("--n-hnsw", type=int, default=1_000_000)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--nlist", type=int, default=None, help="IVF cells; default sqrt(N)")
    p.add_argument("--k", type=int, default=10, help="k of the synthetic indexes")
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--chgnet", action="store_true", help="also time CHGNet's bare forward on the same cell")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def med_ms(fn, repeats=7):
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return 1e3 * statistics.median(out)


def recall(got, want) -> float:
    k = want.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))


def brute_ids(train, query, k, chunk=50_000):
    """Exact k-NN in float64 (ground truth), chunked over the training set."""
    mu = train[:1000].astype(np.float64).mean(axis=0)
    q = query.astype(np.float64) - mu
    qq = (q * q).sum(1)[:, None]
    best_d = np.full((len(q), 0), np.inf)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(train), chunk):
        x = train[start : start + chunk].astype(np.float64) - mu
        d = qq + (x * x).sum(1)[None] - 2 * q @ x.T
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(x)), (len(q), len(x)))], axis=1)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        dd = np.take_along_axis(d, part, 1)
        order = np.argsort(dd, axis=1, kind="stable")
        best_d, best_i = np.take_along_axis(dd, order, 1), np.take_along_axis(np.take_along_axis(i, part, 1), order, 1)
    return best_i


def synthetic(real, probs, n, rng):
    from scipy.spatial import cKDTree

    _, nb = cKDTree(real).query(real, 6)
    i = rng.integers(0, len(real), n)
    j = nb[i, rng.integers(1, 6, n)]
    t = rng.random((n, 1))
    step = real[j] - real[i]
    noise = rng.normal(size=(n, real.shape[1])) * (0.25 * np.linalg.norm(step, axis=1, keepdims=True) / np.sqrt(real.shape[1]))
    return (real[i] + t * step + noise).astype(np.float32), probs[i]


def main():
    args = parse()
    warnings.filterwarnings("ignore")
    import faiss
    import torch
    from ase.build import bulk
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)

    from mlff_calc import distill
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.ltau import (
        LTAU,
        Calibration,
        ErrorDistributions,
        LTAUIndex,
        cdf_below,
        central_interval,
        expected_error,
    )

    rng = np.random.default_rng(args.seed)
    report: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "threads": {"torch": 1, "faiss": 1, "blas": 1}, "cpu": os.cpu_count()}
    student = distill.load_student(args.student, device="cpu")
    real = LTAU.load(args.ltau, adapter=student)
    cell = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=11)
    qdesc = student.evaluate([cell], ("energy", "descriptors"))[0]["descriptors"].astype(np.float32)
    dim = qdesc.shape[1]
    report["model"] = {"id": student.model_id, "descriptor_dim": dim, "n_atoms": len(cell), "real_index_atoms": real.index.ntotal, "real_k": real.k}

    # profile: where does the time go --------------------------------------------------------------
    prof = {
        "forward_energy_forces_ms": med_ms(lambda: student.evaluate([cell], ("energy", "forces"))),
        "forward_energy_forces_descriptors_ms": med_ms(lambda: student.evaluate([cell], ("energy", "forces", "descriptors"))),
    }
    edges = real.dists.edges
    prof["query_ms_k%d" % real.k] = med_ms(lambda: real.index.query(qdesc, cell.numbers, real.k))
    prof["query_ms_k10"] = med_ms(lambda: real.index.query(qdesc, cell.numbers, 10))
    # averaging, old per-bin path vs precomputed path, on the same neighbours, interleaved
    for kk in sorted({real.k, 10}):
        ids, dist = real.index.query(qdesc, cell.numbers, kk)

        def old_averaging():  # the previous path: mean histogram [M, B] then its statistics
            p = real.neighbour_probabilities(ids)
            return expected_error(edges, probabilities=p), central_interval(edges, level=0.9, probabilities=p), cdf_below(edges, tol=0.05, probabilities=p)

        def new_averaging():
            return real.from_neighbours(ids, dist, tolerance=0.05, level=0.9)

        t_old, t_new = [], []
        for _ in range(31):
            for fn, acc in ((old_averaging, t_old), (new_averaging, t_new)):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
        prof[f"averaging_old_ms_k{kk}"] = 1e3 * statistics.median(t_old[1:])
        prof[f"averaging_new_ms_k{kk}"] = 1e3 * statistics.median(t_new[1:])
    report["profile_real_index"] = prof
    print(json.dumps(prof, indent=1), flush=True)

    # synthetic indexes -------------------------------------------------------------------------------
    train_real = real.index.vectors()
    probs_real = real.dists.probabilities
    X, P = synthetic(train_real, probs_real, args.n_hnsw, rng)
    Xe, Pe = X[: args.n_exact], P[: args.n_exact]

    def make(desc, probs, **kw):
        t = time.perf_counter()
        index = LTAUIndex(desc, np.full(len(desc), 14), **kw)
        build = time.perf_counter() - t
        d = ErrorDistributions(edges=edges, probabilities=probs, burn_in=0, log_bins=True)
        return LTAU(index, d, model_id=student.model_id, model_sha256=student.sha256, spec=real.spec, calibration=Calibration(k=args.k, scale=1.0, interval_level=0.9)), build

    k = args.k
    truth_e = brute_ids(Xe, qdesc, k)
    truth_h = brute_ids(X, qdesc, k)
    exact = {}
    for name, kw in {"exact100k_kdtree": {"exact_search": "kdtree"}, "exact100k_faiss": {"exact_search": "faiss"}}.items():
        lt, b = make(Xe, Pe, **kw)
        lt.index.query(qdesc[:1], k=1)  # builds the tree
        got, _ = lt.index.query(qdesc, k=k)
        exact[name] = lt
        report.setdefault("indexes", {})[name] = {"n": args.n_exact, "build_s": b, "recall_vs_float64": recall(got, truth_e), "query_ms": med_ms(lambda: lt.index.query(qdesc, k=k)), "predict_ms": med_ms(lambda: lt.predict(qdesc, tolerance=0.05))}
        print(name, report["indexes"][name], flush=True)
    raw = faiss.IndexFlatL2(dim)  # faiss flat without centring, for the record
    raw.add(Xe)
    _, got = raw.search(qdesc, k)
    report["indexes"]["exact100k_faiss_uncentred"] = {"recall_vs_float64": recall(got, truth_e), "query_ms": med_ms(lambda: raw.search(qdesc, k))}
    del raw

    hn, b = make(X, P, kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=64)
    sweep = []
    chosen = None
    for ef in (10, 12, 16, 20, 24, 32, 48, 64, 96, 128):
        hn.index.indexes[0].hnsw.efSearch = ef
        got, _ = hn.index.query(qdesc, k=k)
        row = {"ef_search": ef, "recall_at_k": recall(got, truth_h), "query_ms": med_ms(lambda: hn.index.query(qdesc, k=k))}
        sweep.append(row)
        print("hnsw", row, flush=True)
        if chosen is None and row["recall_at_k"] >= args.recall_target:
            chosen = ef
    chosen = chosen or 128
    hn.index.indexes[0].hnsw.efSearch = chosen
    hn.index.hnsw["ef_search"] = chosen
    report["indexes"]["hnsw1M"] = {"n": args.n_hnsw, "m": args.hnsw_m, "ef_construction": args.ef_construction, "build_s": b, "sweep": sweep, "ef_search": chosen, "recall_at_k": next(r["recall_at_k"] for r in sweep if r["ef_search"] == chosen), "predict_ms": med_ms(lambda: hn.predict(qdesc, tolerance=0.05))}

    iv, b = make(X, P, kind="ivf", ivf_nlist=args.nlist, ivf_nprobe=8)
    sweep = []
    probe = None
    for nprobe in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        iv.index.indexes[0].nprobe = nprobe
        got, _ = iv.index.query(qdesc, k=k)
        row = {"nprobe": nprobe, "recall_at_k": recall(got, truth_h), "query_ms": med_ms(lambda: iv.index.query(qdesc, k=k))}
        sweep.append(row)
        print("ivf", row, flush=True)
        if probe is None and row["recall_at_k"] >= args.recall_target:
            probe = nprobe
    probe = probe or 32
    iv.index.indexes[0].nprobe = probe
    iv.index.ivf["nprobe"] = probe
    report["indexes"]["ivf1M"] = {"n": args.n_hnsw, "nlist": int(iv.index.indexes[0].nlist), "build_s": b, "sweep": sweep, "nprobe": probe, "recall_at_k": next(r["recall_at_k"] for r in sweep if r["nprobe"] == probe), "predict_ms": med_ms(lambda: iv.predict(qdesc, tolerance=0.05))}

    # interleaved end-to-end timing ---------------------------------------------------------------------
    calcs = {
        "bare": MLFFCalculator(student),
        "real_%dk_exact_k%d" % (real.index.ntotal // 1000, real.k): MLFFCalculator(student, layers=[LTAULayer(real)]),
        "exact100k_kdtree_k%d" % k: MLFFCalculator(student, layers=[LTAULayer(exact["exact100k_kdtree"])]),
        "exact100k_faiss_k%d" % k: MLFFCalculator(student, layers=[LTAULayer(exact["exact100k_faiss"])]),
        "hnsw1M_ef%d_k%d" % (chosen, k): MLFFCalculator(student, layers=[LTAULayer(hn)]),
        "ivf1M_nprobe%d_k%d" % (probe, k): MLFFCalculator(student, layers=[LTAULayer(iv)]),
    }
    times = {name: [] for name in calcs}
    for r in range(args.repeats + 1):
        for name, c in calcs.items():
            t = time.perf_counter()
            c.evaluate([cell], ("energy", "forces"))
            if r:
                times[name].append(time.perf_counter() - t)
    med = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    report["student_216_atoms_ms"] = {name: {"median_ms": m, "overhead_ms": m - med["bare"], "overhead_pct": 100 * (m / med["bare"] - 1)} for name, m in med.items()}
    print(json.dumps(report["student_216_atoms_ms"], indent=1), flush=True)

    if args.chgnet:
        import mlff_calc

        chg = mlff_calc.load("chgnet", device="cpu")
        t_chg = med_ms(lambda: chg.evaluate([cell], ("energy", "forces")), 5)
        report["chgnet_216_atoms"] = {
            "bare_ms": t_chg,
            "note": "the layer's cost measured on the student (16-d descriptors) relative to CHGNet's bare forward; CHGNet's own descriptors are wider",
            "overhead_pct_of_chgnet": {name: 100 * v["overhead_ms"] / t_chg for name, v in report["student_216_atoms_ms"].items() if name != "bare"},
        }
        print(json.dumps(report["chgnet_216_atoms"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
