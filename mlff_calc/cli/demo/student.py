"""Sections ``student`` (a distilled student of the model) and ``uncertainty`` (LTAU on it, along MD)."""

from __future__ import annotations

import shutil
import time

from .framework import DemoContext, _f, _relaxed_a, _section_error, print_table

#: the student's size-independent training settings (architecture: the student default)
STUDENT_TRAINING = {"batch_size": 3, "lr": 1e-2, "seed": 0}


def _train_student(ctx: DemoContext) -> dict:
    """Sample, label and train the student once per demo (``ctx.state["student"]``)."""
    if "student" in ctx.state:
        return ctx.state["student"]
    from ase.build import bulk

    from ... import distill
    from ...errors import ArtifactError

    sizes, folder = ctx.sizes, ctx.out_dir / "student"
    t0 = time.perf_counter()
    si8 = bulk("Si", "diamond", _relaxed_a(ctx, "Si"), cubic=True)
    samples = distill.sample(
        [si8],
        ctx.calc,
        temperatures_K=(600.0,),
        md_frames_per_T=sizes.student_md_frames,
        md_interval=2,
        md_equilibration_steps=4,
        n_rattle=sizes.student_rattles,
        rattle_std_A=0.05,
        n_strain=sizes.student_strains,
        split=(0.6, 0.2, 0.2),
        seed=0,
        progress=False,
    )
    t1 = time.perf_counter()
    labels = ctx.out_dir / "student-labels"
    options = {"chunk_size": 16, "full_hessian_max_dof": 0, "n_rows": sizes.student_hessian_rows, "seed": 0, "progress": False}
    try:  # resumes a store of the same inputs
        store = distill.label(samples, ctx.calc, labels, **options)
    except ArtifactError as exc:  # an earlier demo's store of other inputs (--quick, another model): replace it
        print(f"replacing the label store of an earlier demo run: {exc}")
        shutil.rmtree(labels)
        store = distill.label(samples, ctx.calc, labels, **options)
    t2 = time.perf_counter()
    result = distill.train_student(store, epochs=sizes.student_epochs, out_dir=folder, progress=False, **STUDENT_TRAINING)
    t3 = time.perf_counter()
    ctx.add_output("student", folder)
    ctx.state["student"] = {"folder": folder, "store": store, "result": result, "counts": samples.counts(), "times_s": {"sample": t1 - t0, "label": t2 - t1, "train": t3 - t2}}
    return ctx.state["student"]


def _median_call_ms(calcs: dict, atoms, n_calls: int) -> dict:
    """Median wall time (ms) of one energy+forces+stress evaluation per calculator, calls interleaved."""
    import numpy as np

    times = {name: [] for name in calcs}
    for calc in calcs.values():  # warm-up (graph building, caches) outside the timing
        calc.evaluate([atoms.copy()], ("energy", "forces", "stress"))
    for _ in range(n_calls):
        for name, calc in calcs.items():
            a = atoms.copy()
            t = time.perf_counter()
            calc.evaluate([a], ("energy", "forces", "stress"))
            times[name].append(1e3 * (time.perf_counter() - t))
    return {name: float(np.median(v)) for name, v in times.items()}


def section_student(ctx: DemoContext) -> dict:
    title = "Distilled student (Hessian distillation of the teacher on 8-atom Si)"
    try:
        from ase.build import bulk

        import mlff_calc

        st = _train_student(ctx)
        result, teacher = st["result"], ctx.calc
        student = mlff_calc.load(st["folder"], device=ctx.args.device)
        si64 = bulk("Si", "diamond", _relaxed_a(ctx, "Si"), cubic=True).repeat(2)
        si64.rattle(0.05, seed=1)
        ms = _median_call_ms({"student": student, "teacher": teacher}, si64, ctx.sizes.timing_calls)
        test = result.metrics["test"]
        out = {
            "folder": str(st["folder"]),
            "teacher": teacher.adapter.model_id,
            "architecture": result.config["architecture"],
            "n_parameters": int(sum(p.numel() for p in result.adapter.module.parameters())),
            "n_structures": st["counts"],
            "hessian_rows_per_structure": ctx.sizes.student_hessian_rows,
            "epochs_run": result.metrics["epochs_run"],
            "best_epoch": result.metrics["best_epoch"],
            "test_force_mae_eV_per_A": float(test["force_mae"]),
            "test_energy_mae_eV_per_atom": float(test["energy_mae_per_atom"]),
            "valid_force_mae_eV_per_A": float(result.metrics["valid"]["force_mae"]),
            "timing_structure": f"Si{len(si64)} (rattled 0.05 Å)",
            "timing_calls": ctx.sizes.timing_calls,
            "student_ms": ms["student"],
            "teacher_ms": ms["teacher"],
            "speedup": ms["teacher"] / ms["student"],
            "times_s": st["times_s"],
        }
    except Exception as exc:  # noqa: BLE001  an optional layer: report, don't end the demo
        return _section_error(title, exc)
    n = out["n_structures"]
    rows = [
        [
            f"{out['teacher']} -> student ({out['n_parameters']} params)",
            f"{n.get('train', 0)}/{n.get('valid', 0)}/{n.get('test', 0)}",
            out["epochs_run"],
            _f(out["student_ms"], ".1f"),
            _f(out["teacher_ms"], ".1f"),
            _f(out["speedup"], ".1f") + "x",
            _f(out["test_force_mae_eV_per_A"], ".3f"),
        ]
    ]
    print_table(title, ["model", "train/valid/test", "epochs", f"student ms (Si{len(si64)})", "teacher ms", "speed-up", "test F MAE vs teacher (eV/Å)"], rows)
    t = out["times_s"]
    print(f"sample {t['sample']:.1f} s, label {t['label']:.1f} s, train {t['train']:.1f} s; load it with mlff_calc.load({str(st['folder'])!r})")
    return out


