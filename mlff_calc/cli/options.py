"""Options shared by every verb, spelled the same everywhere, and YAML config files."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .._runtime import default_threads, restore_threads, set_threads  # noqa: F401 (the verbs' thread control)
from ..data.structure_files import read_frames, read_structure  # noqa: F401 (the verbs' readers)
from ..errors import ConfigurationError
from .types import POSITIVE_INT, ase_index, coerce, device


def add_model_options(p: argparse.ArgumentParser, *, layers: bool = True, threads_default: int | None = None) -> None:
    """``--model --device --dtype --threads --config`` and, with ``layers``, every option of :data:`LAYER_OPTIONS`."""
    p.add_argument("--model", default="chgnet", help="model name or path (see `mlff-calc models`); default: chgnet")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu or cuda[:N]; default: auto")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: the model family's own")
    p.add_argument(
        "--threads",
        type=POSITIVE_INT,
        default=threads_default,
        help="torch and OpenBLAS CPU threads for this run; default: " + ("chosen from the structure's size (see README, Threads)" if threads_default is None else str(threads_default)),
    )
    p.add_argument("--config", type=Path, default=None, help="YAML file whose keys mirror these options")
    p.add_argument("--compile", action="store_true", help="distilled students only: run energy/forces/stress through one torch.compile'd graph (2-3x faster calls after a compile of tens of seconds)")
    if layers:
        add_layer_options(p)


def add_steps(p: argparse.ArgumentParser, steps: dict) -> None:
    """Sub-commands of a verb: ``steps`` maps a name to ``(add_arguments, run, help)``; ``args._step`` is the run."""
    sub = p.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (add, run_fn, text) in steps.items():
        sp = sub.add_parser(name, help=text, description=text)
        add(sp)
        sp.set_defaults(_step=run_fn, _parser=sp)


# calculator layers ----------------------------------------------------------------


@dataclass(frozen=True)
class LayerOption:
    """A command-line flag that attaches one calculator layer, built by ``from_option(value, verb=...)`` of its class.

    The class is named by its import path (``module:Class``), so building the parser
    (``--help``) imports no layer.
    """

    flag: str
    metavar: str
    help: str
    layer: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def layer_class(self) -> type:
        module, name = self.layer.split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, value, args):
        return self.layer_class().from_option(str(value), verb=getattr(args, "verb", None))


#: Layers the command line can attach, in the order of the calculator's layer list.
#: Later layers (``--ltau``, ``--rewire``, ``--ttt``) go before softening, which must
#: stay last so it scales the model's output only (see mlff_calc.softening.layer).
LAYER_OPTIONS: tuple[LayerOption, ...] = (
    LayerOption("--ttt", "ADAPTED_DIR|FRAMES", "test-time training of a two-head model: weights saved by `mlff-calc ttt adapt`, or a structure file to adapt on first", "mlff_calc.ttt.layer:TTTLayer"),
    LayerOption(
        "--rewire",
        "REF.json[:DISTANCE]",
        "refine the graph cutoff per system with the spectrum reference saved by `mlff-calc rewire build-reference` (DISTANCE: padded_l2, histogram or band_fraction)",
        "mlff_calc.rewiring.layer:RewiringLayer",
    ),
    LayerOption("--ltau", "INDEX_DIR", "add per-atom force uncertainties from the LTAU index built by `mlff-calc ltau build`", "mlff_calc.ltau.layer:LTAULayer"),
    LayerOption("--softening", "FIT.json", "attach the softening correction saved by `mlff-calc softening fit`", "mlff_calc.softening.layer:SofteningLayer"),
)


def add_layer_options(p: argparse.ArgumentParser) -> None:
    for opt in LAYER_OPTIONS:
        p.add_argument(opt.flag, type=Path, default=None, metavar=opt.metavar, help=opt.help)


def build_layers(args) -> list:
    """The layers asked for on the command line (or in ``--config``), in :data:`LAYER_OPTIONS` order."""
    return [opt.build(getattr(args, opt.dest), args) for opt in LAYER_OPTIONS if getattr(args, opt.dest, None) is not None]


# structures -----------------------------------------------------------------------


def add_structure_argument(p: argparse.ArgumentParser, name: str = "structure", help: str = "input structure (any ASE-readable file: extxyz, cif, POSCAR, ...)", **kwargs) -> None:
    p.add_argument(name, type=Path, help=help, **kwargs)
    p.add_argument("--index", type=ase_index, default="-1", help="frame to read from a multi-frame file (ASE index); default: the last")


def add_output_options(p: argparse.ArgumentParser, default_dir: str) -> None:
    p.add_argument("--out-dir", type=Path, default=Path("mlff_results") / default_dir, help="folder for every output file")


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill options from ``--config``; flags given on the command line win.

    Unknown keys are rejected; values are converted and checked by the option's
    own type, choices and checks (mlff_calc.cli.types.coerce).
    """
    if getattr(args, "config", None) is None:
        return args
    try:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read config {args.config}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"config {args.config} must be a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config") and not a.dest.startswith("_") and not isinstance(a, argparse._SubParsersAction)}
    for key, value in data.items():
        attr = str(key).replace("-", "_")
        if attr not in actions:
            raise ConfigurationError(f"config {args.config}: unknown option '{key}'; valid: {', '.join(sorted(actions))}")
        action = actions[attr]
        try:
            value = coerce(action, value)
        except argparse.ArgumentTypeError as exc:
            raise ConfigurationError(f"config {args.config}: {key} ({(action.option_strings or [action.dest])[-1]}) {exc}") from None
        if getattr(args, attr) == action.default:
            setattr(args, attr, value)
    return args


