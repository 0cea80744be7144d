"""``mlff-calc ttt train|adapt``: two-head students and test-time training with a cheap prior.

    mlff-calc ttt train labels/ --prior emt --out ttt-student/
    mlff-calc ttt adapt surfaces.extxyz --model ttt-student/ --out adapted/
    mlff-calc md start.extxyz --model ttt-student/ --ttt adapted/          # any verb, adapted weights
    mlff-calc relax slab.extxyz --model ttt-student/ --ttt slabs.extxyz    # adapt on these frames first

``labels/`` is a distillation label store (``mlff-calc distill label``). ``--ttt``
takes a folder written by ``ttt adapt`` or a structure file to adapt on at start-up.
"""

from __future__ import annotations

import time
from pathlib import Path

from .types import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, UNIT_INTERVAL, device

HELP = "train a two-head student with a cheap physical prior, or adapt one at test time (see --ttt)"
PRIOR_NAMES = ("gfn1-xtb", "gfn2-xtb", "emt", "lj", "morse")  # mlff_calc.ttt.priors.PRIORS (a test keeps them equal)


def add_arguments(p) -> None:
    from .options import add_steps

    add_steps(p, STEPS)


def _add_adapt_config(p) -> None:
    p.add_argument("--steps", type=POSITIVE_INT, default=500, help="SGD steps; default: 500 (the paper's)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="structures per step; default: 32")
    p.add_argument("--lr", type=POSITIVE, default=1e-5, help="learning rate; default: 1e-5")
    p.add_argument("--momentum", type=UNIT_INTERVAL, default=0.9)
    p.add_argument("--weight-decay", type=NON_NEGATIVE, default=1e-3)


def adapt_config(args) -> dict:
    return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay}


def _add_train(p) -> None:
    from .options import add_output_options

    p.add_argument("labels", type=Path, help="label store folder of teacher labels (mlff-calc distill label)")
    p.add_argument("--prior", default="emt", choices=PRIOR_NAMES, help="cheap physical prior; default: emt")
    p.add_argument("--prior-params", default=None, metavar="JSON", help='prior parameters, e.g. \'{"sigma": 2.1, "epsilon": 0.1}\' for lj')
    p.add_argument("--out", type=Path, required=True, help="folder for the two-head student")
    p.add_argument("--prior-epochs", type=COUNT, default=30)
    p.add_argument("--reference-epochs", type=COUNT, default=30)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4)
    p.add_argument("--lr", type=POSITIVE, default=5e-3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=POSITIVE_INT, default=1)
    p.add_argument("--seed", type=COUNT, default=0)
    add_output_options(p, "ttt")


def _add_adapt(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p, help="structures to adapt on (all frames by default)")
    p.set_defaults(index=":")
    p.add_argument("--out", type=Path, required=True, help="folder for the adapted weights (use with --ttt)")
    _add_adapt_config(p)
    add_model_options(p, layers=False, threads_default=1)
    add_output_options(p, "ttt")


def _run_train(args) -> int:
    import json

    from ..errors import ConfigurationError
    from ..ttt import train_ttt_student
    from .options import set_threads, write_summary

    started = time.time()
    set_threads(args.threads)
    try:
        params = json.loads(args.prior_params) if args.prior_params else {}
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--prior-params is not valid JSON: {exc}") from exc
    result = train_ttt_student(
        args.labels,
        {"name": args.prior, "params": params},
        dtype=args.dtype,
        device=args.device,
        prior_epochs=args.prior_epochs,
        reference_epochs=args.reference_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out_dir=args.out,
    )
    test = result.metrics["reference_test"]
    write_summary(args, name="ttt-train", started=started, outputs={"student": args.out}, results={"metrics": result.metrics})
    print(
        f"two-head student in {args.out}: test force MAE {test.get('force_mae', float('nan')):.4f} eV/Å against the teacher, prior force MAE {result.metrics['prior_valid']['force_mae']:.4f} eV/Å ({result.wall_time_s:.0f} s)"
    )
    return 0


def _run_adapt(args) -> int:
    from ..layers.ttt import TTTLayer
    from ..plots import loss_curve
    from .options import load_calculator, read_frames, write_summary

    started = time.time()
    frames = read_frames(args.structure, args.index)
    calc = load_calculator(args, layers=False, n_atoms=max(len(a) for a in frames))
    layer = TTTLayer(**adapt_config(args))
    layer.bind(calc.adapter)
    history = layer.adapt(frames)
    layer.save(args.out)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    plot = loss_curve(Path(args.out_dir) / "ttt-prior-loss.png", history["step_losses"], ylabel="prior loss (batch)", title=f"test-time training on {len(frames)} structures")
    results = {k: v for k, v in history.items() if k != "step_losses"}
    summary = write_summary(args, calc, name="ttt-adapt", started=started, outputs={"adapted": args.out, "plot": plot}, results=results)
    print(
        f"adapted on {len(frames)} structures in {history['wall_time_s']:.1f} s: prior loss {history['prior_loss_initial']:.4g} -> {history['prior_loss_final']:.4g}; weights in {args.out} (summary {summary})"
    )
    return 0


def run(args) -> int:
    return args._step(args)


STEPS = {
    "train": (_add_train, _run_train, "train a two-head student: prior phase on the prior's labels, reference phase on the teacher's"),
    "adapt": (_add_adapt, _run_adapt, "label structures with the model's prior and adapt its backbone; save the adapted weights"),
}
