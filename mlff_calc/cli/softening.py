"""``mlff-calc softening measure|fit``: how softened a model is against DFT forces, and the correction scale.

    mlff-calc softening measure --dft dft.extxyz
    mlff-calc softening measure --phonopy-disp phonopy_disp.yaml --force-sets FORCE_SETS
    mlff-calc softening fit --phonopy-disp phonopy_disp.yaml --force-sets FORCE_SETS --out nacl-fit.json
    mlff-calc phonons nacl.cif --softening nacl-fit.json           # any verb, with the correction applied
    mlff-calc softening correct --phonopy-disp phonopy_disp.yaml --force-sets FORCE_SETS --index 0 --out nacl-corr
    mlff-calc phonons nacl.cif --model nacl-corr                    # the correction correct chose

DFT data: ``--dft`` is any ASE-readable file with DFT forces (calculator results or
the per-atom arrays dft_forces / forces / REF_forces, or --forces-key); phonopy data
is a displacement yaml with its FORCE_SETS (or a phonopy_params.yaml holding the
forces). For phonopy data the model's forces on the undisplaced supercell are
subtracted before comparing (``--subtract-reference auto``).
"""

from __future__ import annotations

import time
from pathlib import Path

from .types import NON_NEGATIVE, ase_index, index_list

HELP = "measure a model's force softening against DFT, fit the correction scale c (see --softening), or choose a correction (correct)"

SUBTRACT = {"auto": None, "on": True, "off": False}
#: mlff_calc.softening.MODES and PAPER_WEIGHTS, spelled out so that `--help` stays cheap (a test keeps them equal)
MODES = ("reference", "total")
PAPER_WEIGHTS = {"energy_weight": 0.1, "force_weight": 100.0, "stress_weight": 0.1}
#: mlff_calc.softening.correct.METHODS (a test keeps them equal)
CORRECT_METHODS = ("auto", "raw", "scalar", "elements")


def add_arguments(p) -> None:
    from .options import add_steps

    add_steps(p, STEPS)


def add_dft_options(p) -> None:
    p.add_argument("--dft", type=Path, default=None, metavar="FILE", help="DFT-labelled structures (any ASE-readable file with forces)")
    p.add_argument("--dft-index", type=ase_index, default=":", help="frames of --dft to use (ASE slice syntax); default: all")
    p.add_argument("--forces-key", default=None, help="per-atom array holding the DFT forces in --dft (default: dft_forces, forces, REF_forces)")
    p.add_argument("--phonopy-disp", type=Path, default=None, metavar="YAML", help="phonopy displacement yaml (phonopy_disp.yaml, or phonopy_params.yaml with forces)")
    p.add_argument("--force-sets", type=Path, default=None, metavar="FILE", help="phonopy FORCE_SETS for --phonopy-disp")
    p.add_argument("--subtract-reference", default="auto", choices=sorted(SUBTRACT), help="subtract the model's forces on the undisplaced supercell; auto: for phonopy data")


def _add_measure(p) -> None:
    from .options import add_model_options, add_output_options

    add_dft_options(p)
    add_model_options(p)
    add_output_options(p, "softening")


def _add_fit(p) -> None:
    from .options import add_model_options, add_output_options

    add_dft_options(p)
    p.add_argument("--out", type=Path, default=None, metavar="FIT.json", help="where to save the fit (JSON); default: <out-dir>/softening-fit.json")
    p.add_argument("--mode", default="reference", choices=list(MODES), help="energy the layer scales: relative to the model's per-element references (default) or total")
    p.add_argument("--force-weight", type=NON_NEGATIVE, default=1.0, help="weight of the force term; default: 1")
    p.add_argument("--energy-weight", type=NON_NEGATIVE, default=0.0, help="weight of the energy term (eV/atom); default: 0")
    p.add_argument("--stress-weight", type=NON_NEGATIVE, default=0.0, help="weight of the stress term (GPa); default: 0")
    p.add_argument("--paper-weights", action="store_true", help="use Deng et al.'s weights: " + ", ".join(f"{k.removesuffix('_weight')} {v:g}" for k, v in PAPER_WEIGHTS.items()))
    p.add_argument("--allow-mixed", action="store_true", help="fit structures of different compositions together")
    add_model_options(p)
    add_output_options(p, "softening")


def _add_correct(p) -> None:
    from .options import add_model_options, add_output_options

    add_dft_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the corrected model (load it with --model DIR)")
    p.add_argument("--method", default="auto", choices=list(CORRECT_METHODS), help="auto: the candidate with the lowest held-out force MAE (raw when nothing beats it)")
    p.add_argument("--index", type=index_list, default=None, help="structures of the data to fit on, comma-separated (e.g. 0 or 0,3); default: all")
    add_model_options(p)
    add_output_options(p, "softening")


def _run_correct(args) -> dict:
    from ..errors import ConfigurationError
    from ..softening.correct import correct
    from .options import LAYER_OPTIONS, load_calculator

    attached = [opt.flag for opt in LAYER_OPTIONS if getattr(args, opt.dest, None) is not None]
    if attached:
        raise ConfigurationError(f"softening correct corrects the bare model; drop {', '.join(attached)}")
    dataset = read_dataset(args)
    if args.index is not None:
        picked = args.index
        bad = [i for i in picked if not 0 <= i < len(dataset)]
        if bad:
            raise ConfigurationError(f"--index {bad[0]} is outside the {len(dataset)} structures of {dataset.source}")
        dataset = dataset.subset(picked)
    calc = load_calculator(args, layers=False)
    corrected = correct(calc, dataset, method=args.method, subtract_reference=SUBTRACT[args.subtract_reference], out=args.out)
    info = corrected.parameters["softening_correction"]
    print(f"softening correction of {calc.adapter.model_id} on {len(dataset)} structure(s), {info['cv_folds']}")
    print("| candidate | held-out force MAE (eV/Å) |\n|---|---|")
    for name, score in info["cv_mae"].items():
        print(f"| {name} | {score:.5f} |")
    layer = corrected.layers[0].describe() if corrected.layers else {}
    print(f"chosen: {info['candidate']} {layer.get('scales', layer.get('c', ''))}")
    print(f"  use it with: --model {args.out}")
    return {"calc": calc, "outputs": {"correction": args.out}, "results": info}