def check_outputs(args) -> None:
    """Before any work: the output folder (``--out-dir``) and the ``--out`` target (and ``screen --db``) must be writable."""
    for attr in ("out_dir", "out", "db") if getattr(args, "verb", None) == "screen" else ("out_dir", "out"):
        target = getattr(args, attr, None)
        if target is None or not isinstance(target, Path):
            continue
        folder = target if attr == "out_dir" or target.is_dir() else target.parent
        writable_folder(folder, f"--{attr.replace('_', '-')} {target}")


def writable_folder(folder: Path, what: str) -> None:
    """Raise ConfigurationError unless files can be created in ``folder`` (or, when missing, its nearest existing parent)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigurationError(f"{what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mlff-calc-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigurationError(f"{what}: cannot write in {existing} ({exc.strerror or exc})") from None


def load_calculator(args, *, layers: bool = True, n_atoms: int | None = None):
    """The calculator of ``--model/--device/--dtype`` with the layers of :data:`LAYER_OPTIONS` attached.

    ``layers=False`` gives the bare model (e.g. to fit a correction of it). Also applies
    ``--threads``, or without it :func:`default_threads` for graphs of ``n_atoms``.
    """
    import mlff_calc

    threads = getattr(args, "threads", None)
    set_threads(default_threads(n_atoms) if threads is None else threads)
    calc = mlff_calc.load(args.model, device=args.device, dtype=args.dtype, layers=build_layers(args) if layers else ())
    if getattr(args, "compile", False):
        from ..models.registry import compile_student

        compile_student(calc.adapter, "--compile")
    return calc


def run_summary(args, calc=None, *, started: float, outputs: dict, results: dict, units: dict | None = None) -> dict:
    """A plain-data record of one run: command, config, versions, device, timings, outputs."""
    from importlib import metadata

    import torch

    import mlff_calc

    versions = {"mlff_calc": mlff_calc.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("ase", "chgnet", "matgl", "mace-torch", "phonopy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
    summary = {
        "command": " ".join(["mlff-calc", *getattr(args, "_argv", sys.argv[1:])]),
        "config": config,
        "versions": versions,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 3),
        "outputs": {k: str(v) for k, v in outputs.items()},
        "results": results,
    }
    if units:
        summary["units"] = units
    if calc is not None and hasattr(calc, "adapter"):
        summary["model"] = {
            "id": calc.adapter.model_id,
            "sha256": calc.adapter.sha256,
            "source": calc.adapter.source,
            "device": str(calc.adapter.device),
            "dtype": str(calc.adapter.dtype).removeprefix("torch."),
        }
        summary["model"]["layers"] = [layer.describe() for layer in getattr(calc, "layers", ())]
    return summary


def write_summary(args, calc=None, *, name: str, started: float, outputs: dict, results: dict, units: dict | None = None) -> Path:
    """Write ``<out-dir>/<name>-summary.json`` (see :func:`run_summary`) and return its path."""
    from ..artifacts import write_json

    path = Path(args.out_dir) / f"{name}-summary.json"
    outputs = {k: v for k, v in outputs.items() if v is not None}
    write_json(path, run_summary(args, calc, started=started, outputs={**outputs, "summary": path}, results=results, units=units))
    return path


def show_outputs(outputs: dict, summary: Path) -> None:
    """Print where every output went, one per line."""
    print(f"outputs in {Path(summary).parent}:")
    for key, path in {**{k: v for k, v in outputs.items() if v is not None}, "summary": summary}.items():
        print(f"  {key:<12} {Path(path).name}")
