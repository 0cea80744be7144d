"""LTAU-FF quality and cost on a distilled Si student (CHGNet teacher).

Needs the label store of ``benchmarks/distill_si.py`` (``--labels``, 64-atom
diamond Si, CHGNet labels, train/valid/test splits). Stages:

1. train a student (λ_KD = 0, the library's default architecture) for
   ``--epochs`` epochs on the "train" split, keeping ``error_log.npz``
   (or reuse ``--student`` with its error log);
2. build the LTAU index (exact, one index for all atoms) from the error log with
   ``--burn-in`` epochs dropped; calibrate ``k`` and the scale on "valid";
3. quality on "test" (held out from both training and calibration): Spearman ρ
   between predicted (expected) and actual per-atom force-error norms against
   CHGNet, 90 % interval coverage, and the same on a 1500 K teacher-MD snapshot
   (out of distribution: training MD went to 900 K);
4. OOD detection: AUROC of ``ood_score`` and of ``forces_uncertainty`` for atoms
   of the 1500 K snapshot and of a cell compressed by 6 % (a = 5.10 Å) against
   the test atoms;
5. cost on a 216-atom cell: the bare forward pass (energy + forces) vs the same
   with the LTAU layer, with the real index, an exact index of 100k random
   training descriptors, and an HNSW index of 1M (recall@10 against exact search
   on the same 1M); interleaved medians, one torch and one faiss thread.

Writes ``ltau_quality.json`` into ``--out``.

    python benchmarks/ltau_quality.py --labels bench_distill/labels --out bench_ltau
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--student", type=Path, default=None, help="an already trained student folder with error_log.npz")
    p.add_argument("--out", type=Path, default=Path("bench_ltau"))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--burn-in", type=int, default=10)
    p.add_argument("--n-bins", type=int, default=100)
    p.add_argument("--hot-K", type=float, default=1500.0)
    p.add_argument("--n-hot", type=int, default=3, help="1500 K snapshots (64 atoms each)")
    p.add_argument("--big", type=int, default=1_000_000, help="size of the HNSW index of random descriptors")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def auroc(neg, pos) -> float:
    """P(score of an OOD atom > score of an in-distribution atom), ties counted half."""
    from scipy.stats import rankdata

    scores = np.concatenate([neg, pos])
    ranks = rankdata(scores)
    n0, n1 = len(neg), len(pos)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def quality(calc, structures, ref_forces, *, tol=0.05) -> dict:
    res = calc.evaluate(structures, ("energy", "forces"))
    err = np.concatenate([np.linalg.norm(r["forces"] - f, axis=1) for r, f in zip(res, ref_forces)])
    pred = np.concatenate([r["forces_uncertainty"] for r in res])
    iv = np.concatenate([r["forces_error_interval"] for r in res])
    prob = np.concatenate([r["forces_error_probability_below_tol"] for r in res])
    ood = np.concatenate([r["ood_score"] for r in res])
    return {
        "n_atoms": int(len(err)),
        "force_error_mean": float(err.mean()),
        "predicted_mean": float(pred.mean()),
        "spearman_rho": spearman(pred, err),
        "coverage_90": float(np.mean((iv[:, 0] <= err) & (err <= iv[:, 1]))),
        "interval_width_mean": float(np.mean(iv[:, 1] - iv[:, 0])),
        "p_below_tol_mean": float(prob.mean()),
        "fraction_below_tol": float(np.mean(err < tol)),
        "_ood": ood,
        "_pred": pred,
    }


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    args = parse()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlff_calc").setLevel(logging.INFO)
    from ase import units
    from ase.build import bulk
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    import mlff_calc
    from mlff_calc import distill
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.ltau import LTAU, Calibration, LTAUIndex, build_ltau, error_distributions

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "torch_threads": 1, "faiss_threads": 1}
    store = distill.LabelStore(args.labels)
    report["label_store"] = {"teacher": store.teacher.get("model_id"), "counts": store.manifest.get("counts")}

    t = time.perf_counter()
    if args.student is None:
        student_dir = out / "student"
        res = distill.train_student(store, epochs=args.epochs, lambda_kd=0.0, seed=args.seed, out_dir=student_dir, patience=args.epochs, progress=False)
        report["student"] = {"epochs": args.epochs, "test": res.metrics["test"], "best_epoch": res.metrics["best_epoch"], "train_s": time.perf_counter() - t}
    else:
        student_dir = args.student
    student = distill.load_student(student_dir, device="cpu")
    print(f"student ready in {time.perf_counter() - t:.0f} s: {report.get('student')}", flush=True)

    t = time.perf_counter()
    ltau = build_ltau(student, store, student_dir / "error_log.npz", out / "ltau", n_bins=args.n_bins, burn_in=args.burn_in, calibration=store)
    report["build_s"] = time.perf_counter() - t
    report["calibration"] = ltau.calibration.as_dict()
    print(
        f"LTAU built in {report['build_s']:.1f} s: k={ltau.k} scale={ltau.calibration.scale:.3f} coverage {ltau.calibration.coverage:.3f} (uncalibrated {ltau.calibration.coverage_uncalibrated:.3f})",
        flush=True,
    )

    calc = MLFFCalculator(student, layers=[LTAULayer.from_dir(out / "ltau", tolerance_eV_per_A=0.05)])
    test = store.records("test")
    q_test = quality(calc, [r.atoms for r in test], [r.forces for r in test])

    # out of distribution: teacher MD at 1500 K from the perfect cell, and a compressed cell
    teacher = mlff_calc.load("chgnet", device="cpu")
    hot_frames, hot_forces = [], []
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    atoms.calc = teacher
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.hot_K, rng=np.random.default_rng(args.seed))
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=args.hot_K, friction=0.02, rng=np.random.default_rng(args.seed + 1))
    t = time.perf_counter()
    dyn.run(100)
    for _ in range(args.n_hot):
        dyn.run(25)
        frame = atoms.copy()
        hot_frames.append(frame)
        hot_forces.append(atoms.get_forces().copy())
    report["hot_md_s"] = time.perf_counter() - t
    q_hot = quality(calc, hot_frames, hot_forces)
    squeezed = bulk("Si", "diamond", 5.10, cubic=True) * (2, 2, 2)
    squeezed.rattle(0.03, seed=3)
    sq_forces = teacher.evaluate([squeezed], ("energy", "forces"))[0]["forces"]
    q_sq = quality(calc, [squeezed], [sq_forces])
    report["quality"] = {name: {k: v for k, v in q.items() if not k.startswith("_")} for name, q in (("test", q_test), (f"md_{int(args.hot_K)}K", q_hot), ("compressed_a5.10", q_sq))}
    report["ood_auroc"] = {
        f"md_{int(args.hot_K)}K": {"ood_score": auroc(q_test["_ood"], q_hot["_ood"]), "forces_uncertainty": auroc(q_test["_pred"], q_hot["_pred"])},
        "compressed_a5.10": {"ood_score": auroc(q_test["_ood"], q_sq["_ood"]), "forces_uncertainty": auroc(q_test["_pred"], q_sq["_pred"])},
    }
    print(json.dumps({"quality": report["quality"], "ood_auroc": report["ood_auroc"]}, indent=1), flush=True)

    # cost on 216 atoms
    cell = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=11)
    bare = MLFFCalculator(student)
    dim = ltau.index.dim
    rng = np.random.default_rng(args.seed)

    def random_ltau(n, kind, **kw):
        desc = rng.normal(size=(n, dim)).astype(np.float32)
        probs = rng.random((n, args.n_bins), dtype=np.float32)
        probs /= probs.sum(axis=1, keepdims=True)
        t0 = time.perf_counter()
        index = LTAUIndex(desc, np.full(n, 14), kind=kind, **kw)
        build = time.perf_counter() - t0
        dists = error_distributions(np.ones((2, 1)), n_bins=args.n_bins, e_min=1e-4, e_max=1.0)
        dists.probabilities = probs
        lt = LTAU(index, dists, model_id=student.model_id, model_sha256=student.sha256, spec=ltau.spec, calibration=Calibration(k=10, scale=1.0))
        return lt, desc, build

    variants = {"real_exact": ltau}
    t = time.perf_counter()
    lt100k, _, b100k = random_ltau(100_000, "flat")
    variants["random100k_exact"] = lt100k
    lt1m, desc1m, b1m = random_ltau(args.big, "hnsw", hnsw_m=16, ef_construction=40, ef_search=64)
    variants[f"random{args.big // 1000}k_hnsw"] = lt1m
    report["index_build_s"] = {"random100k_exact": b100k, f"random{args.big // 1000}k_hnsw": b1m}
    print(f"random indexes built: 100k flat {b100k:.1f} s, {args.big} HNSW {b1m:.1f} s", flush=True)

    # recall@10 of HNSW against exact search over the same 1M vectors, queries = the 216 real descriptors
    qdesc = student.evaluate([cell], ("energy", "descriptors"))[0]["descriptors"]
    exact = faiss.IndexFlatL2(dim)
    exact.add(desc1m)
    t0 = time.perf_counter()
    _, ids_exact = exact.search(np.ascontiguousarray(qdesc, dtype=np.float32), 10)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids_hnsw, _ = lt1m.index.query(qdesc, k=10)
    t_hnsw = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_hnsw, ids_exact)]))
    # random queries from the data distribution as well (the real descriptors are far from random ones)
    rq = rng.normal(size=(216, dim)).astype(np.float32)
    _, ide = exact.search(rq, 10)
    idh, _ = lt1m.index.query(rq, k=10)
    recall_rand = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idh, ide)]))
    report["hnsw_recall_at_10"] = {"real_216_queries": recall, "random_216_queries": recall_rand, "exact_search_ms": 1e3 * t_exact, "hnsw_search_ms": 1e3 * t_hnsw}
    del exact

    # where the time goes: the k-NN query alone, per variant, at the k the layer uses
    report["query_only_ms"] = {}
    for name, lt in variants.items():
        lt.index.query(qdesc, cell.numbers, lt.k)
        report["query_only_ms"][name] = {"k": lt.k, "median_ms": 1e3 * statistics.median(timed(lambda: lt.index.query(qdesc, cell.numbers, lt.k), 5))}
        report["query_only_ms"][name]["predict_ms"] = 1e3 * statistics.median(timed(lambda: lt.predict(qdesc, cell.numbers, tolerance=0.05), 5))
    for k in (1, 5, 10, 20, 50):
        report["query_only_ms"][f"real_exact_k{k}"] = {
            "k": k,
            "median_ms": 1e3 * statistics.median(timed(lambda: ltau.index.query(qdesc, cell.numbers, k), 5)),
            "predict_ms": 1e3 * statistics.median(timed(lambda: ltau.predict(qdesc, cell.numbers, tolerance=0.05, k=k), 5)),
        }
    print(json.dumps(report["query_only_ms"], indent=1), flush=True)

    calcs = {"bare": bare, **{name: MLFFCalculator(student, layers=[LTAULayer(lt, tolerance_eV_per_A=0.05)]) for name, lt in variants.items()}}
    times = {name: [] for name in calcs}
    for r in range(args.repeats + 1):  # interleaved; round 0 warms up
        for name, c in calcs.items():
            dt = timed(lambda: c.evaluate([cell], ("energy", "forces")), 1)[0]
            if r:
                times[name].append(dt)
    med = {name: statistics.median(v) for name, v in times.items()}
    report["cost_216_atoms_ms"] = {name: {"median_ms": 1e3 * m, "overhead_ms": 1e3 * (m - med["bare"]), "overhead_pct": 100 * (m / med["bare"] - 1)} for name, m in med.items()}
    print(json.dumps({"hnsw_recall_at_10": report["hnsw_recall_at_10"], "cost_216_atoms_ms": report["cost_216_atoms_ms"]}, indent=1), flush=True)
    (out / "ltau_quality.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