def read_dataset(args):
    """The DFT dataset named by ``--dft`` or ``--phonopy-disp [--force-sets]``."""
    from ..errors import ConfigurationError
    from ..softening import read_dft_structures, read_phonopy_dataset

    if (args.dft is None) == (args.phonopy_disp is None):
        raise ConfigurationError("give DFT data with either --dft FILE or --phonopy-disp YAML [--force-sets FILE], not both")
    if args.force_sets is not None and args.phonopy_disp is None:
        raise ConfigurationError("--force-sets belongs to --phonopy-disp")
    if args.dft is not None:
        return read_dft_structures(args.dft, index=args.dft_index, forces_key=args.forces_key)
    return read_phonopy_dataset(args.phonopy_disp, args.force_sets)


def force_components(calc, dataset, subtract_reference):
    """(model, DFT) force components (eV/Å), flattened, with the same residual-force rule as measure/fit."""
    import numpy as np

    from ..softening.measure import _pairs, _resolve_subtract

    pairs = _pairs(calc, dataset, subtract=_resolve_subtract(dataset, subtract_reference), stress=False)
    return np.concatenate(pairs.model_forces), np.concatenate(pairs.dft_forces)


def _run_measure(args) -> dict:
    from ..plots import force_parity
    from ..softening import measure
    from .options import load_calculator

    dataset = read_dataset(args)
    calc = load_calculator(args, n_atoms=max(len(s.atoms) for s in dataset.structures))
    subtract = SUBTRACT[args.subtract_reference]
    report = measure(calc, dataset, subtract_reference=subtract)
    fm, fd = force_components(calc, dataset, subtract)
    s = report.pooled.s
    plot = force_parity(
        args.out_dir / "softening-parity.png", fd, {"model": fm, f"model / s  (s = {s:.3f})": fm / s}, title=f"{calc.adapter.model_id} vs DFT: {Path(dataset.source.split(' + ')[0]).name}"
    )
    print(report.markdown())
    p = report.pooled
    print(f"\npooled over {p.n_components} force components: s = {p.s:.4f} (s < 1: softened), MAE {p.mae:.5f} eV/Å, cMAE (softening divided out) {p.cmae:.5f} eV/Å")
    if report.subtract_reference:
        print("model forces on the undisplaced supercell were subtracted (residual forces)")
    return {"calc": calc, "outputs": {"plot": plot}, "results": report.to_dict()}


def _run_fit(args) -> dict:
    from ..errors import ConfigurationError
    from ..plots import force_parity
    from ..softening import fit_scale
    from .options import LAYER_OPTIONS, load_calculator

    attached = [opt.flag for opt in LAYER_OPTIONS if getattr(args, opt.dest, None) is not None]
    if attached:
        raise ConfigurationError(f"softening fit corrects the bare model; drop {', '.join(attached)}")
    weights = dict(PAPER_WEIGHTS) if args.paper_weights else {"energy_weight": args.energy_weight, "force_weight": args.force_weight, "stress_weight": args.stress_weight}
    dataset = read_dataset(args)
    calc = load_calculator(args, n_atoms=max(len(s.atoms) for s in dataset.structures))
    subtract = SUBTRACT[args.subtract_reference]
    fit = fit_scale(calc, dataset, mode=args.mode, subtract_reference=subtract, allow_mixed=args.allow_mixed, **weights)
    out = Path(args.out) if args.out is not None else args.out_dir / "softening-fit.json"
    fit.save(out)
    fm, fd = force_components(calc, dataset, subtract)
    plot = force_parity(args.out_dir / "softening-fit-parity.png", fd, {"model": fm, f"c × model  (c = {fit.c:.3f})": fit.c * fm}, title=f"{fit.model_id} vs DFT, {fit.chemical_system}")
    print(f"softening fit of {fit.model_id} on {fit.n_structures} structures ({fit.chemical_system}, {fit.n_components} force components)")
    print(f"  c = {fit.c:.4f} (mode {fit.mode}; weights E {fit.energy_weight:g} / F {fit.force_weight:g} / S {fit.stress_weight:g})")
    print(f"  s = {fit.s:.4f}, force MAE {fit.mae:.5f} -> {fit.mae_corrected:.5f} eV/Å with c, cMAE {fit.cmae:.5f} eV/Å")
    print(f"  apply it with: --softening {out}")
    results = fit.to_dict()
    return {"calc": calc, "outputs": {"fit": out, "plot": plot}, "results": results}


STEPS = {
    "measure": (_add_measure, _run_measure, "compare model and DFT forces: softening scale s, MAE and cMAE per structure and pooled, parity plot"),
    "fit": (_add_fit, _run_fit, "fit the correction scale c on DFT data and save it for --softening"),
    "correct": (_add_correct, _run_correct, "choose and fit the correction these DFT data support (raw, scalar or per-element, by cross-validation); save a model folder for --model"),
}


def run(args) -> int:
    from ..softening import UNITS
    from .options import show_outputs, write_summary

    started = time.time()
    done = args._step(args)
    summary = write_summary(args, done["calc"], name=f"softening-{args.step}", started=started, outputs=done["outputs"], results=done["results"], units=UNITS)
    show_outputs(done["outputs"], summary)
    return 0
