"""Does test-time radius refinement help a distilled Si student on shifted test sets?

    python benchmarks/rewiring_shifts.py            # ~10 min on 1 thread, the student is cached

Stages (everything expensive is cached under ``--cache``, default ``mlff_results/rewiring_shifts``):

1. students: CHGNet teacher Langevin MD at 300 and 600 K, rattles and ±2 % strains
   around a 64-atom diamond Si cell (:func:`mlff_calc.distill.sample`), labelled
   by CHGNet (energies, forces, stress; no Hessian rows); two students trained on
   the same labels without the Hessian term (λ_KD = 0; the question here is the
   graph, not KD): the default one (rc = 4.5 Å) and one with rc = 6.0 Å;
2. references: :class:`~mlff_calc.rewiring.SpectrumReference` of the training
   structures at each student's native cutoff;
3. test sets, labelled by CHGNet: held-out in-distribution structures (the test
   split of stage 1), isotropically compressed (-5 to -10 %) and expanded
   (+5 to +10 %) cells, (100) and (111) slabs, cells with 1 or 2 vacancies and
   1500 K snapshots of teacher MD; all rattled, all 62-64 atoms;
4. for each structure and each distance (padded L2, histogram): r* over the
   default 10 radii (0.5 rc ... rc), the student's forces at the native cutoff
   and at r* (edges smoothly switched off over ``--switch-width`` Å below r*, the
   default of ``MACEAdapter``; also with the sharp cut, ``mae_sharp``), and their
   MAE against the teacher;
5. NVE MD (default student, 64 atoms, +3 % expanded cell where r* < rc, velocity
   Verlet, 300 K velocities): plain, r* frozen at the grid value and at the
   centred value, each with the sharp cut at r* and with the smooth switch; same
   start and velocities; energy drift per atom per ps and how often a pair
   crosses the graph radius.

Writes ``--json`` (default ``benchmarks/results/rewiring_shifts.json``) and a PNG
beside it: the per-structure MAE change and the NVE total-energy traces.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from ase.build import bulk, diamond100, diamond111

DISTANCES = ("padded_l2", "histogram")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path("mlff_results/rewiring_shifts"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/rewiring_shifts.json"))
    p.add_argument("--n-per-set", type=int, default=12)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--nve-ps", type=float, default=2.0)
    p.add_argument("--nve-timestep-fs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--switch-width", type=float, default=None, help="switch width below r* in Å (default: MACEAdapter's)")
    return p.parse_args()


def si64(a: float = 5.43):
    return bulk("Si", "diamond", a, cubic=True) * (2, 2, 2)


# stage 1: the students ---------------------------------------------------------------------
#: name -> architecture overrides; both trained on the same CHGNet labels
STUDENTS = {"rc4.5": {}, "rc6.0": {"r_max": 6.0}}


def label_store(cache: Path, teacher, args):
    from mlff_calc import distill

    if not (cache / "labels" / "labels.json").is_file():
        samples = distill.sample(
            [si64()],
            teacher,
            temperatures_K=(300.0, 600.0),
            md_frames_per_T=40,
            md_interval=4,
            md_equilibration_steps=20,
            n_rattle=30,
            rattle_std_A=0.05,
            n_strain=30,
            strain=0.02,
            split=(0.7, 0.15, 0.15),
            seed=args.seed,
            progress=False,
        )
        samples.write(cache / "samples")
        return distill.label(samples, teacher, cache / "labels", chunk_size=16, n_rows=0, hessian_splits=(), seed=args.seed, progress=False)
    return distill.LabelStore(cache / "labels")


def student(cache: Path, name: str, store, args):
    import mlff_calc
    from mlff_calc import distill

    folder = cache / ("student" if name == "rc4.5" else f"student-{name}")
    if not (folder / "student.json").is_file():
        distill.train_student(store, architecture=STUDENTS[name], epochs=args.epochs, lambda_kd=0.0, rows_per_structure=0, seed=args.seed, out_dir=folder, progress=False)
    return mlff_calc.load(folder, device="cpu")


# stage 3: shifted test sets ----------------------------------------------------------------
def shifted_sets(n: int, teacher, rng) -> dict[str, list]:
    from mlff_calc.distill.sample import md_frames

    sets: dict[str, list] = {"compressed": [], "expanded": [], "slab": [], "vacancy": [], "hot_1500K": []}
    for k in range(n):
        for name, sign in (("compressed", -1.0), ("expanded", 1.0)):
            eps = sign * rng.uniform(0.05, 0.10)
            atoms = si64(5.43 * (1 + eps))
            atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
            atoms.info["shift"] = f"{100 * eps:+.1f} %"
            sets[name].append(atoms)
        slab = diamond100("Si", (2, 2, 16), vacuum=6.0) if k % 2 == 0 else diamond111("Si", (2, 2, 16), vacuum=6.0)
        slab.pbc = True
        slab.rattle(0.05, seed=int(rng.integers(1 << 30)))
        slab.info["shift"] = "(100)" if k % 2 == 0 else "(111)"
        sets["slab"].append(slab)
        vac = si64()
        drop = rng.choice(len(vac), size=1 + k % 2, replace=False)
        del vac[sorted(drop.tolist())]
        vac.rattle(0.05, seed=int(rng.integers(1 << 30)))
        vac.info["shift"] = f"{1 + k % 2} vacancies"
        sets["vacancy"].append(vac)
    hot = md_frames(si64(), teacher, temperature_K=1500.0, frames=n, interval=10, equilibration_steps=60, timestep_fs=2.0, friction_per_fs=0.02, rng=rng)
    for f in hot:
        f.info["shift"] = "1500 K"
    sets["hot_1500K"] = hot
    return sets


def teacher_forces(teacher, structures) -> list[np.ndarray]:
    return [r["forces"] for r in teacher.evaluate(structures, ("energy", "forces"))]


# stage 4: refinement ----------------------------------------------------------------------------
def mae(a, b) -> float:
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def evaluate_set(adapter, ref, structures, labels) -> list[dict]:
    from mlff_calc.rewiring import choose_radius

    rows = []
    for atoms, f_teacher in zip(structures, labels):
        plain = adapter.evaluate([atoms], ("energy", "forces"))[0]["forces"]
        row = {"n_atoms": len(atoms), "shift": atoms.info.get("shift", ""), "mae_plain": mae(plain, f_teacher)}
        for d in DISTANCES:
            choice = choose_radius(atoms, ref, distance=d)
            if choice.r_star == ref.cutoff:
                refined = sharp = plain
            else:
                refined = adapter.evaluate([atoms], ("energy", "forces"), cutoff=choice.r_star)[0]["forces"]
                with sharp_cut(adapter):
                    sharp = adapter.evaluate([atoms], ("energy", "forces"), cutoff=choice.r_star)[0]["forces"]
            row[d] = {
                "r_star": choice.r_star,
                "r_grid": choice.r_grid,
                "gap_A": list(choice.gap),
                "mae": mae(refined, f_teacher),
                "mae_sharp": mae(sharp, f_teacher),
                "min_distance": float(choice.distances.min()),
                "distance_at_native": float(choice.distances[-1]),
            }
        rows.append(row)
    return rows


class sharp_cut:
    """Within: the adapter cuts edges sharply at a reduced cutoff (switch width 0)."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __enter__(self):
        self.width, self.adapter.switch_width_A = self.adapter.switch_width_A, 0.0

    def __exit__(self, *exc):
        self.adapter.switch_width_A = self.width


