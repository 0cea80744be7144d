"""``mlff-calc rewire build-reference|choose``: test-time radius refinement from the command line.

    mlff-calc rewire build-reference --model run/student --out si-ref.json           # a student: its training set
    mlff-calc rewire build-reference train.extxyz --model chgnet --out chgnet-ref.json
    mlff-calc rewire choose slab.extxyz --reference si-ref.json --distance histogram
    mlff-calc md slab.extxyz --model run/student --rewire si-ref.json                # any verb, refined
    mlff-calc md slab.extxyz --model run/student --rewire si-ref.json:histogram      # another distance

A reference describes the graphs a model was trained on, at the model's native
cutoff (see :mod:`mlff_calc.rewiring`). For a distilled student the training
structures are found through the label store named in its ``student.json``; for
any other model give them as a structure file. ``--rewire REF.json[:DISTANCE]``
attaches :class:`~mlff_calc.layers.rewiring.RewiringLayer` to every verb: each
system gets its r* once, on first use, and keeps it for the whole run.
"""

from __future__ import annotations

import time
from pathlib import Path

from .types import POSITIVE, POSITIVE_INT, ase_index, device

HELP = "test-time radius refinement: build a spectrum reference for a model, or show r* for a structure (see --rewire)"

#: mlff_calc.rewiring.DISTANCES and SELF_IMAGES, spelled out so that `--help` stays cheap (a test keeps them equal)
DISTANCES = ("padded_l2", "histogram", "band_fraction")
SELF_IMAGES = ("drop", "count")


def add_arguments(p) -> None:
    from .options import add_steps

    add_steps(p, STEPS)


# build-reference --------------------------------------------------------------------------
def _add_build(p) -> None:
    from .options import add_model_options, add_output_options

    p.add_argument("structures", type=Path, nargs="?", default=None, help="in-distribution structures (any ASE-readable file); default for a student: its training split")
    p.add_argument("--index", type=ase_index, default=":", help="frames of STRUCTURES to use (ASE slice syntax); default: all")
    p.add_argument("--out", type=Path, default=None, metavar="REF.json", help="where to save the reference (JSON manifest + .npz beside it); default: <out-dir>/rewire-reference.json")
    p.add_argument("--self-images", default="drop", choices=list(SELF_IMAGES), help="periodic self-images of an atom in small cells: left out of the graph (default) or counted")
    p.add_argument("--bins", type=POSITIVE_INT, default=50, help="histogram bins over [0, 2]; default: 50")
    add_model_options(p, layers=False)
    add_output_options(p, "rewire")


def student_training_set(adapter) -> tuple[list, str]:
    """The training structures of a distilled student, found through its manifest's label store.

    The store is looked up as recorded, then relative to the student folder and its
    parent; its content hash must equal the student's ``training_data_sha256``.
    """
    from ..data.labels import MANIFEST, LabelStore
    from ..errors import ArtifactError, ConfigurationError

    manifest = getattr(adapter, "manifest", None) or {}
    recorded = (manifest.get("config") or {}).get("label_store")
    folder = Path(adapter.source or ".")
    if not recorded:
        raise ConfigurationError(f"student {folder} does not record its label store; give the training structures as STRUCTURES")
    candidates = [Path(recorded), folder / recorded, folder.parent / recorded, folder.parent / Path(recorded).name]
    found = next((c for c in candidates if (c / MANIFEST).is_file()), None)
    if found is None:
        raise ConfigurationError(f"the label store {recorded} of student {folder} is not at {', '.join(str(c) for c in candidates)}; give the training structures as STRUCTURES")
    store = LabelStore(found)
    expected = manifest.get("training_data_sha256")
    if expected and store.content_sha256() != expected:
        raise ArtifactError(
            f"label store {found} does not hold the data student {folder} was trained on (its content hash differs from the student's training_data_sha256); give the training structures as STRUCTURES"
        )
    structures = [r.atoms for r in store.records("train")]
    return structures, f"{len(structures)} training structures of label store {found}"