def section_uncertainty(ctx: DemoContext) -> dict:
    title = "Uncertainty (LTAU index of the student's training errors, along Langevin MD)"
    try:
        import numpy as np
        from ase import units
        from ase.build import bulk
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

        import mlff_calc

        from ...layers.ltau import LTAULayer, UncertaintyMonitor
        from ...ltau import build_ltau
        from ...plots import new_figure, save_png

        sizes = ctx.sizes
        st = _train_student(ctx)
        folder = st["folder"]
        t0 = time.perf_counter()
        from ...distill import load_student

        # the saved student (its id and weights sha256 are what the layer checks), not the in-memory one
        ltau = build_ltau(load_student(folder, device=ctx.args.device), st["store"], folder / "error_log.npz", ctx.out_dir / "ltau", n_bins=40, calibration=st["store"], ks=(1, 3, 5, 10))
        build_s = time.perf_counter() - t0
        calc = mlff_calc.load(folder, device=ctx.args.device, layers=[LTAULayer.from_dir(ctx.out_dir / "ltau")])
        atoms = bulk("Si", "diamond", _relaxed_a(ctx, "Si"), cubic=True).repeat(sizes.uq_md_repeat)
        atoms.rattle(0.02, seed=2)  # off the perfect crystal, whose twin in the training set gives a near-zero uncertainty
        atoms.calc = calc
        temperature = 900.0
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(0))
        Stationary(atoms)
        atoms.set_constraint(FixCom())  # ASE >= 3.28: the exact way to fix the centre of mass (fixcm=True is deprecated)
        dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False, rng=np.random.default_rng(1))
        # alarm level: 3x the student's force MAE against the teacher on its held-out structures
        threshold = 3.0 * float(st["result"].metrics["test"]["force_mae"])
        monitor = UncertaintyMonitor(atoms, threshold=1e9, action="save")  # a record only; the threshold is drawn and counted
        temps: list[float] = []
        dyn.attach(monitor, interval=1)
        dyn.attach(lambda: temps.append(float(atoms.get_temperature())), interval=1)
        t1 = time.perf_counter()
        dyn.run(sizes.uq_md_steps)
        md_s = time.perf_counter() - t1
        steps = np.array([s for s, _ in monitor.history])
        values = np.array([v for _, v in monitor.history])
        fig = new_figure(6.0, 4.0)
        ax = fig.add_subplot()
        ax.plot(steps, values, color="C3", label="largest per-atom force uncertainty")
        ax.axhline(threshold, color="k", ls="--", lw=1.0, label=f"threshold: 3 × held-out force MAE ({threshold:.3f} eV/Å)")
        ax.set_xlabel("MD step (1 fs)")
        ax.set_ylabel("force uncertainty per atom, max (eV/Å)")
        ax.set_ylim(bottom=0.0, top=max(float(values.max()), threshold) * 1.15)
        ax.set_title(f"Si{len(atoms)} Langevin {temperature:g} K, student + LTAU (k = {ltau.k})")
        ax2 = ax.twinx()
        ax2.plot(steps, temps, color="0.6", lw=0.8, label="temperature")
        ax2.set_ylabel("T (K)", color="0.4")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.9)
        plot = save_png(fig, ctx.out_dir / "uncertainty.png")
        out = {
            "ltau": str(ctx.out_dir / "ltau"),
            "k": int(ltau.k),
            "calibration_scale": float(ltau.calibration.scale),
            "n_index_atoms": int(ltau.index.ntotal),
            "system": f"Si{len(atoms)}",
            "temperature_K": temperature,
            "n_steps": sizes.uq_md_steps,
            "mean_temperature_K": float(np.mean(temps)),
            "step": steps.tolist(),
            "forces_uncertainty_max_eV_per_A": values.tolist(),
            "min_eV_per_A": float(values.min()),
            "mean_eV_per_A": float(values.mean()),
            "max_eV_per_A": float(values.max()),
            "threshold_eV_per_A": threshold,
            "steps_over_threshold": int((values > threshold).sum()),
            "build_s": build_s,
            "ms_per_step": 1e3 * md_s / max(sizes.uq_md_steps, 1),
        }
    except Exception as exc:  # noqa: BLE001  an optional layer: report, don't end the demo
        return _section_error(title, exc)
    ctx.add_output("ltau", ctx.out_dir / "ltau")
    ctx.add_output("uncertainty_plot", plot)
    rows = [
        [
            out["system"],
            f"{out['n_steps']} x 1 fs",
            _f(out["mean_temperature_K"], ".0f"),
            out["k"],
            _f(out["calibration_scale"], ".2f"),
            _f(out["min_eV_per_A"], ".3f"),
            _f(out["mean_eV_per_A"], ".3f"),
            _f(out["max_eV_per_A"], ".3f"),
            f"{_f(out['threshold_eV_per_A'], '.3f')} ({out['steps_over_threshold']})",
            _f(out["ms_per_step"], ".1f"),
        ]
    ]
    print_table(title, ["system", "steps", "<T> (K)", "k", "scale", "min (eV/Å)", "mean (eV/Å)", "max (eV/Å)", "threshold (steps over)", "ms/step"], rows)
    return out
