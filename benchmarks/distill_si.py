"""Hessian distillation end to end: CHGNet -> a small student for 64-atom diamond Si.

Stages, each timed:

1. sample: teacher (CHGNet) Langevin MD at 300/600/900 K, rattles and ±strains
   around a 64-atom Si cell (~200 configurations), deduplicated and split;
2. label: teacher energies, forces, stress and sampled Hessian rows (label store);
3. train: two students at equal data, epochs and seed, with the Hessian term
   (λ_KD = 400) and without it (λ_KD = 0); held-out (test split) force MAE
   against the teacher for both;
4. speed: student vs teacher, one energy+forces+stress call on 64 and 216 atoms,
   interleaved, medians and their ratio;
5. NVE MD with the distilled student at 300 K on 64 atoms: energy drift per atom per ps.

Writes ``distill_si.json`` and ``distill_si.md`` into ``--out``. On a shared
2-core CPU it uses one torch thread (``--threads``), which was the fastest there.

    python benchmarks/distill_si.py --out bench_distill
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
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_distill"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md-frames", type=int, default=40, help="teacher MD frames per temperature")
    p.add_argument("--md-interval", type=int, default=4)
    p.add_argument("--n-rattle", type=int, default=40)
    p.add_argument("--n-strain", type=int, default=40)
    p.add_argument("--n-rows", type=int, default=6, help="teacher Hessian rows stored per training structure")
    p.add_argument("--rows-per-structure", type=int, default=4, help="Hessian rows per structure and training step")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--num-interactions", type=int, default=None, help="student interactions (default: the library default)")
    p.add_argument("--speed-repeats", type=int, default=7)
    p.add_argument("--md-ps", type=float, default=10.0, help="NVE MD length (ps)")
    p.add_argument("--md-timestep-fs", type=float, default=2.0)
    p.add_argument("--reuse", action="store_true", help="reuse samples and labels already in --out (for iterating on training)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def si_cell(n_rep: int, a: float = 5.43) -> Atoms:
    return bulk("Si", "diamond", a, cubic=True) * (n_rep, n_rep, n_rep)


def one_call(calc, atoms) -> float:
    t = time.perf_counter()
    calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    return time.perf_counter() - t


def speed(student, teacher, repeats: int) -> dict:
    rows = {}
    for n_rep in (2, 3):
        atoms = si_cell(n_rep)
        atoms.rattle(0.05, seed=n_rep)
        t_s, t_t = [], []
        for k in range(repeats + 1):  # interleaved; the first round warms up
            a, b = one_call(student, atoms), one_call(teacher, atoms)
            if k:
                t_s.append(a)
                t_t.append(b)
        ms, mt = statistics.median(t_s), statistics.median(t_t)
        rows[str(len(atoms))] = {"student_ms": 1e3 * ms, "teacher_ms": 1e3 * mt, "speedup": mt / ms}
    return rows


def main() -> None:
    args = parse()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlff_calc").setLevel(logging.INFO)
    import mlff_calc
    from mlff_calc import distill
    from mlff_calc.workflows.md import MolecularDynamics

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    report: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    t_all = time.perf_counter()

    t = time.perf_counter()
    teacher = mlff_calc.load("chgnet", device="cpu")
    timings["load_teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    samples_dir = out / "samples"
    if args.reuse and (samples_dir / "samples.json").exists():
        samples = distill.SampleSet.read(samples_dir)
    else:
        samples = distill.sample(
            [si_cell(2)],
            teacher,
            temperatures_K=(300, 600, 900),
            md_frames_per_T=args.md_frames,
            md_interval=args.md_interval,
            md_equilibration_steps=20,
            timestep_fs=2.0,
            n_rattle=args.n_rattle,
            rattle_std_A=0.05,
            n_strain=args.n_strain,
            strain=0.02,
            split=(0.7, 0.15, 0.15),
            seed=args.seed,
        )
        samples.write(samples_dir)
    timings["sample"] = time.perf_counter() - t
    report["samples"] = {"n": len(samples), "counts": samples.counts(), "origins": {o: int(np.sum(samples.origin == o)) for o in sorted(set(samples.origin.tolist()))}}
    print(f"sample: {len(samples)} configurations {samples.counts()} in {timings['sample']:.0f} s", flush=True)

    t = time.perf_counter()
    store = distill.label(samples, teacher, out / "labels", chunk_size=16, n_rows=args.n_rows, seed=args.seed)
    timings["label"] = time.perf_counter() - t
    print(f"label: {store.manifest['n_structures']} structures in {timings['label']:.0f} s", flush=True)

    arch = {} if args.num_interactions is None else {"num_interactions": args.num_interactions}
    students = {}
    for name, lam in (("hessian", 400.0), ("baseline", 0.0)):
        t = time.perf_counter()
        res = distill.train_student(
            store,
            architecture=arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lambda_kd=lam,
            rows_per_structure=args.rows_per_structure,
            seed=args.seed,
            out_dir=out / f"student-{name}",
        )
        timings[f"train_{name}"] = time.perf_counter() - t
        students[name] = res
        print(f"train {name}: {timings[f'train_{name}']:.0f} s, test {res.metrics['test']}", flush=True)
    report["students"] = {
        name: {
            "lambda_kd": res.config["lambda_kd"],
            "test": res.metrics["test"],
            "valid": res.metrics["valid"],
            "best_epoch": res.metrics["best_epoch"],
            "epochs_run": res.metrics["epochs_run"],
            "n_parameters": int(sum(p.numel() for p in res.adapter.module.parameters())),
            "architecture": res.config["architecture"],
            "history": [
                {k: v for k, v in row.items() if k in ("epoch", "train_loss", "train_force_l2mae", "train_hessian_l2mae", "val_force_mae", "val_energy_mae_per_atom", "epoch_time_s")}
                for row in res.history
            ],
        }
        for name, res in students.items()
    }
    mae_h, mae_b = (students[n].metrics["test"]["force_mae"] for n in ("hessian", "baseline"))
    rel = (mae_h - mae_b) / mae_b
    winner = "tie (|difference| < 2 %, one seed)" if abs(rel) < 0.02 else ("with Hessian" if rel < 0 else "without Hessian")
    report["central_claim"] = {"test_force_mae_with_hessian_eV_per_A": mae_h, "test_force_mae_without_hessian_eV_per_A": mae_b, "relative_change": rel, "winner": winner}

    t = time.perf_counter()
    student_calc = mlff_calc.load(out / "student-hessian", device="cpu")
    report["speed"] = speed(student_calc, teacher, args.speed_repeats)
    timings["speed"] = time.perf_counter() - t
    print(f"speed: {report['speed']}", flush=True)

    t = time.perf_counter()
    steps = int(round(args.md_ps * 1000 / args.md_timestep_fs))
    atoms = si_cell(2)
    md = MolecularDynamics(
        atoms,
        student_calc,
        ensemble="nve",
        temperature_K=300.0,
        initial_temperature_K=600.0,
        timestep_fs=args.md_timestep_fs,
        steps=steps,
        log_interval=max(steps // 200, 1),
        trajectory=False,
        seed=args.seed,
        prefix=out / "nve" / "si64",
        progress=False,
    )
    md_res = md.run()
    timings["nve_md"] = time.perf_counter() - t
    e_tot = md_res.log["E_tot_eV"]
    report["nve_md"] = {
        "steps": steps,
        "timestep_fs": args.md_timestep_fs,
        "length_ps": args.md_ps,
        "initial_temperature_K": 600.0,
        "mean_temperature_K": md_res.mean_temperature_K,
        "drift_eV_per_atom_per_ps": md_res.drift_eV_per_atom_per_ps,
        "max_abs_dE_tot_eV_per_atom": float(np.max(np.abs(e_tot - e_tot[0])) / len(atoms)),
        "std_E_tot_eV_per_atom": float(np.std(e_tot) / len(atoms)),
        "dtype": str(student_calc.adapter.dtype).removeprefix("torch."),
        "wall_s": timings["nve_md"],
    }
    print(f"nve: {report['nve_md']}", flush=True)

    timings["total"] = time.perf_counter() - t_all
    report["timings_s"] = timings
    with open(out / "distill_si.json", "w") as fh:
        json.dump(report, fh, indent=2, default=float)
    (out / "distill_si.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    t = r["timings_s"]
    lines = ["# Hessian distillation: CHGNet -> student, 64-atom diamond Si", ""]
    lines.append(f"CPU: {r['cpus']} cores (shared), torch threads {r['torch_threads']}. Samples: {r['samples']['n']} {r['samples']['counts']}, origins {r['samples']['origins']}.")
    lines += ["", "## Wall time per stage (s)", "", "| stage | s |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    lines += [
        "",
        "## Held-out (test split) errors against the teacher",
        "",
        "| student | λ_KD | params | best epoch / run | force MAE (eV/Å) | force RMSE (eV/Å) | energy MAE (meV/atom) | stress MAE (meV/Å³) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in r["students"].items():
        te = s["test"]
        lines.append(
            f"| {name} | {s['lambda_kd']:g} | {s['n_parameters']} | {s['best_epoch']} / {s['epochs_run']} | {te['force_mae']:.4f} | {te['force_rmse']:.4f} | {1e3 * te['energy_mae_per_atom']:.2f} | {1e3 * te.get('stress_mae', float('nan')):.3f} |"
        )
    c = r["central_claim"]
    lines += ["", f"With the Hessian term the test force MAE is {100 * c['relative_change']:+.1f} % relative to the baseline (same data, epochs and seed). Outcome: **{c['winner']}**."]
    lines += ["", "## Speed: one energy+forces+stress call (median ms, interleaved)", "", "| atoms | student | teacher (CHGNet) | speed-up |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {n} | {v['student_ms']:.1f} | {v['teacher_ms']:.1f} | {v['speedup']:.1f}x |" for n, v in r["speed"].items()]
    m = r["nve_md"]
    lines += [
        "",
        "## NVE MD with the distilled student (64 atoms)",
        "",
        f"{m['length_ps']} ps, {m['steps']} steps of {m['timestep_fs']} fs, {m['dtype']}, velocities drawn at {m['initial_temperature_K']:.0f} K (equipartition -> ~300 K), mean T {m['mean_temperature_K']:.0f} K: drift {m['drift_eV_per_atom_per_ps']:.2e} eV/atom/ps, max |ΔE_tot| {m['max_abs_dE_tot_eV_per_atom']:.2e} eV/atom, wall {m['wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
