"""Options shared by every verb, spelled the same everywhere, and YAML config files."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from .._runtime import restore_threads, set_threads  # noqa: F401 (the verbs' thread control)
from ..errors import ConfigurationError


def add_model_options(p: argparse.ArgumentParser, *, layers: bool = True, threads_default: int | None = None) -> None:
    """``--model --device --dtype --threads --config`` and, with ``layers``, every option of :data:`LAYER_OPTIONS`."""
    p.add_argument("--model", default="chgnet", help="model name or path (see `mlff-calc models`); default: chgnet")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]; default: auto")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: the model family's own")
    p.add_argument("--threads", type=int, default=threads_default, help="torch and OpenBLAS CPU threads for this run (on small, busy machines 1 is often much faster); default: " + ("the libraries' own" if threads_default is None else str(threads_default)))
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
    """A command-line option that attaches one calculator layer built from its value."""

    flag: str
    metavar: str
    help: str
    build: Callable  # (value, args) -> Layer

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _softening_layer(value, args):
    from ..layers.softening import SofteningLayer

    return SofteningLayer.from_file(Path(value))


def _ltau_layer(value, args):
    from .ltau import ltau_layer

    return ltau_layer(value, args)


def _ttt_layer(value, args):
    from .ttt import ttt_layer

    return ttt_layer(value, args)


def _rewire_layer(value, args):
    from .rewire import rewire_layer

    return rewire_layer(value, args)


#: Layers the command line can attach, in the order of the calculator's layer list.
#: Later layers (``--ltau``, ``--rewire``, ``--ttt``) go before softening, which must
#: stay last so it scales the model's output only (see mlff_calc.layers.softening).
LAYER_OPTIONS: tuple[LayerOption, ...] = (
    LayerOption("--ttt", "ADAPTED_DIR|FRAMES", "test-time training of a two-head model: weights saved by `mlff-calc ttt adapt`, or a structure file to adapt on first", _ttt_layer),
    LayerOption("--rewire", "REF.json[:DISTANCE]", "refine the graph cutoff per system with the spectrum reference saved by `mlff-calc rewire build-reference` (DISTANCE: padded_l2, histogram or band_fraction)", _rewire_layer),
    LayerOption("--ltau", "INDEX_DIR", "add per-atom force uncertainties from the LTAU index built by `mlff-calc ltau build`", _ltau_layer),
    LayerOption("--softening", "FIT.json", "attach the softening correction saved by `mlff-calc softening fit`", _softening_layer),
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
    p.add_argument("--index", default="-1", help="frame to read from a multi-frame file (ASE index); default: the last")


def read_structure(path, index="-1"):
    """One Atoms from ``path`` (:func:`read_frames` with ``index`` selecting exactly one non-empty frame)."""
    frames = read_frames(path, str(index))
    if len(frames) != 1:
        raise ConfigurationError(f"--index {index} selects {len(frames)} frames of {path}; give a single frame")
    if len(frames[0]) == 0:
        raise ConfigurationError(f"{path} holds an empty structure")
    return frames[0]


def read_frames(path, index=":") -> list:
    """Every frame of ``path`` selected by ``index`` (ASE slice syntax); unreadable or empty raises ConfigurationError."""
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"structure file {path} does not exist")
    try:
        frames = ase.io.read(path, index=index)
    except (OSError, ValueError, KeyError, IndexError, StopIteration, UnknownFileTypeError) as exc:
        raise ConfigurationError(f"cannot read structures from {path} (index {index}): {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ConfigurationError(f"{path} (index {index}) holds no structures")
    return frames


def add_output_options(p: argparse.ArgumentParser, default_dir: str) -> None:
    p.add_argument("--out-dir", type=Path, default=Path("mlff_results") / default_dir, help="folder for every output file")


def apply_config(args: argparse.Namespace, parser_defaults: dict) -> argparse.Namespace:
    """Fill options from ``--config``; flags given on the command line win. Unknown keys are rejected."""
    if getattr(args, "config", None) is None:
        return args
    try:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read config {args.config}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"config {args.config} must be a mapping of option names to values")
    known = {k for k in vars(args) if not k.startswith("_")}
    for key, value in data.items():
        attr = key.replace("-", "_")
        if attr not in known or attr == "config":
            raise ConfigurationError(f"config {args.config}: unknown option '{key}'; valid: {', '.join(sorted(known - {'config'}))}")
        if getattr(args, attr) == parser_defaults.get(attr):
            setattr(args, attr, type(parser_defaults[attr])(value) if isinstance(parser_defaults.get(attr), Path) else value)
    return args


def load_calculator(args, *, layers: bool = True):
    """The calculator of ``--model/--device/--dtype`` with the layers of :data:`LAYER_OPTIONS` attached.

    ``layers=False`` gives the bare model (e.g. to fit a correction of it). Also applies ``--threads``.
    """
    import mlff_calc

    set_threads(getattr(args, "threads", None))
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
        summary["model"] = {"id": calc.adapter.model_id, "sha256": calc.adapter.sha256, "source": calc.adapter.source, "device": str(calc.adapter.device), "dtype": str(calc.adapter.dtype).removeprefix("torch.")}
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
