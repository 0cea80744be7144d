"""``mlff-calc``: each verb lives in its own module and wraps one workflow."""

from __future__ import annotations

import importlib
import logging
import sys

from .._version import __version__
from ..errors import MLFFError
from .types import Parser, UsageError

#: verb -> module under mlff_calc.cli; imported only when the verb runs
VERBS = {
    "demo": "demo",
    "distill": "distill",
    "models": "models",
    "singlepoint": "singlepoint",
    "relax": "relax",
    "eos": "eos",
    "phonons": "phonons",
    "md": "md",
    "surface": "surface",
    "defect": "defect",
    "softening": "softening",
    "ttt": "ttt",
    "screen": "screen",
    "db": "db",
    "ltau": "ltau",
    "rewire": "rewire",
}


def build_parser() -> Parser:
    parser = Parser(prog="mlff-calc", description="ASE calculators for machine-learning force fields")
    parser.add_argument("--version", action="version", version=f"mlff-calc {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module in VERBS.items():
        mod = importlib.import_module(f"{__package__}.{module}")
        p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def setup_logging(verbosity: int) -> None:
    """Attach a handler to the ``mlff_calc`` logger only, never the root logger."""
    logger = logging.getLogger("mlff_calc")
    if not any(getattr(h, "_mlff_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._mlff_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING - 10 * min(verbosity, 2))


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    args._argv = argv
    setup_logging(args.verbose)
    try:
        from ._warnings import quiet_third_party_warnings
        from .options import apply_config, check_outputs

        args = apply_config(args, args._parser)
        check_outputs(args)
        with quiet_third_party_warnings():
            return int(args._run(args) or 0)
    except MLFFError as exc:
        print(f"mlff-calc {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system error on an output or input: name the file, no traceback
        print(f"mlff-calc {args.verb}: error: {describe_os_error(exc, getattr(args, 'out_dir', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlff-calc {args.verb}: interrupted", file=sys.stderr)
        return 130


def describe_os_error(exc: OSError, out_dir=None) -> str:
    """``FILE: reason``; without a file name (a write to an open file), the output folder stands in."""
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{exc.strerror or exc}" + (f" (while writing in {out_dir})" if out_dir is not None else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