def _run_build(args) -> dict:
    from ..errors import ConfigurationError
    from ..rewiring import SpectrumReference
    from .options import load_calculator, read_frames

    calc = load_calculator(args, layers=False)
    adapter = calc.adapter
    if args.structures is not None:
        structures = read_frames(args.structures, args.index)
        source = f"{len(structures)} structures of {args.structures} (index {args.index})"
    elif isinstance(getattr(adapter, "manifest", None), dict):  # a distilled student (or a model built on one)
        structures, source = student_training_set(adapter)
    else:
        raise ConfigurationError(f"give the structures {adapter.model_id} was trained on (or in-distribution ones) as STRUCTURES; only a distilled student records its training set")
    if args.bins < 1:
        raise ConfigurationError(f"--bins must be at least 1, not {args.bins}")
    ref = SpectrumReference.build(structures, adapter=adapter, n_bins=args.bins, self_images=args.self_images, source=source)
    out = ref.save(Path(args.out) if args.out is not None else args.out_dir / "rewire-reference.json")
    print(f"spectrum reference of {adapter.model_id} at its native cutoff {ref.cutoff:g} Å: {source}")
    print(f"  {ref.n_structures} graphs, padded size {ref.padded_size} (padded L2 compares graphs of at most this many atoms), band fraction {ref.band_fraction:.4f}")
    print(f"  apply it with: --rewire {out}")
    results = {
        "model_id": ref.model_id,
        "cutoff_A": ref.cutoff,
        "n_structures": ref.n_structures,
        "padded_size": ref.padded_size,
        "band_fraction": ref.band_fraction,
        "self_images": ref.self_images,
        "source": source,
    }
    return {"calc": calc, "outputs": {"reference": out, "arrays": out.with_suffix(".npz")}, "results": results}


# choose -----------------------------------------------------------------------------------
def _add_choose(p) -> None:
    from .options import add_output_options, add_structure_argument

    add_structure_argument(p)
    p.add_argument("--reference", type=Path, required=True, metavar="REF.json", help="spectrum reference written by `mlff-calc rewire build-reference`")
    p.add_argument("--distance", default="padded_l2", choices=list(DISTANCES), help="spectral distance; default: padded_l2 (the paper's)")
    p.add_argument("--n-radii", type=POSITIVE_INT, default=10, help="candidate radii from 0.5 rc to rc; default: 10")
    p.add_argument("--radii", type=POSITIVE, nargs="+", default=None, metavar="R", help="explicit candidate radii (Å, within the native cutoff; rc is always added)")
    p.add_argument(
        "--no-centre", dest="centre", action="store_false", help="keep r* at the best candidate radius instead of centring it in the gap between neighbour distances (--rewire always centres)"
    )
    p.add_argument("--model", default=None, help="also check that the reference belongs to this model (name or path)")
    p.add_argument("--device", type=device, default="cpu", help="device for --model; default: cpu")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch and BLAS CPU threads")
    add_output_options(p, "rewire")


def _run_choose(args) -> dict:
    from ..rewiring import SpectrumReference, choose_radius
    from .options import default_threads, read_structure, set_threads

    atoms = read_structure(args.structure, args.index)
    set_threads(args.threads or default_threads(len(atoms)))
    calc = None
    if args.model is not None:
        import mlff_calc

        calc = mlff_calc.load(args.model, device=args.device)
        ref = SpectrumReference.load(args.reference, adapter=calc.adapter)
    else:
        ref = SpectrumReference.load(args.reference)
    choice = choose_radius(atoms, ref, distance=args.distance, radii=args.radii, n_radii=args.n_radii, centre=args.centre)
    print(f"{atoms.get_chemical_formula()} ({len(atoms)} atoms), reference of {ref.model_id} (native cutoff {ref.cutoff:g} Å), {args.distance} distance:")
    print(f"  {'radius (Å)':>10}  {'distance':>10}  {'isolated':>8}")
    for r, d, iso in zip(choice.radii, choice.distances, choice.n_isolated):
        mark = "  <- best" if r == choice.r_grid else ""
        print(f"  {r:>10.3f}  {d:>10.5f}  {iso:>8d}{mark}")
    if choice.r_star == ref.cutoff:
        print(f"r* = {choice.r_star:.3f} Å (the native cutoff)")
    else:
        lo, hi = choice.gap
        how = f"centred in ({lo:.3f}, {hi:.3f}] Å, the radii giving the same graph as {choice.r_grid:.3f} Å" if args.centre else "the best candidate"
        print(f"r* = {choice.r_star:.3f} Å ({choice.r_star / ref.cutoff:.3f} of the native cutoff; {how})")
    return {
        "calc": calc,
        "outputs": {},
        "results": {"structure": str(args.structure), "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms), "reference": str(args.reference), **choice.as_dict()},
    }


STEPS = {
    "build-reference": (_add_build, _run_build, "Laplacian-spectrum statistics of a model's training (in-distribution) graphs at its native cutoff, saved for --rewire"),
    "choose": (_add_choose, _run_choose, "print the refined radius r* of a structure and the spectral distance at every candidate radius"),
}


def run(args) -> int:
    from .options import show_outputs, write_summary

    started = time.time()
    done = args._step(args)
    units = {"length": "Å", "distance": "dimensionless"}
    summary = write_summary(args, done["calc"], name=f"rewire-{args.step}", started=started, outputs=done["outputs"], results=done["results"], units=units)
    show_outputs(done["outputs"], summary)
    return 0
