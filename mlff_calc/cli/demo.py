"""``mlff-calc demo``: the suite end to end on the embedded default model (CHGNet).

With no other files it runs, in order (each a *section*, see :data:`SECTIONS`):

- ``singlepoint``: energy and largest force of a few structures with every available model;
- ``relax``: Si and NaCl (cell and positions) from rattled textbook cells;
- ``eos``: their Birch-Murnaghan fits at the relaxed lattice constants, B next to the
  WIEN2k-PBE value of ase.collections.dcdft where it has one (Si);
- ``phonons``: Si and NaCl primitive cells in 3x3x3 supercells, the highest branch at Γ/X/L;
- ``md``: NVE of 64-atom Si near 300 K and its energy drift;
- ``student``: a small student distilled from the model (the teacher) on 8-atom Si
  (teacher MD frames, rattles and strains, energies, forces and two Hessian rows each),
  its held-out force MAE against the teacher and its speed against the teacher on
  64-atom Si (median of interleaved energy+forces+stress calls);
- ``uncertainty``: an LTAU index of that student's per-epoch training errors attached to it
  as a layer, and its largest per-atom force uncertainty along a 900 K Langevin run;
- ``softening`` (with ``--dft`` or ``--phonopy-disp``): measure and fit the correction.

It prints one table per section and writes ``demo-summary.json`` (every number) and
PNGs (bands + DOS, EOS, MD trace, uncertainty trace) to ``--out-dir``, with the
student (``student/``, loadable with ``mlff_calc.load``), its label store and its LTAU
folder. A failure inside ``student`` or ``uncertainty`` is reported in that section's
table (and as ``error`` in the summary) and the demo goes on.

Adding a section: write ``def my_section(ctx: DemoContext) -> dict`` that reads what
it needs from ``ctx`` (``ctx.calc``, ``ctx.sizes``, earlier sections' numbers in
``ctx.results``, shared objects in ``ctx.state``), records files with
``ctx.add_output``, prints its table with :func:`print_table` and returns its numbers;
then append ``Section("my-section", "Title", my_section)`` to :data:`SECTIONS` (with
``enabled=`` when it needs inputs or optional packages).
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HELP = "run the suite end to end on CHGNet (no other files needed) and write a summary and plots"


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options
    from .softening import add_dft_options

    p.add_argument("--models", nargs="*", default=None, help="models for the single-point table; default: every model available here")
    p.add_argument("--sections", nargs="+", default=None, metavar="NAME", help=f"run only these sections (of: {', '.join(s.name for s in SECTIONS)}); default: all that apply")
    p.add_argument("--quick", action="store_true", help="coarser relaxation, EOS and phonon meshes, 40-step 8-atom MDs and a 4-epoch student (for tests and CI)")
    add_dft_options(p)
    # measured on 2 shared cores: 1 thread ran the demo several times faster than 2
    add_model_options(p, threads_default=1)
    add_output_options(p, "demo")


# framework --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSizes:
    """Problem sizes; :data:`QUICK` for tests and CI."""

    relax_fmax_eV_per_A: float = 1e-3
    relax_steps: int = 300
    eos_points: int = 9
    eos_strain_range: float = 0.06
    phonon_supercell: int = 3
    phonon_mesh: int = 20
    band_npoints: int = 51
    md_repeat: int = 2  # conventional 8-atom cell repeated n x n x n
    md_steps: int = 200
    md_timestep_fs: float = 1.0
    md_log_interval: int = 5
    # student: teacher samples of 8-atom Si (MD frames at 600 K, rattles, ±strains), Hessian rows, epochs
    student_md_frames: int = 16
    student_rattles: int = 16
    student_strains: int = 8
    student_hessian_rows: int = 2
    student_epochs: int = 20
    timing_calls: int = 5  # interleaved student/teacher calls on 64-atom Si; the median is reported
    # uncertainty: Langevin MD of the student with the LTAU layer, Si conventional cell repeated n x n x n
    uq_md_repeat: int = 2
    uq_md_steps: int = 100


FULL = DemoSizes()
QUICK = DemoSizes(
    relax_fmax_eV_per_A=2e-3, eos_points=7, phonon_mesh=8, band_npoints=21, md_repeat=1, md_steps=40, md_log_interval=5,
    student_md_frames=8, student_rattles=8, student_strains=4, student_epochs=4, timing_calls=3, uq_md_repeat=1, uq_md_steps=40,
)


@dataclass
class DemoContext:
    """What sections share: options, sizes, the calculator (loaded on first use), results so far."""

    args: object
    sizes: DemoSizes
    out_dir: Path
    results: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    _calc: object = None

    @property
    def calc(self):
        if self._calc is None:
            from .options import load_calculator

            self._calc = load_calculator(self.args)
        return self._calc

    def add_output(self, key: str, path) -> Path:
        self.outputs[key] = Path(path)
        return Path(path)


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[DemoContext], dict]
    enabled: Callable[[object], bool] = lambda args: True


def print_table(title: str, headers: list[str], rows: list[list], widths: list[int] | None = None) -> None:
    """A plain-text table; floats are printed as given (format them first)."""
    widths = widths or [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(headers, widths))))
    for row in rows:
        print("  ".join(f"{str(v):<{w}}" if i == 0 else f"{str(v):>{w}}" for i, (v, w) in enumerate(zip(row, widths))))


def _f(value, fmt: str = ".3f") -> str:
    return "—" if value is None else format(value, fmt)


# structures -------------------------------------------------------------------------

#: textbook lattice constants (Å) the relaxations start from
START_A = {"Si": ("diamond", 5.43), "NaCl": ("rocksalt", 5.64)}


def primitive(name: str, a: float):
    """The 2-atom fcc primitive cell, vectors (0,½,½)a, (½,0,½)a, (½,½,0)a (the basis of FCC_POINTS)."""
    from ase.build import bulk

    return bulk(name, START_A[name][0], a)


def fcc_lattice_constant(atoms) -> float:
    """Cubic lattice constant of an fcc primitive cell from its volume (a³ = 4 V)."""
    return float((4.0 * atoms.get_volume()) ** (1.0 / 3.0))


def dcdft_lattice_constant(reference: dict | None) -> float | None:
    """Diamond/fcc cubic a from dcdft's volume per atom (8 atoms in diamond's cubic cell)."""
    return None if reference is None else float((8.0 * reference["v0_per_atom_A3"]) ** (1.0 / 3.0))


# sections ---------------------------------------------------------------------------


def available_models() -> list[str]:
    from ..models.registry import KNOWN_MODELS, locate

    return [name for name, spec in KNOWN_MODELS.items() if spec.bundled or locate(spec)]


def singlepoint_table(models, device) -> list[dict]:
    """Energy per atom and max force of a few structures with every available model."""
    from ase.build import bulk, molecule

    import mlff_calc

    from ..errors import MLFFError
    from ..models.fingerprints import mos_cscl

    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.03, seed=0)
    structures = {"Si (diamond, rattled)": si, "NaCl (rocksalt)": bulk("NaCl", "rocksalt", 5.64), "MoS (CsCl, a=4)": mos_cscl(), "H2O (molecule)": molecule("H2O")}
    rows = []
    for name in models:
        try:
            calc = mlff_calc.load(name, device=device)
        except MLFFError as exc:
            rows.append({"model": name, "error": str(exc)})
            continue
        for label, atoms in structures.items():
            atoms = atoms.copy()
            atoms.calc = calc
            t = time.perf_counter()
            energy = atoms.get_potential_energy()
            fmax = float(abs(atoms.get_forces()).max())
            rows.append({"model": name, "structure": label, "energy_per_atom_eV": energy / len(atoms), "fmax_eV_per_A": fmax, "time_ms": 1e3 * (time.perf_counter() - t)})
    return rows


def section_singlepoint(ctx: DemoContext) -> dict:
    rows = singlepoint_table(ctx.args.models or available_models(), ctx.args.device)
    print("\nSingle points")
    print(f"{'model':<28} {'structure':<24} {'E (eV/atom)':>12} {'Fmax (eV/Å)':>12} {'time (ms)':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<28} error: {r['error']}")
        else:
            print(f"{r['model']:<28} {r['structure']:<24} {r['energy_per_atom_eV']:>12.4f} {r['fmax_eV_per_A']:>12.4f} {r['time_ms']:>10.1f}")
    return {"rows": rows}


def section_relax(ctx: DemoContext) -> dict:
    from ..workflows.relax import Relax
    from .eos import dcdft_reference

    sizes, out = ctx.sizes, {}
    for k, name in enumerate(START_A):
        start = primitive(name, START_A[name][1])
        start.rattle(0.02, seed=k)
        # symprec 0.01 Å: the space group of the relaxed cell, not of the rattle's remainder below fmax
        res = Relax(start, ctx.calc, optimizer="FIRE", relax_cell=True, fmax_eV_per_A=sizes.relax_fmax_eV_per_A, max_steps=sizes.relax_steps, symprec=0.01, prefix=ctx.out_dir / name).run()
        reference = dcdft_reference(start)
        out[name] = {
            "a_A": fcc_lattice_constant(res.atoms),
            "a_start_A": START_A[name][1],
            "a_pbe_dcdft_A": dcdft_lattice_constant(reference),
            "energy_per_atom_eV": res.energy / len(start),
            "converged": res.converged,
            "n_steps": res.n_steps,
            "max_force_eV_per_A": res.max_force_eV_per_A,
            "spacegroup": res.spacegroup,
            "lattice_parameters": res.lattice_parameters,
        }
    rows = [
        [name, _f(r["a_start_A"]), _f(r["a_A"], ".4f"), _f(r["a_pbe_dcdft_A"], ".4f"), _f(r["energy_per_atom_eV"], ".4f"), r["n_steps"], "yes" if r["converged"] else "NO", r["spacegroup"]]
        for name, r in out.items()
    ]
    print_table(
        f"Relaxation (cell + positions, FIRE, fmax {sizes.relax_fmax_eV_per_A:g} eV/Å)",
        ["crystal", "a start (Å)", "a (Å)", "a PBE dcdft (Å)", "E (eV/atom)", "steps", "converged", "space group"],
        rows,
    )
    return out


def _relaxed_a(ctx: DemoContext, name: str) -> float:
    """The relaxed lattice constant when the relax section ran, else the textbook value."""
    return ctx.results.get("relax", {}).get(name, {}).get("a_A", START_A[name][1])


def section_eos(ctx: DemoContext) -> dict:
    import numpy as np
    from ase import units

    from ..plots import eos_curves
    from ..workflows.eos import EquationOfState, birch_murnaghan
    from .eos import dcdft_reference

    sizes, out, curves = ctx.sizes, {}, {}
    for name in START_A:
        atoms = primitive(name, _relaxed_a(ctx, name))
        res = EquationOfState(atoms, ctx.calc, strain_range=sizes.eos_strain_range, n_points=sizes.eos_points).run()
        reference = dcdft_reference(atoms)
        n = res.n_atoms
        out[name] = {
            "v0_per_atom_A3": res.v0_per_atom_A3,
            "a0_A": (4.0 * res.v0_A3) ** (1.0 / 3.0),
            "bulk_modulus_GPa": res.bulk_modulus_GPa,
            "bulk_modulus_derivative": res.bulk_modulus_derivative,
            "fit_rms_eV": res.fit_rms_eV,
            "bulk_modulus_pbe_dcdft_GPa": None if reference is None else reference["bulk_modulus_GPa"],
            "reference": reference,
            "volumes_A3": res.volumes_A3,
            "energies_eV": res.energies_eV,
        }
        v = np.linspace(res.volumes_A3.min(), res.volumes_A3.max(), 200)
        e = birch_murnaghan(v, res.e0_eV, res.v0_A3, res.bulk_modulus_GPa * units.GPa, res.bulk_modulus_derivative)
        curves[f"{name}: B = {res.bulk_modulus_GPa:.1f} GPa"] = (res.volumes_A3 / n, res.energies_eV / n, v / n, e / n)
    ctx.add_output("eos_plot", eos_curves(ctx.out_dir / "eos.png", curves, title=f"{ctx.calc.adapter.model_id}: Birch-Murnaghan fits"))
    rows = [
        [name, _f(r["v0_per_atom_A3"]), _f(r["a0_A"], ".4f"), _f(r["bulk_modulus_GPa"], ".1f"), _f(r["bulk_modulus_pbe_dcdft_GPa"], ".1f"), _f(r["bulk_modulus_derivative"], ".2f"), _f(1e3 * r["fit_rms_eV"], ".3f")]
        for name, r in out.items()
    ]
    print_table(
        f"Equation of state (±{100 * sizes.eos_strain_range:g}% volume, {sizes.eos_points} points, BM3)",
        ["crystal", "V0 (Å³/atom)", "a0 (Å)", "B (GPa)", "B PBE dcdft (GPa)", "B'", "rms (meV)"],
        rows,
    )
    return out


def _quiet_phonopy_warnings() -> None:
    try:
        from phonopy.phonon.thermal_properties import GammaAcousticWarning
    except ImportError:  # other phonopy versions
        return
    warnings.simplefilter("ignore", GammaAcousticWarning)


def section_phonons(ctx: DemoContext) -> dict:
    from ..workflows.phonons import FCC_POINTS, Phonons
    from .phonons import bands_dos_plot

    sizes, out = ctx.sizes, {}
    n = sizes.phonon_supercell
    for name in START_A:
        atoms = primitive(name, _relaxed_a(ctx, name))
        wf = Phonons(atoms, ctx.calc, supercell_matrix=[n, n, n], mesh=(sizes.phonon_mesh,) * 3, band_npoints=sizes.band_npoints, symmetrize_fc=True, prefix=ctx.out_dir / name)
        with warnings.catch_warnings():
            _quiet_phonopy_warnings()  # the table reports the lowest frequency and imaginary modes
            res = wf.run()
        highest = wf.highest_branch_at(FCC_POINTS)
        out[name] = {
            "supercell": [n, n, n],
            "n_atoms_supercell": len(wf.phonon.supercell),
            "n_displacements": res.n_displacements,
            "highest_branch_THz": {"Γ" if k == "G" else k: v for k, v in highest.items()},
            "min_frequency_THz": res.min_frequency_THz,
            "max_frequency_THz": res.max_frequency_THz,
            "has_imaginary_modes": res.has_imaginary_modes,
            "nac": False,
            "symmetrized_fc": True,
        }
        model = ctx.calc.adapter.model_id
        plot = bands_dos_plot(wf, ctx.out_dir / f"phonons-{name}.png", label=model, title=f"{name} ({model}, {n}x{n}x{n} supercell)")
        ctx.add_output(f"bands_{name}", plot)
    rows = [
        [name, f"{n}x{n}x{n} ({r['n_atoms_supercell']})", r["n_displacements"], *(_f(r["highest_branch_THz"][p], ".2f") for p in ("Γ", "X", "L")),
         _f(0.0 if abs(r["min_frequency_THz"]) < 5e-4 else r["min_frequency_THz"], ".3f"), "yes" if r["has_imaginary_modes"] else "no"]
        for name, r in out.items()
    ]
    print_table(
        "Phonons at the relaxed lattice constants (symmetrised force constants; highest branch in THz; NaCl without the non-analytical correction, so Γ is TO)",
        ["crystal", "supercell (atoms)", "displacements", "Γ", "X", "L", "min (THz)", "imaginary"],
        rows,
    )
    return out


def section_md(ctx: DemoContext) -> dict:
    import numpy as np
    from ase.build import bulk

    from ..plots import md_traces
    from ..workflows.md import MolecularDynamics

    sizes = ctx.sizes
    atoms = bulk("Si", "diamond", _relaxed_a(ctx, "Si"), cubic=True).repeat(sizes.md_repeat)
    wf = MolecularDynamics(
        atoms,
        ctx.calc,
        ensemble="nve",
        temperature_K=300.0,
        initial_temperature_K=600.0,  # NVE shares the kinetic energy with the potential: starts at 2T to settle near T
        timestep_fs=sizes.md_timestep_fs,
        steps=sizes.md_steps,
        log_interval=sizes.md_log_interval,
        trajectory=ctx.out_dir / "md-Si-traj.extxyz",
        seed=0,
        prefix=ctx.out_dir / "md-Si",
    )
    t0 = time.perf_counter()
    res = wf.run()
    elapsed = time.perf_counter() - t0
    ctx.state["md"] = {"workflow": wf, "result": res}
    log, n = res.log, len(atoms)
    drift = log["drift_eV_per_atom"]
    out = {
        "formula": atoms.get_chemical_formula(),
        "n_atoms": n,
        "ensemble": "nve",
        "timestep_fs": sizes.md_timestep_fs,
        "n_steps": res.n_steps,
        "initial_temperature_K": 600.0,
        "mean_temperature_K": res.mean_temperature_K,
        "drift_eV_per_atom_per_ps": res.drift_eV_per_atom_per_ps,
        "max_abs_drift_eV_per_atom": float(np.max(np.abs(drift))),
        "final_drift_eV_per_atom": float(drift[-1]),
        "ms_per_step": 1e3 * elapsed / max(res.n_steps, 1),
        "log": log,
    }
    ctx.add_output("md_trajectory", wf.trajectory)
    ctx.add_output("md_log", wf.output_files["log"])
    plot = md_traces(
        ctx.out_dir / "md-energy.png",
        time_ps=log["time_ps"],
        energies_eV_per_atom={"E_pot": log["E_pot_eV"] / n, "E_kin": log["E_kin_eV"] / n, "E_tot": log["E_tot_eV"] / n},
        conserved_eV_per_atom=log["E_tot_eV"] / n,
        temperature_K=log["T_K"],
        title=f"Si{n} NVE, {sizes.md_timestep_fs:g} fs ({ctx.calc.adapter.model_id})",
    )
    ctx.add_output("md_plot", plot)
    rows = [[
        out["formula"], f"{res.n_steps} x {sizes.md_timestep_fs:g} fs", _f(res.mean_temperature_K, ".1f"),
        _f(1e3 * out["drift_eV_per_atom_per_ps"], ".3f"), _f(1e3 * out["max_abs_drift_eV_per_atom"], ".3f"), _f(out["ms_per_step"], ".1f"),
    ]]
    print_table("Molecular dynamics (NVE, velocities drawn at 600 K)", ["system", "steps", "<T> (K)", "drift (meV/atom/ps)", "max |ΔE_tot| (meV/atom)", "ms/step"], rows)
    return out


def section_softening(ctx: DemoContext) -> dict:
    import math

    from ..plots import force_parity
    from ..softening import fit_scale, measure
    from .options import load_calculator
    from .softening import SUBTRACT, force_components, read_dataset

    args = ctx.args
    dataset = read_dataset(args)
    subtract = SUBTRACT[args.subtract_reference]
    bare = ctx.calc if not getattr(ctx.calc, "layers", None) else load_calculator(args, layers=False)
    report = measure(bare, dataset, subtract_reference=subtract)
    fit = fit_scale(bare, dataset, subtract_reference=subtract)
    fit_path = ctx.out_dir / "softening-fit.json"
    fit.save(fit_path)
    ctx.add_output("softening_fit", fit_path)
    fm, fd = force_components(bare, dataset, subtract)
    panels = {"model": fm, f"c × model (c = {fit.c:.3f})": fit.c * fm}
    ctx.add_output("softening_parity", force_parity(ctx.out_dir / "softening-parity.png", fd, panels, title=f"{fit.model_id} vs DFT, {fit.chemical_system}"))
    out = {
        "source": dataset.source,
        "n_structures": len(dataset),
        "chemical_system": fit.chemical_system,
        "s": report.pooled.s,
        "c": fit.c,
        "mae_eV_per_A": fit.mae,
        "mae_corrected_eV_per_A": fit.mae_corrected,
        "cmae_eV_per_A": fit.cmae,
        "frequency_scale": math.sqrt(fit.c),
        "subtract_reference": report.subtract_reference,
        "report": report.to_dict(),
    }
    rows = [[fit.chemical_system, len(dataset), fit.n_components, _f(out["s"], ".4f"), _f(fit.c, ".4f"), _f(fit.mae, ".5f"), _f(fit.mae_corrected, ".5f"), _f(fit.cmae, ".5f")]]
    source = Path(dataset.source.split(" + ")[0])
    print_table(f"Softening against {source.parent.name}/{source.name}", ["system", "structures", "components", "s", "c", "MAE (eV/Å)", "MAE with c", "cMAE"], rows)
    print(f"phonon frequencies of the corrected model scale by √c = {out['frequency_scale']:.3f}; apply the fit with --softening {fit_path}")
    return out


def _section_error(title: str, exc: Exception) -> dict:
    """A failed optional layer (student, LTAU) is reported in its table; the demo goes on."""
    message = f"{type(exc).__name__}: {exc}"
    print_table(title, ["status"], [[f"error: {message}"]])
    return {"error": message}


#: the student's size-independent training settings (architecture: the student default)
STUDENT_TRAINING = {"batch_size": 3, "lr": 1e-2, "seed": 0}


def _train_student(ctx: DemoContext) -> dict:
    """Sample, label and train the student once per demo (``ctx.state["student"]``)."""
    if "student" in ctx.state:
        return ctx.state["student"]
    from ase.build import bulk

    from .. import distill
    from ..errors import ArtifactError

    sizes, folder = ctx.sizes, ctx.out_dir / "student"
    t0 = time.perf_counter()
    si8 = bulk("Si", "diamond", _relaxed_a(ctx, "Si"), cubic=True)
    samples = distill.sample(
        [si8], ctx.calc, temperatures_K=(600.0,), md_frames_per_T=sizes.student_md_frames, md_interval=2, md_equilibration_steps=4,
        n_rattle=sizes.student_rattles, rattle_std_A=0.05, n_strain=sizes.student_strains, split=(0.6, 0.2, 0.2), seed=0, progress=False,
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
        import mlff_calc
        from ase.build import bulk

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
    except Exception as exc:  # an optional layer: report, don't end the demo
        return _section_error(title, exc)
    n = out["n_structures"]
    rows = [[f"{out['teacher']} -> student ({out['n_parameters']} params)", f"{n.get('train', 0)}/{n.get('valid', 0)}/{n.get('test', 0)}", out["epochs_run"],
             _f(out["student_ms"], ".1f"), _f(out["teacher_ms"], ".1f"), _f(out["speedup"], ".1f") + "x", _f(out["test_force_mae_eV_per_A"], ".3f")]]
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

        from ..layers.ltau import LTAULayer, UncertaintyMonitor
        from ..ltau import build_ltau
        from ..plots import new_figure, save_png

        sizes = ctx.sizes
        st = _train_student(ctx)
        folder = st["folder"]
        t0 = time.perf_counter()
        from ..distill import load_student

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
        monitor = UncertaintyMonitor(atoms, threshold=1e9, action="save")  # a record, no stop
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
        ax.plot(steps, values, color="C3", label="max over atoms")
        ax.set_xlabel("MD step (1 fs)")
        ax.set_ylabel("force uncertainty, max (eV/Å)")
        ax.set_title(f"Si{len(atoms)} Langevin {temperature:g} K, student + LTAU (k = {ltau.k})")
        ax2 = ax.twinx()
        ax2.plot(steps, temps, color="0.6", lw=0.8)
        ax2.set_ylabel("T (K)", color="0.4")
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
            "build_s": build_s,
            "ms_per_step": 1e3 * md_s / max(sizes.uq_md_steps, 1),
        }
    except Exception as exc:  # an optional layer: report, don't end the demo
        return _section_error(title, exc)
    ctx.add_output("ltau", ctx.out_dir / "ltau")
    ctx.add_output("uncertainty_plot", plot)
    rows = [[out["system"], f"{out['n_steps']} x 1 fs", _f(out["mean_temperature_K"], ".0f"), out["k"], _f(out["calibration_scale"], ".2f"),
             _f(out["min_eV_per_A"], ".3f"), _f(out["mean_eV_per_A"], ".3f"), _f(out["max_eV_per_A"], ".3f"), _f(out["ms_per_step"], ".1f")]]
    print_table(title, ["system", "steps", "<T> (K)", "k", "scale", "min (eV/Å)", "mean (eV/Å)", "max (eV/Å)", "ms/step"], rows)
    return out


def _has_dft(args) -> bool:
    return getattr(args, "dft", None) is not None or getattr(args, "phonopy_disp", None) is not None


#: the demo's sections, in order
SECTIONS: list[Section] = [
    Section("singlepoint", "Single points", section_singlepoint),
    Section("relax", "Relaxation", section_relax),
    Section("eos", "Equation of state", section_eos),
    Section("phonons", "Phonons", section_phonons),
    Section("md", "Molecular dynamics", section_md),
    Section("student", "Distilled student", section_student),
    Section("uncertainty", "Uncertainty", section_uncertainty),
    Section("softening", "Softening", section_softening, enabled=_has_dft),
]


def selected_sections(args) -> list[Section]:
    from ..errors import ConfigurationError

    names = {s.name for s in SECTIONS}
    wanted = args.sections
    if wanted is not None:
        unknown = sorted(set(wanted) - names)
        if unknown:
            raise ConfigurationError(f"unknown demo section(s) {', '.join(unknown)}; choose from {', '.join(s.name for s in SECTIONS)}")
        if "softening" in wanted and not _has_dft(args):
            raise ConfigurationError("the softening section needs DFT data: --dft FILE or --phonopy-disp YAML [--force-sets FILE]")
    return [s for s in SECTIONS if (wanted is None or s.name in wanted) and s.enabled(args)]


def run(args) -> int:
    from ..workflows import UNITS
    from .options import restore_threads, set_threads, write_summary

    started = time.time()
    sections = selected_sections(args)
    previous_threads = set_threads(args.threads)
    ctx = DemoContext(args=args, sizes=QUICK if args.quick else FULL, out_dir=Path(args.out_dir))
    timings = {}
    try:
        for section in sections:
            t0 = time.perf_counter()
            ctx.results[section.name] = section.run(ctx)
            timings[section.name] = round(time.perf_counter() - t0, 3)
    finally:
        restore_threads(previous_threads)
    results = {**ctx.results, "timings_s": timings, "sizes": vars(ctx.sizes) | {"quick": bool(args.quick)}}
    summary = write_summary(args, ctx._calc, name="demo", started=started, outputs=ctx.outputs, results=results, units=UNITS | {"bulk_modulus": "GPa", "drift": "eV/atom (per ps for rates)"})
    print("\nTimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {time.time() - started:.1f} s")
    print(f"Outputs in {ctx.out_dir.resolve()}: {', '.join(sorted({p.name for p in ctx.outputs.values()} | {summary.name}))}")
    return 0
