"""Distilled students against real DFT: Si and NaCl students from CHGNet, next to CHGNet and VASP.

For each system (64-atom cells at the VASP lattice constant of ``../shared/data/phonopy``):

1. sample: CHGNet Langevin MD at 300/600/900 K, rattles and ±2 % strains (~200 configurations);
2. label: CHGNet energies, forces, stress and 2 Hessian rows per training structure;
3. train: a student (default architecture unless ``--architecture``) with the Hessian term
   (λ_KD = 400, 10 epochs);
4. phonons: the highest branch at Γ / X / L (THz) of the student, of CHGNet and of VASP, on the
   displaced supercells of the VASP phonopy set (NaCl with its BORN file);
5. NaCl only: force MAE against the VASP forces of the 10 NaCl-rd supercells (all 10, and the
   9 that ``benchmarks/softening_nacl_rd.py`` tests on: disp-002..010), student and CHGNet.

Stages are cached under ``--out`` (samples, labels, student): a rerun only evaluates.
Wall time per stage goes into ``student_dft.json`` (``--json``).

    python benchmarks/student_dft.py --out mlff_results/student_dft --json benchmarks/results/student_dft.json
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
import torch

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PHONOPY = SHARED / "data" / "phonopy"


def cell64(system: str):
    """The 64-atom cubic training cell at the VASP lattice constant."""
    from ase.build import bulk
    from ase.io import read

    unit = read(PHONOPY / system / "POSCAR-unitcell", format="vasp")
    if system == "Si":  # primitive fcc cell: a = (4 V)^(1/3)
        a = (4.0 * unit.get_volume()) ** (1 / 3)
        return bulk("Si", "diamond", a, cubic=True) * (2, 2, 2)
    return unit * (2, 2, 2)  # NaCl: the 8-atom conventional cell


def train_stages(system: str, teacher, out: Path, args) -> tuple[Path, dict]:
    """Sample, label, train (each skipped when its output exists).

    Wall and CPU seconds of each stage that ran are kept in ``<out>/<system>/stages.json``,
    so a rerun reports the run that did the work (on a shared CPU wall time > CPU time).
    """
    from mlff_calc import distill

    folder = out / system
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "stages.json"
    times = json.loads(record.read_text()) if record.exists() else {}

    def timed(name, done: bool, fn):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        if not done:
            times[name] = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
            record.write_text(json.dumps(times, indent=2))
        return result

    def do_sample():
        if (folder / "samples" / "samples.json").exists():
            return distill.SampleSet.read(folder / "samples")
        samples = distill.sample(
            [cell64(system)],
            teacher,
            temperatures_K=(300, 600, 900),
            md_frames_per_T=args.md_frames,
            md_interval=4,
            md_equilibration_steps=20,
            timestep_fs=2.0,
            n_rattle=args.n_rattle,
            rattle_std_A=0.05,
            n_strain=args.n_strain,
            strain=0.02,
            split=(0.7, 0.15, 0.15),
            seed=0,
            progress=False,
        )
        samples.write(folder / "samples")
        return samples

    samples = timed("sample", (folder / "samples" / "samples.json").exists(), do_sample)
    labelled = (folder / "labels" / "labels.json").exists() and "label" in times
    store = timed("label", labelled, lambda: distill.label(samples, teacher, folder / "labels", chunk_size=16, n_rows=args.n_rows, seed=0, progress=False))
    student_dir = folder / args.student_name
    if not args.label_only:
        trained = (student_dir / "student.json").exists()
        timed(
            f"train:{args.student_name}",
            trained,
            lambda: (
                trained
                or distill.train_student(
                    store, architecture=args.architecture, epochs=args.epochs, batch_size=4, lr=5e-3, lambda_kd=400.0, rows_per_structure=args.n_rows, seed=0, out_dir=student_dir, progress=False
                )
            ),
        )
    times["n_samples"] = len(samples)
    return student_dir, times


def highest_branches(system: str, calc) -> tuple[dict, dict]:
    """(model, VASP) highest phonon frequency at Γ / X / L, THz."""
    from mlff_calc.workflows.phonons import FCC_POINTS, Phonons

    wf = Phonons.from_reference(PHONOPY / system, calc, progress=False, mesh=(4, 4, 4), band_npoints=11)
    wf.run()
    model = wf.highest_branch_at(FCC_POINTS)
    wf.reference.run_qpoints(np.array(list(FCC_POINTS.values())))
    vasp = dict(zip(FCC_POINTS, wf.reference.qpoints.frequencies.max(axis=1).tolist()))
    return model, vasp


def nacl_rd_forces(calc) -> tuple[np.ndarray, np.ndarray]:
    """(model, VASP) forces on the 10 NaCl-rd supercells, [10, 64, 3] eV/Å."""
    from mlff_calc.softening import read_phonopy_dataset

    data = read_phonopy_dataset(PHONOPY / "NaCl-rd" / "phonopy_disp.yaml", PHONOPY / "NaCl-rd" / "FORCE_SETS")
    pred = np.array([calc.evaluate([s.atoms], ("energy", "forces"))[0]["forces"] for s in data])
    return pred, np.array([s.forces for s in data])


def nacl_rd_mae(student, teacher) -> dict:
    """Force MAE (meV/Å) against VASP on NaCl-rd, and least-squares slopes (model on reference).

    A slope below 1 means softer forces than the reference (CHGNet vs DFT: ~0.71).
    """
    fs, dft = nacl_rd_forces(student)
    ft, _ = nacl_rd_forces(teacher)

    def mae(a, b):
        e = np.abs(a - b)
        return {"all_10_meV_per_A": 1e3 * float(e.mean()), "disp_002_010_meV_per_A": 1e3 * float(e[1:].mean())}

    def slope(a, b):
        return float(np.sum(a * b) / np.sum(b * b))

    return {
        "student": {**mae(fs, dft), "slope_vs_dft": slope(fs, dft)},
        "chgnet": {**mae(ft, dft), "slope_vs_dft": slope(ft, dft)},
        "student_vs_chgnet": {**mae(fs, ft), "slope": slope(fs, ft)},
        "n_components_all": int(dft.size),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("mlff_results/student_dft"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--systems", nargs="+", default=["Si", "NaCl"])
    p.add_argument("--md-frames", type=int, default=40)
    p.add_argument("--n-rattle", type=int, default=40)
    p.add_argument("--n-strain", type=int, default=40)
    p.add_argument("--n-rows", type=int, default=2, help="teacher Hessian rows stored per training structure (all used each step)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--architecture", type=json.loads, default=None, help="JSON student architecture overrides (default: the library default)")
    p.add_argument("--student-name", default="student", help="student folder name under <out>/<system>/")
    p.add_argument("--label-only", action="store_true", help="stop after labelling (no training, no evaluation)")
    p.add_argument("--train-only", action="store_true", help="stop after training (no evaluation)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import mlff_calc

    teacher = mlff_calc.load("chgnet", device="cpu")
    report = {"command": "python benchmarks/student_dft.py " + " ".join(os.sys.argv[1:]), "torch_threads": 1, "systems": {}}
    if args.json and args.json.exists():
        report["systems"] = json.loads(args.json.read_text()).get("systems", {})
    for system in args.systems:
        student_dir, times = train_stages(system, teacher, args.out, args)
        print(system, "stages", times, flush=True)
        if args.train_only or args.label_only:
            continue
        student = mlff_calc.load(student_dir, device="cpu")
        row = {"stages": times, "student": str(student_dir), "n_parameters": int(sum(p.numel() for p in student.adapter.module.parameters())), "architecture": student.adapter.architecture}
        row["test_vs_teacher"] = json.loads((student_dir / "student.json").read_text())["metrics"].get("test")
        t = time.perf_counter()
        row["student_THz"], row["vasp_THz"] = highest_branches(system, student)
        row["chgnet_THz"], _ = highest_branches(system, teacher)
        row["phonons_s"] = time.perf_counter() - t
        if system == "NaCl":
            row["nacl_rd_force_mae"] = nacl_rd_mae(student, teacher)
        report["systems"].setdefault(system, {})[args.student_name] = row
        print(json.dumps(row, indent=1, default=float), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
