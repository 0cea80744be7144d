"""``mlff-calc screen``: one task over every structure of a file, on the local or a Ray executor, into a results database.

    mlff-calc screen singlepoint frames.extxyz --db results.db
    mlff-calc screen relax candidates.extxyz --executor ray --workers 4 --db results.db --fmax 0.05
    mlff-calc screen phonons relaxed.extxyz --supercell 2 2 2 --executor ray --address auto
    mlff-calc screen softening dft.extxyz --db soft.db      # DFT forces stored with each frame
    mlff-calc db query results.db status=failed

Run the same command again after an interruption: finished structures are skipped.
"""

from __future__ import annotations

import time
from pathlib import Path

from .types import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, ase_index

HELP = "run singlepoint, relax, phonons or softening on many structures (local or Ray workers) into an SQLite results database"


def add_executor_options(p) -> None:
    """``--executor --address --workers --gpus-per-worker --max-retries``, shared with ``distill label``."""
    p.add_argument("--executor", default="local", choices=["local", "ray"], help="local (in this process, default) or ray (warm model workers)")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local one")
    p.add_argument("--workers", type=POSITIVE_INT, default=2, help="Ray workers, each holding the model (default 2)")
    p.add_argument("--gpus-per-worker", type=NON_NEGATIVE, default=0.0, help="GPUs each Ray worker reserves (0.5: two workers per GPU); default 0")
    p.add_argument("--max-retries", type=COUNT, default=2, help="extra tries of a chunk whose Ray worker died (default 2)")


def build_executor(args, n_atoms: int | None = None):
    """The executor of ``--executor``; the local one gets ``--threads`` or the default for chunks of ``n_atoms``."""
    from ..executors.choose import get_executor
    from .options import default_threads

    if args.executor == "local":
        return get_executor("local", threads=args.threads or default_threads(n_atoms))
    return get_executor("ray", workers=args.workers, address=args.address, gpus_per_worker=args.gpus_per_worker, max_retries=args.max_retries, threads=args.threads or 1)


def recipe(args):
    from ..errors import ConfigurationError
    from ..executors import ModelRecipe
    from .options import LAYER_OPTIONS

    other = [opt.flag for opt in LAYER_OPTIONS if opt.flag != "--softening" and getattr(args, opt.dest, None) is not None]
    if other:
        raise ConfigurationError(f"screen rebuilds the model on every worker with --softening as its only layer; {', '.join(other)} cannot be used here")
    from functools import partial

    from ..softening.layer import SofteningLayer

    layers = (partial(SofteningLayer.from_file, Path(args.softening)),) if getattr(args, "softening", None) else ()
    return ModelRecipe(str(args.model), device=args.device, dtype=args.dtype, layers=layers, compile=bool(getattr(args, "compile", False)))


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options

    p.add_argument("task", choices=["singlepoint", "relax", "phonons", "softening"], help="what to do with each structure")
    p.add_argument("structures", type=Path, help="structures (any ASE-readable file; every frame is used)")
    p.add_argument("--index", type=ase_index, default=":", help="frames to read (ASE slice syntax); default: all")
    p.add_argument("--db", type=Path, default=None, help="SQLite results database (default: <out-dir>/results.db)")
    add_executor_options(p)
    p.add_argument("--max-atoms", type=POSITIVE_INT, default=512, help="atoms per chunk at most (a chunk is one batch and one unit of retry)")
    p.add_argument("--max-structures", type=POSITIVE_INT, default=64, help="structures per chunk at most")
    p.add_argument("--fmax", type=POSITIVE, default=0.05, help="relax: force threshold (eV/Å)")
    p.add_argument("--max-steps", type=COUNT, default=200, help="relax: optimiser steps at most")
    p.add_argument("--fixed-cell", action="store_true", help="relax: keep the cell fixed")
    p.add_argument("--optimizer", default="FIRE", choices=["FIRE", "LBFGS", "BFGS"], help="relax: optimiser")
    p.add_argument("--supercell", type=POSITIVE_INT, nargs=3, default=[2, 2, 2], help="phonons: supercell multiples")
    p.add_argument("--displacement", type=POSITIVE, default=0.01, help="phonons: displacement (Å)")
    p.add_argument("--mesh", type=POSITIVE_INT, nargs=3, default=[8, 8, 8], help="phonons: q-mesh for DOS and thermodynamics")
    add_model_options(p)
    add_output_options(p, "screen")


def task_params(args) -> dict:
    if args.task == "relax":
        return {"relax_cell": not args.fixed_cell, "fmax_eV_per_A": args.fmax, "max_steps": args.max_steps, "optimizer": args.optimizer}
    if args.task == "phonons":
        return {"supercell": list(args.supercell), "displacement": args.displacement, "mesh": list(args.mesh)}
    return {}


def run(args) -> int:
    import sqlite3

    from ..errors import ConfigurationError
    from ..screening import screen
    from .db import check_database
    from .options import read_frames, show_outputs, write_summary

    started = time.time()
    db = args.db or Path(args.out_dir) / "results.db"
    check_database(db, new_ok=True)
    frames = read_frames(args.structures, args.index)
    try:
        with build_executor(args, n_atoms=min(args.max_atoms, sum(len(a) for a in frames))) as ex:
            report = screen(frames, args.task, recipe(args), db, executor=ex, params=task_params(args), max_atoms=args.max_atoms, max_structures=args.max_structures, progress=None)
    except sqlite3.DatabaseError as exc:  # e.g. the file was damaged while the run wrote to it
        raise ConfigurationError(f"results database {db}: {exc}") from None
    outputs = {"db": db}
    summary = write_summary(args, None, name=f"screen-{args.task}", started=started, outputs=outputs, results=report.to_dict())
    print(f"screen {args.task}: {report.done} done, {report.skipped} already done, {len(report.failed)} failed, {report.retried_chunks} chunk(s) retried after a worker died; job {report.job} in {db}")
    for index, error in report.failed[:10]:
        print(f"  failed {index}: {error}")
    show_outputs(outputs, summary)
    return 1 if report.failed else 0
