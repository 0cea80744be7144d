"""``mlff-calc distill sample|label|train``: Hessian distillation of a teacher into a small student.

mlff-calc distill sample si64.extxyz --model chgnet --out-dir run/samples
mlff-calc distill label run/samples --model chgnet --out-dir run/labels
mlff-calc distill train run/labels --epochs 30 --out-dir run/student
mlff-calc singlepoint frames.extxyz --model run/student
"""

from __future__ import annotations

import time
from pathlib import Path

from .types import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    UNIT_INTERVAL,
    Checked,
    ase_index,
    device,
    fractions_sum_to_one,
)

HELP = "distil a teacher into a small, fast student: sample configurations, label them, train"


def add_arguments(p) -> None:
    from .options import add_steps

    add_steps(p, STEPS)


def _add_sample(p) -> None:
    from .options import add_model_options, add_output_options

    p.add_argument("structures", type=Path, help="structures to sample around (any ASE-readable file; every frame is used)")
    p.add_argument("--index", type=ase_index, default=":", help="frames to read (ASE slice syntax); default: all")
    p.add_argument("--temperatures-K", type=NON_NEGATIVE, nargs="*", default=[300.0, 600.0, 900.0], help="teacher MD temperatures (K)")
    p.add_argument("--md-frames", type=POSITIVE_INT, default=20, help="MD frames kept per temperature and structure")
    p.add_argument("--md-interval", type=POSITIVE_INT, default=5, help="MD steps between kept frames")
    p.add_argument("--md-equilibration-steps", type=COUNT, default=20, help="MD steps before the first kept frame")
    p.add_argument("--timestep-fs", type=POSITIVE, default=2.0, help="MD timestep (fs)")
    p.add_argument("--n-rattle", type=COUNT, default=20, help="rattled copies per structure")
    p.add_argument("--rattle-std-A", type=NON_NEGATIVE, default=0.05, help="rattle standard deviation (Å)")
    p.add_argument("--n-strain", type=COUNT, default=20, help="strained copies per structure (half +, half -)")
    p.add_argument("--strain", type=NON_NEGATIVE, default=0.02, help="strain magnitude (Frobenius norm, dimensionless)")
    p.add_argument("--split", type=NON_NEGATIVE, action=Checked, check=fractions_sum_to_one, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VALID", "TEST"), help="split fractions")
    p.add_argument("--seed", type=COUNT, default=0)
    add_model_options(p)
    add_output_options(p, "distill/samples")


def _add_label(p) -> None:
    from .options import add_model_options, add_output_options
    from .screen import add_executor_options

    p.add_argument("samples", type=Path, help="sample folder written by `mlff-calc distill sample`")
    p.add_argument("--chunk-size", type=POSITIVE_INT, default=16, help="structures per label chunk (the unit of resuming)")
    p.add_argument("--n-rows", type=POSITIVE_INT, default=8, help="Hessian rows per structure when 3N > --full-hessian-max-dof")
    p.add_argument("--full-hessian-max-dof", type=COUNT, default=96, help="label the full Hessian when 3N is at most this")
    p.add_argument("--hessian-method", default="auto", choices=["auto", "autograd", "fd"])
    p.add_argument("--seed", type=COUNT, default=0, help="seeds the choice of Hessian rows")
    add_executor_options(p)
    add_model_options(p)
    add_output_options(p, "distill/labels")


def _add_train(p) -> None:
    from .options import add_output_options

    p.add_argument("labels", type=Path, help="label store folder written by `mlff-calc distill label`")
    p.add_argument("--epochs", type=POSITIVE_INT, default=30)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4)
    p.add_argument("--lr", type=POSITIVE, default=5e-3)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "plateau", "constant"])
    p.add_argument("--ema-decay", type=UNIT_INTERVAL, default=0.99, help="0 switches EMA off")
    p.add_argument("--patience", type=POSITIVE_INT, default=15, help="epochs without validation improvement before stopping")
    p.add_argument("--lambda-energy", type=NON_NEGATIVE, default=5.0)
    p.add_argument("--lambda-forces", type=NON_NEGATIVE, default=100.0)
    p.add_argument("--lambda-kd", type=NON_NEGATIVE, default=400.0, help="Hessian-row weight; 0 trains without the Hessian term")
    p.add_argument("--lambda-stress", type=NON_NEGATIVE, default=0.0)
    p.add_argument("--rows-per-structure", type=POSITIVE_INT, default=4, help="Hessian rows sampled per structure and step")
    p.add_argument("--row-method", default="vjp", choices=["vjp", "fd"], help="student Hessian rows by autograd VJP or finite differences")
    p.add_argument("--kd-halve-below", type=POSITIVE, default=None, help="halve lambda-kd once the validation force MAE (eV/Å) falls below this")
    p.add_argument(
        "--architecture",
        default="default",
        choices=["default", "fast"],
        help="student size: 'default' (more accurate) or 'fast' (FAST_ARCHITECTURE: about half the cost of a call, about a third more force error on Si; BENCHMARKS.md §6.1); the flags below change single entries",
    )
    p.add_argument("--channels", type=POSITIVE_INT, default=None)
    p.add_argument("--num-interactions", type=POSITIVE_INT, default=None)
    p.add_argument("--r-max", type=POSITIVE, default=None, help="student cutoff (Å)")
    p.add_argument("--max-ell", type=COUNT, default=None)
    p.add_argument("--correlation", type=POSITIVE_INT, default=None)
    p.add_argument("--device", type=device, default="cpu", help="auto, cpu or cuda[:N]; default: cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=COUNT, default=0)
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch and OpenBLAS CPU threads for this run; default: 1")
    p.add_argument("--config", type=Path, default=None, help="YAML file whose keys mirror these options")
    add_output_options(p, "distill/student")


def _run_sample(args) -> dict:

    from ..distill import sample
    from .options import load_calculator, read_frames

    frames = read_frames(args.structures, args.index)
    calc = load_calculator(args, n_atoms=max(len(a) for a in frames))
    samples = sample(
        frames,
        calc,
        temperatures_K=args.temperatures_K,
        md_frames_per_T=args.md_frames,
        md_interval=args.md_interval,
        md_equilibration_steps=args.md_equilibration_steps,
        timestep_fs=args.timestep_fs,
        n_rattle=args.n_rattle,
        rattle_std_A=args.rattle_std_A,
        n_strain=args.n_strain,
        strain=args.strain,
        split=args.split,
        seed=args.seed,
    )
    samples.write(args.out_dir)
    print(f"sampled {len(samples)} configurations {samples.counts()} into {args.out_dir}")
    return {
        "calc": calc,
        "outputs": {"samples": args.out_dir / "samples.npz", "manifest": args.out_dir / "samples.json"},
        "results": {"n_structures": len(samples), "counts": samples.counts()},
        "units": {"length": "Å", "temperature": "K", "time": "fs"},
    }


def _run_label(args) -> dict:
    from ..distill import SampleSet, label
    from .options import load_calculator

    samples = SampleSet.read(args.samples)
    calc = load_calculator(args)
    executor = model = None
    if args.executor == "ray":  # workers load the same model and layers; the local path labels here
        from .screen import build_executor, recipe

        executor, model = build_executor(args), recipe(args)
    try:
        store = label(
            samples,
            calc,
            args.out_dir,
            chunk_size=args.chunk_size,
            full_hessian_max_dof=args.full_hessian_max_dof,
            n_rows=args.n_rows,
            hessian_method=args.hessian_method,
            seed=args.seed,
            executor=executor,
            model=model,
        )
    finally:
        if executor is not None:
            executor.close()
    print(f"labelled {store.manifest['n_structures']} structures with {calc.adapter.model_id} into {args.out_dir}")
    return {
        "calc": calc,
        "outputs": {"labels": args.out_dir / "labels.json"},
        "results": {"n_structures": store.manifest["n_structures"], "n_chunks": store.manifest["n_chunks"], "teacher": store.teacher},
        "units": store.manifest["units"],
    }


def _run_train(args) -> dict:
    from ..distill import train_student
    from .options import default_threads, set_threads

    set_threads(args.threads or default_threads(None))  # batches of a few small structures
    from ..models.student import DEFAULT_ARCHITECTURE, FAST_ARCHITECTURE

    preset = {"default": DEFAULT_ARCHITECTURE, "fast": FAST_ARCHITECTURE}[args.architecture]
    arch = {
        **preset,
        **{
            k: v
            for k, v in {"channels": args.channels, "num_interactions": args.num_interactions, "r_max": args.r_max, "max_ell": args.max_ell, "correlation": args.correlation}.items()
            if v is not None
        },
    }
    result = train_student(
        args.labels,
        architecture=arch,
        dtype=args.dtype,
        device=args.device,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        ema_decay=args.ema_decay or None,
        patience=args.patience,
        lambda_energy=args.lambda_energy,
        lambda_forces=args.lambda_forces,
        lambda_kd=args.lambda_kd,
        lambda_stress=args.lambda_stress,
        rows_per_structure=args.rows_per_structure,
        row_method=args.row_method,
        kd_schedule=args.kd_halve_below,
        seed=args.seed,
        out_dir=args.out_dir,
    )
    test = result.metrics.get("test", {})
    print(
        f"student in {args.out_dir}: best epoch {result.metrics['best_epoch']}, test force MAE {test.get('force_mae', float('nan')):.4f} eV/Å, energy MAE {1e3 * test.get('energy_mae_per_atom', float('nan')):.2f} meV/atom vs the teacher"
    )
    outputs = {"student": args.out_dir / "student.json", "weights": args.out_dir / "student.pt", "error_log": args.out_dir / "error_log.npz", "history": args.out_dir / "train-history.json"}
    units = {"energy_mae_per_atom": "eV/atom", "force_mae": "eV/Å", "force_l2mae": "eV/Å", "force_rmse": "eV/Å", "stress_mae": "eV/Å³", "train_time_s": "s"}
    return {"calc": None, "outputs": outputs, "results": {"metrics": result.metrics, "teacher": result.teacher}, "units": units}


STEPS = {
    "sample": (_add_sample, _run_sample, "sample configurations around structures: teacher MD, rattles, ±strain; dedup; split"),
    "label": (_add_label, _run_label, "label a sample folder with the teacher: energies, forces, stress, Hessian rows (resumable)"),
    "train": (_add_train, _run_train, "train a student on a label store and save it (loadable with mlff_calc.load)"),
}


def run(args) -> int:
    from .options import show_outputs, write_summary

    started = time.time()
    done = args._step(args)
    summary = write_summary(args, done["calc"], name=f"distill-{args.step}", started=started, outputs=done["outputs"], results=done["results"], units=done["units"])
    show_outputs(done["outputs"], summary)
    return 0
