"""``mlff-calc ltau build``: an LTAU uncertainty index from a training run, and ``--ltau`` for every verb.

    mlff-calc ltau build runs/si-student --out si-ltau                 # a student folder (distill)
    mlff-calc ltau build runs/nacl-ft --out nacl-ltau --burn-in 5      # a fine-tune folder
    mlff-calc md si.cif --model runs/si-student --ltau si-ltau         # any verb, with uncertainties

RUN_DIR is the output folder of a training run: it holds ``error_log.npz`` (every
training atom's force error at every epoch) and the trained model (``student.json``
of ``mlff_calc.distill.train_student`` or ``finetune.json`` of ``mlff_calc.finetune``).
The model defaults to RUN_DIR itself; ``--model`` names it when it lives elsewhere.

Training structures (the error log refers to them by index):

- student runs: the label store recorded in ``train-history.json`` (``--labels`` overrides);
- fine-tune runs: the ``train_source`` recorded in ``finetune.json`` (``--train-data``
  overrides), and its content hash must equal the recorded ``data_sha256``.

Data specs (``--train-data``, ``--calibration``) are written as the fine-tune
manifest writes sources: ``FILE`` (any ASE-readable file with forces),
``DISP.yaml + FORCE_SETS`` (phonopy), either followed by ``[i,j,...]`` to pick
structures; or a label-store folder (its "valid" split is used for calibration).
Calibration defaults to the label store (students) or the fine-tune's validation
source when it differs from the training source; ``--no-calibration`` skips it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from .types import COUNT, FRACTION, POSITIVE_INT

HELP = "build an LTAU uncertainty index (per-atom force-error distributions) from a training run; attach it with --ltau"

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")
    sp = steps.add_parser("build", help="build (and calibrate) an index from RUN_DIR's error log", description=HELP)
    _add_build(sp)
    sp.set_defaults(_parser=sp)


def _add_build(p) -> None:
    from .options import add_model_options, add_output_options

    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="training run folder holding error_log.npz (a student or fine-tune folder)")
    p.add_argument("--out", type=Path, default=None, metavar="INDEX_DIR", help="where to write the index; default: <out-dir>/ltau")
    p.add_argument("--labels", type=Path, default=None, help="label store of a student run; default: the one in RUN_DIR/train-history.json")
    p.add_argument("--train-data", default=None, metavar="SPEC", help="training data of a fine-tune run; default: train_source in RUN_DIR/finetune.json")
    p.add_argument("--calibration", default=None, metavar="SPEC", help="held-out labelled data for calibrating k, the scale and the 90 %% interval")
    p.add_argument("--no-calibration", action="store_true", help="store the given --k and scale 1 without calibrating")
    p.add_argument("--n-bins", type=POSITIVE_INT, default=100, help="histogram bins per atom; default: 100")
    p.add_argument("--burn-in", type=COUNT, default=0, help="first epochs of the error log to drop; default: 0")
    p.add_argument("--k", type=POSITIVE_INT, default=10, help="neighbours when not calibrating; default: 10")
    p.add_argument("--ks", default="1,2,5,10,20,50", help="candidate k for calibration; default: 1,2,5,10,20,50")
    p.add_argument("--level", type=FRACTION, default=0.9, help="coverage the interval is calibrated to; default: 0.9")
    p.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"], help="exact (flat) or approximate (hnsw, ivf) search; default: flat")
    p.add_argument("--per-element", action="store_true", help="search only training atoms of the same element")
    p.add_argument("--hnsw-m", type=POSITIVE_INT, default=32, help="HNSW links per node; default: 32")
    p.add_argument("--ef-construction", type=POSITIVE_INT, default=200, help="HNSW build breadth; default: 200")
    p.add_argument("--ef-search", type=POSITIVE_INT, default=64, help="HNSW search breadth; default: 64")
    p.add_argument("--nlist", type=POSITIVE_INT, default=None, help="IVF cells; default: sqrt(training atoms)")
    p.add_argument("--nprobe", type=POSITIVE_INT, default=8, help="IVF cells scanned per query; default: 8")
    p.add_argument(
        "--exact-search",
        default="auto",
        choices=["auto", "faiss", "kdtree", "blocked"],
        help="search of a flat index: faiss, a k-d tree in principal axes, or blocked matrix products (auto: k-d tree up to 64 descriptor dimensions, blocked above)",
    )
    add_model_options(p, layers=False)
    p.set_defaults(model=None)
    for action in p._actions:
        if action.dest == "model":
            action.help = "the trained model; default: RUN_DIR itself"
    add_output_options(p, "ltau")


# data specs --------------------------------------------------------------------------


def read_spec(spec: str):
    """A DFTDataset from ``FILE``, ``DISP.yaml + FORCE_SETS`` or either with ``[i,j,...]``."""
    from ..errors import ConfigurationError
    from ..softening import read_dft_structures, read_phonopy_dataset

    spec = str(spec).strip()
    pick = None
    m = re.fullmatch(r"(.*)\[([0-9,\s]*)\]", spec)
    if m:
        spec, pick = m.group(1).strip(), [int(i) for i in m.group(2).split(",") if i.strip()]
    parts = [s.strip() for s in spec.split(" + ")]
    if len(parts) > 2 or not all(parts):
        raise ConfigurationError(f"cannot read data spec {spec!r}: give FILE or 'DISP.yaml + FORCE_SETS', optionally followed by [i,j,...]")
    for part in parts:
        if not Path(part).exists():
            raise ConfigurationError(f"data file {part} (from spec {spec!r}) does not exist")
    if len(parts) == 2 or re.search(r"phonopy.*\.yaml", Path(parts[0]).name):
        dataset = read_phonopy_dataset(parts[0], parts[1] if len(parts) == 2 else None)
    else:
        dataset = read_dft_structures(parts[0])
    if pick is not None:
        if any(not 0 <= i < len(dataset) for i in pick):
            raise ConfigurationError(f"spec {spec!r} picks structures {pick} of {len(dataset)}")
        dataset = dataset.subset(pick)
    return dataset


def calibration_data(spec):
    """Label store folder, or a DFT data spec as ``[(atoms, forces)]``."""
    from ..data.labels import LabelStore

    if Path(str(spec)).is_dir():
        return LabelStore(Path(spec))
    return [(s.atoms, s.forces) for s in read_spec(spec).structures]


def run_inputs(args) -> dict:
    """What RUN_DIR holds: ``{kind, model, training, calibration, source}``."""
    from ..errors import ConfigurationError

    run = Path(args.run_dir)
    if not (run / "error_log.npz").is_file():
        raise ConfigurationError(f"{run} holds no error_log.npz; give the output folder of a student or fine-tune training run")
    model = args.model or str(run)
    if (run / "student.json").is_file() or (run / "train-history.json").is_file():
        labels = args.labels
        if labels is None:
            from ..artifacts import read_json

            if not (run / "train-history.json").is_file():
                raise ConfigurationError(f"{run} holds no train-history.json naming the label store; pass --labels")
            try:
                labels = read_json(run / "train-history.json", kind="training history")["config"]["label_store"]
            except (KeyError, TypeError) as exc:
                raise ConfigurationError(f"{run}/train-history.json does not name the label store; pass --labels") from exc
        labels = Path(labels)
        if not labels.is_dir():
            raise ConfigurationError(f"label store {labels} of the student run does not exist; pass --labels")
        cal = None if args.no_calibration else (calibration_data(args.calibration) if args.calibration else str(labels))
        return {"kind": "student", "model": model, "training": labels, "calibration": cal, "source": str(labels)}
    if (run / "finetune.json").is_file():
        from ..finetune import dataset_sha256, read_manifest

        manifest = read_manifest(run)
        config = manifest.get("config", {})
        spec = args.train_data or config.get("train_source")
        if not spec:
            raise ConfigurationError(f"{run}/finetune.json records no training source; pass --train-data")
        train = read_spec(spec)
        if dataset_sha256(train) != manifest.get("data_sha256"):
            raise ConfigurationError(f"training data {spec!r} is not the data {run} was fine-tuned on (content hash differs from finetune.json); pass the right --train-data")
        cal = None
        if not args.no_calibration:
            valid = args.calibration or (config.get("valid_source") if config.get("valid_source") != config.get("train_source") else None)
            if valid:
                cal = calibration_data(valid)
            else:
                log.warning("no held-out data for calibration (the fine-tune validated on its training set); pass --calibration")
        return {"kind": "finetune", "model": model, "training": [s.atoms for s in train.structures], "calibration": cal, "source": spec}
    raise ConfigurationError(f"{run} holds neither student.json nor finetune.json; give --model and the training data explicitly")


# running ---------------------------------------------------------------------------


def _build(args) -> dict:
    from ..errors import ConfigurationError
    from ..ltau import build_ltau
    from .options import load_calculator

    inputs = run_inputs(args)
    args.model = inputs["model"]
    calc = load_calculator(args, layers=False)
    try:
        ks = tuple(int(k) for k in str(args.ks).split(","))
    except ValueError as exc:
        raise ConfigurationError(f"--ks must be comma-separated integers, not {args.ks!r}") from exc
    out = Path(args.out) if args.out is not None else Path(args.out_dir) / "ltau"
    ltau = build_ltau(
        calc.adapter,
        inputs["training"],
        Path(args.run_dir) / "error_log.npz",
        out,
        n_bins=args.n_bins,
        burn_in=args.burn_in,
        k=args.k,
        index_kind=args.index,
        per_element=args.per_element,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        ivf_nlist=args.nlist,
        ivf_nprobe=args.nprobe,
        exact_search=args.exact_search,
        calibration=inputs["calibration"],
        ks=ks,
        level=args.level,
    )
    cal = ltau.calibration
    print(f"LTAU index of {ltau.index.ntotal} training atoms ({inputs['kind']} run {args.run_dir}, model {ltau.model_id}) in {out}")
    if cal.coverage is not None:
        print(
            f"  calibrated on {cal.n_atoms} held-out atoms: k = {cal.k}, scale {cal.scale:.3f}, {100 * cal.level:g} % interval coverage {cal.coverage:.3f} (uncalibrated {cal.coverage_uncalibrated:.3f})"
        )
    else:
        print(f"  not calibrated: k = {cal.k}, scale 1")
    print(f"  attach it with: --model {args.model} --ltau {out}")
    results = {"run_kind": inputs["kind"], "training_data": inputs["source"], "n_atoms": ltau.index.ntotal, "index": ltau.index.describe(), "calibration": cal.as_dict()}
    return {"calc": calc, "outputs": {"index": out}, "results": results}


def run(args) -> int:
    from .options import show_outputs, write_summary

    started = time.time()
    done = _build(args)
    summary = write_summary(args, done["calc"], name=f"ltau-{args.step}", started=started, outputs=done["outputs"], results=done["results"])
    show_outputs(done["outputs"], summary)
    return 0