def summarise(rows: list[dict], native: float, step: float) -> dict:
    plain = np.array([r["mae_plain"] for r in rows])
    out = {"n": len(rows), "mae_plain_mean": float(plain.mean()), "mae_plain_median": float(np.median(plain))}
    for d in DISTANCES:
        refined = np.array([r[d]["mae"] for r in rows])
        r_star = np.array([r[d]["r_grid"] for r in rows])
        change = refined - plain
        gaps = np.array([r[d]["gap_A"][1] - r[d]["gap_A"][0] for r in rows if r[d]["r_grid"] < native - 1e-9])
        rel = change / plain
        out[d] = {
            "mae_refined_mean": float(refined.mean()),
            "mae_refined_median": float(np.median(refined)),
            "mae_refined_sharp_mean": float(np.mean([r[d]["mae_sharp"] for r in rows])),
            "change_median": float(np.median(change)),
            "change_p90": float(np.percentile(change, 90)),
            "change_max": float(change.max()),
            "change_min": float(change.min()),
            "relative_change_median": float(np.median(rel)),
            "fraction_improved": float(np.mean(change < -1e-9)),
            "fraction_worsened": float(np.mean(change > 1e-9)),
            "fraction_native": float(np.mean(np.abs(r_star - native) < 1e-9)),
            "fraction_native_or_one_step": float(np.mean(r_star >= native - step - 1e-9)),
            "r_star_values": {f"{r:.3f}": int(c) for r, c in zip(*np.unique(r_star, return_counts=True))},
            # width of the same-graph interval around a refined r* (how far atoms may move before an edge crosses it)
            "refined_gap_width_median_A": float(np.median(gaps)) if gaps.size else None,
            "refined_fraction_gap_below_0.1_A": float(np.mean(gaps < 0.1)) if gaps.size else None,
        }
    return out


