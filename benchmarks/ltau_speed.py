"""Cost of the LTAU layer on a 216-atom Si cell: exact 100k, HNSW 1M and IVF 1M indexes.

One model per run: ``--model student`` (a distilled student and an LTAU index
built for it) or ``--model chgnet`` (CHGNet's own descriptors, from the training
structures of ``--labels``; error distributions borrowed from ``--ltau``, they
only matter for the cost of averaging). Bare calculator and calculator + layer
are timed interleaved round by round, medians of energy + forces + stress
calls; the layer runs with its lookup overlapping the backward pass (default)
and without (``overlap=False``).

Index sets of 100k / 1M atoms are synthetic but lie on the real descriptor
manifold: a random real atom ``i``, moved a random fraction of the way to one
of its 5 nearest real neighbours ``j``, plus Gaussian noise of 1/4 of
``|x_j - x_i|`` spread over the dimensions; its error distribution is atom
``i``'s. (Random Gaussian vectors would not lie on it, and k-d trees and HNSW
behave very differently there.) Queries are the real descriptors of the cell;
recall@k is measured against float64 brute force.

    python benchmarks/ltau_speed.py --model student --student DIR --ltau DIR --out benchmarks/results/ltau_speed.json
    python benchmarks/ltau_speed.py --model student --compile --student DIR --ltau DIR --out benchmarks/results/ltau_speed_compiled.json
    python benchmarks/ltau_speed.py --model chgnet --labels LABELS --ltau DIR --out benchmarks/results/ltau_speed_chgnet.json
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
    p.add_argument("--model", choices=("student", "chgnet"), default="student")
    p.add_argument("--student", type=Path, help="student folder (--model student)")
    p.add_argument("--compile", action="store_true", help="--model student: time the compiled student (one graph for forward and backward: the lookup follows it)")
    p.add_argument("--labels", type=Path, help="label store whose training structures seed CHGNet's descriptors (--model chgnet)")
    p.add_argument("--ltau", type=Path, required=True, help="an LTAU index: the student's own, or any (its distributions are borrowed for CHGNet)")
    p.add_argument("--n-structures", type=int, default=60, help="CHGNet: training structures that seed the descriptor sets")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ltau_speed.json"))
    p.add_argument("--n-exact", type=int, default=100_000)
    p.add_argument("--n-large", type=int, default=1_000_000, help="size of the HNSW and IVF sets")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--build-threads", type=int, default=2, help="faiss threads while building HNSW/IVF (not timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md-interval", type=int, default=10, help="MD section: steps between uncertainty checks of the on-demand layer (0: skip the section)")
    p.add_argument("--md-frames", type=int, default=200, help="MD section: consecutive frames timed")
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


def model_and_descriptors(args):
    """``(adapter, real training descriptors, their distributions, borrowed LTAU)``."""
    from mlff_calc.ltau import LTAU

    if args.model == "student":
        from mlff_calc import distill

        adapter = distill.load_student(args.student, device="cpu")
        if args.compile:
            adapter.compile()
        real = LTAU.load(args.ltau, adapter=adapter)
        return adapter, real.index.vectors(), real.dists.probabilities, real
    import mlff_calc
    from mlff_calc import distill
    from mlff_calc.ltau import compute_descriptors

    adapter = mlff_calc.load("chgnet", device="cpu").adapter
    train = [r.atoms for r in distill.LabelStore(args.labels).records("train")][: args.n_structures]
    desc, _ = compute_descriptors(adapter, train, batch_size=4)
    borrowed = LTAU.load(args.ltau)
    rng = np.random.default_rng(args.seed + 1)
    return adapter, desc.astype(np.float32), borrowed.dists.probabilities[rng.integers(0, borrowed.index.ntotal, len(desc))], borrowed


def main():
    args = parse()
    warnings.filterwarnings("ignore")
    import faiss
    import torch
    from ase.build import bulk
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.torch_threads)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.ltau import LTAU, Calibration, ErrorDistributions, LTAUIndex, descriptor_spec

    rng = np.random.default_rng(args.seed)
    adapter, real, probs_real, borrowed = model_and_descriptors(args)
    cell = bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=11)
    props = ("energy", "forces", "stress")
    q = adapter.evaluate([cell], ("energy", "descriptors"))[0]["descriptors"].astype(np.float32)
    report: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": {"torch": args.torch_threads, "faiss_in_lookup": 1, "blas": 1},
        "cpu": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "model": {"id": adapter.model_id, "descriptor_dim": int(q.shape[1]), "n_atoms": len(cell), "real_atoms": len(real)},
        "properties": list(props),
    }
    marks = []
    t_desc = []
    for _ in range(9):  # when, within one call, the descriptors exist (the lookup can start)
        t0 = time.perf_counter()
        adapter.evaluate([cell], props + ("descriptors",), on_descriptors=lambda *a: marks.append(time.perf_counter()))
        t_desc.append((marks[-1] - t0, time.perf_counter() - t0))
    report["call_split_ms"] = {"to_descriptors": 1e3 * statistics.median(a for a, _ in t_desc[1:]), "whole_call": 1e3 * statistics.median(b for _, b in t_desc[1:])}
    print(report["call_split_ms"], flush=True)

    X, P = synthetic(real, probs_real, args.n_large, rng)
    edges = borrowed.dists.edges
    k = args.k

    def make(desc, pr, **kw):
        faiss.omp_set_num_threads(args.build_threads)
        t0 = time.perf_counter()
        index = LTAUIndex(desc, np.full(len(desc), 14), **kw)
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        d = ErrorDistributions(edges=edges, probabilities=pr, burn_in=0, log_bins=True)
        return LTAU(index, d, model_id=adapter.model_id, model_sha256=adapter.sha256, spec=descriptor_spec(adapter, q.shape[1]), calibration=Calibration(k=k, scale=1.0, interval_level=0.9)), build

    truth_e = brute_ids(X[: args.n_exact], q, k)
    truth_l = brute_ids(X, q, k)
    indexes, report["indexes"] = {}, {}
    for engine in ("kdtree", "blocked", "faiss"):
        lt, build = make(X[: args.n_exact], P[: args.n_exact], exact_search=engine)
        got, _ = lt.index.query(q, k=k)  # builds the tree / blocks
        name = f"exact100k_{engine}"
        report["indexes"][name] = {
            "n": args.n_exact,
            "build_s": build,
            "recall_at_k": recall(got, truth_e),
            "query_ms": med_ms(lambda: lt.index.query(q, k=k)),
            "predict_ms": med_ms(lambda: lt.predict(q, tolerance=0.05)),
        }
        indexes[name] = lt
        print(name, report["indexes"][name], flush=True)

    def sweep(lt, setter, values, key):
        rows, chosen = [], None
        for v in values:
            setter(lt, v)
            got, _ = lt.index.query(q, k=k)
            rows.append({key: v, "recall_at_k": recall(got, truth_l), "query_ms": med_ms(lambda: lt.index.query(q, k=k))})
            print(rows[-1], flush=True)
            if rows[-1]["recall_at_k"] >= args.recall_target:
                chosen = v
                break
        return rows, chosen if chosen is not None else values[-1]

    def set_ef(lt, v):
        lt.index.indexes[0].hnsw.efSearch = v
        lt.index.hnsw["ef_search"] = v

    def set_probe(lt, v):
        lt.index.indexes[0].nprobe = v
        lt.index.ivf["nprobe"] = v

    hn, build = make(X, P, kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=16)
    rows, ef = sweep(hn, set_ef, (16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256), "ef_search")
    set_ef(hn, ef)
    report["indexes"]["hnsw1M"] = {
        "n": args.n_large,
        "m": args.hnsw_m,
        "ef_construction": args.ef_construction,
        "build_s": build,
        "sweep": rows,
        "ef_search": ef,
        "predict_ms": med_ms(lambda: hn.predict(q, tolerance=0.05)),
    }
    indexes[f"hnsw1M_ef{ef}"] = hn
    iv, build = make(X, P, kind="ivf", ivf_nprobe=1)
    rows, probe = sweep(iv, set_probe, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32), "nprobe")
    set_probe(iv, probe)
    report["indexes"]["ivf1M"] = {
        "n": args.n_large,
        "nlist": int(iv.index.indexes[0].nlist),
        "build_s": build,
        "sweep": rows,
        "nprobe": probe,
        "predict_ms": med_ms(lambda: iv.predict(q, tolerance=0.05)),
    }
    indexes[f"ivf1M_nprobe{probe}"] = iv

    calcs = {"bare": MLFFCalculator(adapter)}
    for name, lt in indexes.items():
        if name == "exact100k_faiss":
            continue  # far slower than the other exact engines (see its query_ms); not worth the rounds
        calcs[f"{name}_k{k}"] = MLFFCalculator(adapter, layers=[LTAULayer(lt)])
        calcs[f"{name}_k{k}_no_overlap"] = MLFFCalculator(adapter, layers=[LTAULayer(lt, overlap=False)])
    times = {name: [] for name in calcs}
    for r in range(args.repeats + 1):
        for name, c in calcs.items():
            t0 = time.perf_counter()
            c.evaluate([cell], props)
            if r:
                times[name].append(time.perf_counter() - t0)
    med = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    report["timing_216_atoms_ms"] = {name: {"median_ms": m, "overhead_ms": m - med["bare"], "overhead_pct": 100 * (m / med["bare"] - 1)} for name, m in med.items()}
    print(json.dumps(report["timing_216_atoms_ms"], indent=1), flush=True)
    if args.md_interval:
        chosen = {name: lt for name, lt in indexes.items() if name.startswith(("exact100k_kdtree", "hnsw1M"))}
        report["md_on_demand"] = md_timing(adapter, cell, chosen, args)
        print(json.dumps(report["md_on_demand"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def md_timing(adapter, cell, indexes: dict, args) -> dict:
    """Per-step cost along consecutive MD frames: every step looked up, or on demand every ``--md-interval`` steps.

    Frames come from Langevin MD (300 K, 2 fs) with the bare model. For each frame, in turn,
    every calculator gets a fresh Atoms and computes its forces (what ASE's integrators ask
    for); the on-demand ones are also asked for ``forces_uncertainty_max`` on every
    ``--md-interval``-th frame, as an :class:`UncertaintyMonitor` attached with that interval would.
    Means over all frames, and medians over blocks of ``--md-interval`` frames.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.ltau import LTAULayer

    atoms = cell.copy()
    atoms.calc = MLFFCalculator(adapter)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(args.seed))
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(args.seed + 1))
    dyn.run(20)
    frames = []
    for _ in range(args.md_frames):
        dyn.run(1)
        frames.append(atoms.copy())
    n = args.md_interval
    calcs = {"bare": (MLFFCalculator(adapter), False)}
    for name, lt in indexes.items():
        calcs[f"{name}_every_step"] = (MLFFCalculator(adapter, layers=[LTAULayer(lt)]), False)
        calcs[f"{name}_on_demand_every_{n}"] = (MLFFCalculator(adapter, layers=[LTAULayer(lt, on_demand=True)]), True)
    times = {name: [] for name in calcs}
    for i, frame in enumerate([frames[0]] + frames):  # the first frame warms up
        for name, (calc, on_demand) in calcs.items():
            a = frame.copy()
            a.calc = calc
            t0 = time.perf_counter()
            a.get_forces()
            if on_demand and i % n == 0:
                calc.get_property("forces_uncertainty_max", a)
            if i:
                times[name].append(time.perf_counter() - t0)
    out = {"frames": len(frames), "interval": n, "timestep_fs": 2.0, "temperature_K": 300}
    bare = np.array(times["bare"])
    for name, t in times.items():
        t = np.array(t)
        blocks = [t[j : j + n].sum() / bare[j : j + n].sum() for j in range(0, len(t) - n + 1, n)]
        out[name] = {"mean_ms_per_step": 1e3 * t.mean(), "overhead_pct_of_means": 100 * (t.mean() / bare.mean() - 1), "overhead_pct_median_of_blocks": 100 * (statistics.median(blocks) - 1)}
    return out


if __name__ == "__main__":
    main()
