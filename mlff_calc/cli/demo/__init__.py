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

import time
from pathlib import Path

from .basics import section_eos, section_relax, section_singlepoint
from .framework import FULL, QUICK, DemoContext, DemoSizes, Section, print_table  # noqa: F401  (the section API)
from .md import section_md
from .phonons import section_phonons
from .softening import section_softening
from .student import section_student, section_uncertainty

HELP = "run the suite end to end on CHGNet (no other files needed) and write a summary and plots"


def add_arguments(p) -> None:
    from ..options import add_model_options, add_output_options
    from ..softening import add_dft_options

    p.add_argument("--models", nargs="*", default=None, help="models for the single-point table; default: every model available here")
    p.add_argument("--sections", nargs="+", default=None, metavar="NAME", help=f"run only these sections (of: {', '.join(s.name for s in SECTIONS)}); default: all that apply")
    p.add_argument("--quick", action="store_true", help="coarser relaxation, EOS and phonon meshes, 40-step 8-atom MDs and a 4-epoch student (for tests and CI)")
    add_dft_options(p)
    # measured on 2 shared cores: 1 thread ran the demo several times faster than 2
    add_model_options(p, threads_default=1)
    add_output_options(p, "demo")


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
    from ...errors import ConfigurationError

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
    from ...workflows import UNITS
    from ..options import restore_threads, set_threads, write_summary

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