# stage 5: NVE -------------------------------------------------------------------------------------
def crossings(pairs_before, pairs_after) -> int:
    """Pairs that entered or left the graph between two snapshots (sets of (i, j, shift))."""
    return len(pairs_before ^ pairs_after)


def pair_set(atoms, r: float) -> set:
    from mlff_calc.neighbors import neighbor_list

    i, j, shifts = neighbor_list(atoms, r)
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist())))


NVE_RUNS = {  # name -> (centre r*, switch); None: plain model
    "plain": None,
    "frozen_grid_r_star": (False, False),
    "frozen_centred_r_star": (True, False),
    "frozen_grid_r_star_switched": (False, True),
    "frozen_centred_r_star_switched": (True, True),
}


TRACE_EVERY = 10


def drift_stderr(time_ps, e, blocks: int = 10) -> float:
    """Standard error of the drift: a line fitted to the means of ``blocks`` consecutive blocks (fluctuations are correlated within a block)."""
    n = len(e) // blocks
    if n < 2:
        return float("nan")
    t = np.asarray(time_ps[: n * blocks]).reshape(blocks, n).mean(axis=1)
    m = np.asarray(e[: n * blocks]).reshape(blocks, n).mean(axis=1)
    _, cov = np.polyfit(t, m, 1, cov=True)
    return float(np.sqrt(cov[0, 0]))


