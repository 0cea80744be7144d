"""Test-time training on a real distribution shift: Cu student, EMT prior, CHGNet teacher.

1. sample + label: CHGNet MD at 300/600 K, rattles and ±2 % strains of a 32-atom
   fcc Cu cell (the training distribution), labelled by CHGNet (no Hessian rows);
2. train: a two-head student (prior phase on EMT labels, reference phase on
   CHGNet labels) and, for comparison, the plain one-head distillation student;
3. shifted test sets, labelled by CHGNet: 1400 K MD snapshots, ±8 % strained
   cells, (111) and (100) slabs, vacancies;
4. per set: the reference force MAE against CHGNet before and after test-time
   training on that set's structures (once per set, then reset), the prior
   loss before/after and the adaptation wall time, for the paper's settings
   (SGD lr 1e-5, 500 steps, batch 32) and a larger learning rate (1e-4, 100 steps);
5. NVE MD (velocity Verlet, 1 fs) with the adapted model: drift per atom per ps.

Writes ``ttt_shift.json`` into ``--out`` (raw results) and caches the labels and
students there.

    python benchmarks/ttt_shift.py --out mlff_results/bench_ttt
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from ase.build import bulk, fcc100, fcc111


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("mlff_results/bench_ttt"))
    p.add_argument("--epochs", type=int, default=20, help="epochs of each training phase")
    p.add_argument("--per-set", type=int, default=8, help="structures per shifted set (12 are generated and cached)")
    p.add_argument("--md-ps", type=float, default=2.0)
    p.add_argument("--settings", default="paper,lr1e-4", help="comma list of adaptation settings to run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot-only", action="store_true", help="redraw ttt_shift.png from the JSON in --out")
    return p.parse_args()


SETTINGS = {
    "paper": {"lr": 1e-5, "steps": 500, "batch_size": 32},
    "lr1e-4": {"lr": 1e-4, "steps": 100, "batch_size": 32},
    "lr3e-4": {"lr": 3e-4, "steps": 100, "batch_size": 32},
}


def cu32():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))


def shifted_sets(teacher, n: int, rng) -> dict[str, list]:
    from mlff_calc.distill.sample import md_frames

    sets = {}
    hot = md_frames(cu32(), teacher, temperature_K=1400.0, frames=n, interval=10, equilibration_steps=100, timestep_fs=2.0, friction_per_fs=0.02, rng=rng)
    sets["1400 K MD"] = hot
    strained = []
    for k in range(n):
        a = cu32()
        eps = (0.08 if k % 2 == 0 else -0.08) * (0.75 + 0.25 * rng.random())
        a.set_cell(a.cell.array * (1 + eps), scale_atoms=True)
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        strained.append(a)
    sets["±8 % strain"] = strained
    slabs = []
    for k in range(n):
        s = (fcc111 if k % 2 == 0 else fcc100)("Cu", size=(2, 2, 4), a=3.61, vacuum=6.0, periodic=True)
        s.rattle(0.05, seed=int(rng.integers(1 << 30)))
        slabs.append(s)
    sets["surfaces"] = slabs
    vac = []
    for k in range(n):
        a = cu32()
        del a[int(rng.integers(len(a)))]
        if k % 2:
            del a[int(rng.integers(len(a)))]
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        vac.append(a)
    sets["vacancies"] = vac
    return sets


def force_errors(calc, structures, labels) -> np.ndarray:
    """Per-structure force MAE (eV/Å) of ``calc`` against ``labels``."""
    out = calc.evaluate(structures, ("energy", "forces"))
    return np.array([np.abs(r["forces"] - f).mean() for r, f in zip(out, labels)])


def nve_drift(calc, atoms, ps: float, seed: int) -> dict:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=600, rng=np.random.default_rng(seed))
    Stationary(a)
    steps = int(round(ps * 1000))
    dyn = VelocityVerlet(a, timestep=1.0 * units.fs)
    energies, times = [], []

    def record():
        energies.append(a.get_total_energy())
        times.append(dyn.nsteps * 1e-3)

    dyn.attach(record, interval=10)
    t0 = time.perf_counter()
    dyn.run(steps)
    e = np.array(energies) / len(a)
    slope = float(np.polyfit(times, e, 1)[0])
    return {"ps": ps, "timestep_fs": 1.0, "n_atoms": len(a), "drift_eV_per_atom_per_ps": slope, "max_deviation_eV_per_atom": float(np.max(np.abs(e - e[0]))), "wall_s": time.perf_counter() - t0}


def plot(results: dict, path: Path) -> Path:
    """Per-structure force MAE of each model on each shifted set (one panel per set)."""
    from mlff_calc.plots import new_figure, save_png

    keys = [("plain", "plain student"), ("two_head", "two-head, no TTT"), *[(f"ttt_{k}", f"TTT {k}") for k in results["settings"]]]
    fig = new_figure(width=10, height=3.2)
    axes = fig.subplots(1, len(results["sets"]))
    for ax, (name, row) in zip(axes, results["sets"].items()):
        data = [1000 * np.asarray(row[k]) for k, _ in keys]
        ax.boxplot(data, showmeans=True)
        for x, d in enumerate(data, start=1):
            ax.plot(np.full(len(d), x) + np.linspace(-0.15, 0.15, len(d)), d, ".", color="0.3", ms=3)
        ax.set_xticks(range(1, len(keys) + 1), [label for _, label in keys], rotation=35, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("force MAE vs CHGNet (meV/Å)")
    return save_png(fig, path)


def main():
    args = parse()
    if args.plot_only:
        results = json.loads((args.out / "ttt_shift.json").read_text())
        print(plot(results, args.out / "ttt_shift.png"))
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import mlff_calc
    from mlff_calc import distill, ttt
    from mlff_calc.layers.ttt import TTTLayer

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    teacher = mlff_calc.load("chgnet", device="cpu")
    timings = {}

    t0 = time.perf_counter()
    store_dir = out / "labels"
    if not (store_dir / "labels.json").exists():
        samples = distill.sample(
            [cu32()],
            teacher,
            temperatures_K=(300.0, 600.0),
            md_frames_per_T=30,
            md_interval=4,
            md_equilibration_steps=20,
            n_rattle=20,
            rattle_std_A=0.04,
            n_strain=20,
            strain=0.02,
            split=(0.8, 0.1, 0.1),
            seed=args.seed,
            progress=False,
        )
        distill.label(samples, teacher, store_dir, n_rows=0, full_hessian_max_dof=0, seed=args.seed, progress=False)
    store = distill.LabelStore(store_dir)
    timings["sample_label_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    student_dir = out / "ttt-student"
    if not (student_dir / "prior_head.json").exists():
        ttt.train_ttt_student(store, "emt", prior_epochs=args.epochs, reference_epochs=args.epochs, seed=args.seed, out_dir=student_dir, progress=False)
    timings["train_two_head_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain_dir = out / "plain-student"
    if not (plain_dir / "student.json").exists():
        distill.train_student(store, epochs=2 * args.epochs, lambda_kd=0.0, seed=args.seed, out_dir=plain_dir, progress=False)
    timings["train_plain_s"] = time.perf_counter() - t0
    timings["two_head_recorded_s"] = json.loads((student_dir / "ttt-history.json").read_text())["metrics"].get("wall_time_s")
    timings["plain_recorded_s"] = json.loads((plain_dir / "train-history.json").read_text())["metrics"].get("train_time_s")

    sets_file = out / "shifted.extxyz"
    import ase.io

    if not sets_file.exists():
        sets = shifted_sets(teacher, 12, rng)
        frames = []
        for name, structures in sets.items():
            for a, r in zip(structures, teacher.evaluate(structures, ("energy", "forces"))):
                a = a.copy()
                a.info["set"] = name
                a.arrays["ref_forces"] = r["forces"]
                frames.append(a)
        ase.io.write(sets_file, frames)
    frames = ase.io.read(sets_file, ":")
    names = list(dict.fromkeys(a.info["set"] for a in frames))
    sets = {n: [a for a in frames if a.info["set"] == n][: args.per_set] for n in names}

    plain = mlff_calc.load(plain_dir, device="cpu")
    in_dist = [r.atoms for r in store.records("test")]
    in_labels = [r.forces for r in store.records("test")]
    results = {"timings": timings, "sets": {}, "settings": {k: SETTINGS[k] for k in args.settings.split(",")}}
    layers = {}
    for setting in args.settings.split(","):
        calc = mlff_calc.load(student_dir, device="cpu", layers=[TTTLayer(progress=False, **SETTINGS[setting])])
        layers[setting] = calc
    base = next(iter(layers.values()))
    results["in_distribution"] = {"two_head": float(force_errors(base, in_dist, in_labels).mean()), "plain": float(force_errors(plain, in_dist, in_labels).mean())}
    for name, structures in sets.items():
        labels = [a.arrays["ref_forces"] for a in structures]
        clean = [a.copy() for a in structures]
        for a in clean:
            del a.arrays["ref_forces"]
        row = {"n": len(clean), "plain": force_errors(plain, clean, labels).tolist(), "two_head": force_errors(base, clean, labels).tolist()}
        for setting, calc in layers.items():
            hist = calc.adapt(clean)["ttt"]
            row[f"ttt_{setting}"] = force_errors(calc, clean, labels).tolist()
            row[f"ttt_{setting}_history"] = {k: v for k, v in hist.items() if k != "step_losses"} | {"step_losses": hist["step_losses"][:: max(1, len(hist["step_losses"]) // 50)]}
            if name == "1400 K MD":
                results.setdefault("nve", {})[setting] = nve_drift(calc, cu32(), args.md_ps, args.seed)
            calc.reset_layers()
        results["sets"][name] = row
        print(name, {k: round(float(np.mean(v)) * 1000, 2) for k, v in row.items() if isinstance(v, list)}, flush=True)
    results["nve"]["not_adapted"] = nve_drift(base, cu32(), args.md_ps, args.seed)
    from mlff_calc.artifacts import write_json

    write_json(out / "ttt_shift.json", results)
    plot(results, out / "ttt_shift.png")
    print(json.dumps({k: v for k, v in results.items() if k != "sets"}, indent=1, default=str))


if __name__ == "__main__":
    main()