def nve(student_calc, ref, *, start, label: str, temperature_K: float, ps: float, dt_fs: float, seed: int, switch_width: float | None) -> dict:
    """Velocity Verlet from the same positions and velocities, plain and with the layer (r* frozen, sharp or switched)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    import mlff_calc
    from mlff_calc.errors import MLFFError
    from mlff_calc.layers.rewiring import RewiringLayer

    steps = int(round(ps * 1000 / dt_fs))
    out = {"structure": label, "initial_temperature_K": temperature_K, "steps": steps, "timestep_fs": dt_fs}
    for name, how in NVE_RUNS.items():
        layer = None if how is None else RewiringLayer(ref, centre=how[0])
        calc = mlff_calc.load(student_calc.adapter.source, device="cpu", layers=[layer] if layer else [])
        if switch_width is not None:
            calc.adapter.switch_width_A = switch_width
        if how is not None and not how[1]:
            calc.adapter.switch_width_A = 0.0  # the sharp cut at r*
        atoms = start.copy()
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, force_temp=True, rng=np.random.default_rng(seed))
        Stationary(atoms, preserve_temperature=True)
        r_graph = layer.refine(atoms).r_star if layer else ref.cutoff
        energies, temps, r_seen = [], [], set()
        state = {"pairs": pair_set(atoms, r_graph), "crossings": 0}

        def record():
            energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
            temps.append(atoms.get_temperature())
            r_seen.add(calc.results.get("r_star"))

        def count():
            now = pair_set(atoms, r_graph)
            state["crossings"] += crossings(state["pairs"], now)
            state["pairs"] = now

        dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
        dyn.attach(record, interval=1)
        dyn.attach(count, interval=5)
        t = time.perf_counter()
        failed = None
        try:
            dyn.run(steps)
        except MLFFError as exc:
            failed = f"step {dyn.nsteps}: {exc}"
        e = np.asarray(energies) / len(atoms)
        time_ps = np.arange(len(e)) * dt_fs / 1000.0
        out[name] = {
            "graph_radius_A": r_graph,
            "switch_width_A": None if how is None else calc.adapter.switch_width_A,
            "steps_done": int(dyn.nsteps),
            "failed": failed,
            "drift_eV_per_atom_per_ps": float(np.polyfit(time_ps, e - e[0], 1)[0]) if len(e) > 2 else float("nan"),
            "drift_stderr_eV_per_atom_per_ps": drift_stderr(time_ps, e),
            "max_abs_dE_tot_eV_per_atom": float(np.max(np.abs(e - e[0]))),
            "std_E_tot_eV_per_atom": float(np.std(e)),
            "mean_temperature_K": float(np.mean(temps)),
            "graph_edge_changes_per_ps": state["crossings"] / max(time_ps[-1], 1e-12) / 2,  # each undirected pair counted twice
            # E_tot - E_tot(0) every TRACE_EVERY steps (the figure's bottom row)
            "trace_dE_tot_eV_per_atom": (e - e[0])[::TRACE_EVERY].tolist(),
            "wall_s": time.perf_counter() - t,
        }
        if layer is not None:
            out[name]["r_star_values_seen"] = sorted(r_seen)
            out[name]["n_refinements"] = layer.n_refinements
        print(f"nve {label} {name}: { {k: v for k, v in out[name].items() if not k.startswith('trace')} }", flush=True)
    return out


def plot(path: Path, results: dict, md: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results) + len(md), 2, figsize=(11, 4.0 * (len(results) + len(md))), squeeze=False)
    for row, (label, runs) in zip(axes[len(results) :], md.items()):
        for ax, names in zip(row, (list(NVE_RUNS), [n for n, how in NVE_RUNS.items() if how is None or how[1]])):
            for name in names:
                run = runs[name]
                trace = np.asarray(run["trace_dE_tot_eV_per_atom"])
                t_ps = np.arange(len(trace)) * TRACE_EVERY * runs["timestep_fs"] / 1000.0
                ax.plot(t_ps, 1e3 * trace, lw=1.0, label=f"{name} (r = {run['graph_radius_A']:.3f} Å, drift {run['drift_eV_per_atom_per_ps']:.1e} eV/atom/ps)")
            ax.set_xlabel("time (ps)")
            ax.set_ylabel("E_tot - E_tot(0) (meV/atom)")
            ax.legend(fontsize=7)
        row[0].set_title(f"NVE {label}: all runs (sharp cut at r* drifts)")
        row[1].set_title("plain and r* frozen with the smooth switch")
    for row, (student_name, per_set) in zip(axes, results.items()):
        names = list(per_set)
        for ax, d in zip(row, DISTANCES):
            data = [[1e3 * (r[d]["mae"] - r["mae_plain"]) for r in per_set[n]] for n in names]
            ax.axhline(0.0, color="0.6", lw=0.8)
            ax.boxplot(data, whis=(0, 100), widths=0.5)
            for k, ys in enumerate(data):
                xs = k + 1 + np.random.default_rng(k).uniform(-0.12, 0.12, len(ys))
                ax.plot(xs, ys, "o", ms=3.5, alpha=0.7)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
            ax.set_title(f"student {student_name}, distance {d}")
        row[0].set_ylabel("force MAE change with r* (meV/Å)\n< 0: refinement helps")
    fig.suptitle("CHGNet-distilled Si students: per-structure change of force MAE vs the teacher (box: min-max); NVE energy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    args = parse()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    logging.basicConfig(level=logging.WARNING)
    from ase.io import read, write

    import mlff_calc
    from mlff_calc.rewiring import SpectrumReference, candidate_radii

    t_all = time.perf_counter()
    timings = {}
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    teacher = mlff_calc.load("chgnet", device="cpu")

    t = time.perf_counter()
    store = label_store(cache, teacher, args)
    train = [r.atoms for r in store.records("train")]
    held_out = store.records("test")
    timings["labels"] = time.perf_counter() - t

    t = time.perf_counter()
    sets_file = cache / f"shifted-{args.n_per_set}-seed{args.seed}.extxyz"
    if sets_file.is_file():
        frames = read(sets_file, index=":")
        sets: dict[str, list] = {}
        for f in frames:
            sets.setdefault(f.info["set"], []).append(f)
        labels = {n: [f.arrays["teacher_forces"] for f in fs] for n, fs in sets.items()}
    else:
        sets = shifted_sets(args.n_per_set, teacher, np.random.default_rng(args.seed + 1))
        labels = {n: teacher_forces(teacher, fs) for n, fs in sets.items()}
        frames = []
        for n, fs in sets.items():
            for f, lab in zip(fs, labels[n]):
                g = f.copy()
                g.calc = None
                g.info["set"] = n
                g.arrays["teacher_forces"] = lab
                frames.append(g)
        write(sets_file, frames, format="extxyz")
    timings["test_sets"] = time.perf_counter() - t
    test_sets = {"in_distribution": ([r.atoms for r in held_out], [r.forces for r in held_out]), **{k: (v, labels[k]) for k, v in sets.items()}}

    students, per_student, calcs = {}, {}, {}
    for name in STUDENTS:
        t = time.perf_counter()
        calc = calcs[name] = student(cache, name, store, args)
        adapter = calc.adapter
        if args.switch_width is not None:
            adapter.switch_width_A = args.switch_width
        timings[f"student_{name}"] = time.perf_counter() - t
        ref = SpectrumReference.build(train, adapter=adapter, source=f"{len(train)} training structures of {adapter.source}")
        ref.save(cache / f"reference-{name}.json")
        grid = candidate_radii(ref.cutoff)
        step = float(grid[-1] - grid[-2])
        print(f"student {name} {adapter.model_id}: rc {adapter.cutoff} Å, {len(train)} training structures, {len(held_out)} held out", flush=True)
        t = time.perf_counter()
        per_set = per_student[name] = {}
        for n, (fs, labs) in test_sets.items():
            per_set[n] = evaluate_set(adapter, ref, fs, labs)
            print(name, n, json.dumps(summarise(per_set[n], ref.cutoff, step)), flush=True)
        timings[f"refinement_{name}"] = time.perf_counter() - t
        students[name] = {
            "model_id": adapter.model_id,
            "cutoff_A": adapter.cutoff,
            "source": adapter.source,
            "architecture": STUDENTS[name],
            "switch_width_A": adapter.switch_width_A,
            "test_metrics": adapter.manifest.get("metrics", {}).get("test"),
            "reference": {"n_structures": ref.n_structures, "padded_size": ref.padded_size, "radii_A": grid.tolist(), "grid_step_A": step},
            "summary": {n: summarise(rows, ref.cutoff, step) for n, rows in per_set.items()},
        }
        if name == "rc4.5":
            ref_md = ref

    t = time.perf_counter()
    # NVE with the default student from a +3 % expanded, lightly rattled cell, where padded L2 picks r* < rc;
    # the student (trained on ±2 % strains) blows up from the more strongly strained test cells
    start = si64(5.43 * 1.03)
    start.rattle(0.02, seed=1)
    key = "expanded_3pct_T0_300K"
    md = {key: nve(calcs["rc4.5"], ref_md, start=start, label=key, temperature_K=300.0, ps=args.nve_ps, dt_fs=args.nve_timestep_fs, seed=args.seed, switch_width=args.switch_width)}
    timings["nve"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    png = args.json.with_suffix(".png")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    plot(png, per_student, md)
    report = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "note": "shared 2-core CPU, 1 torch/BLAS thread"},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n_train": len(train),
        "n_held_out": len(held_out),
        "students": students,
        "nve": md,
        "timings_s": timings,
        "figure": str(png),
        "per_structure": per_student,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    brief = {k: {n: ({m: v for m, v in r.items() if not m.startswith("trace")} if isinstance(r, dict) else r) for n, r in runs.items()} for k, runs in md.items()}
    print(json.dumps({"students": students, "nve": brief, "timings_s": timings}, indent=1, default=float))


if __name__ == "__main__":
    main()
