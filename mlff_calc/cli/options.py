"""Options shared by every verb, spelled the same everywhere, and YAML config files."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import yaml

from ..errors import ConfigurationError


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="chgnet", help="model name or path (see `mlff-calc models`); default: chgnet")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]; default: auto")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: the model family's own")
    p.add_argument("--config", type=Path, default=None, help="YAML file whose keys mirror these options")


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


def load_calculator(args):
    import mlff_calc

    return mlff_calc.load(args.model, device=args.device, dtype=args.dtype)


def run_summary(args, calc=None, *, started: float, outputs: dict, results: dict) -> dict:
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
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": config,
        "versions": versions,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 3),
        "outputs": {k: str(v) for k, v in outputs.items()},
        "results": results,
    }
    if calc is not None and hasattr(calc, "adapter"):
        summary["model"] = {"id": calc.adapter.model_id, "sha256": calc.adapter.sha256, "source": calc.adapter.source, "device": str(calc.adapter.device), "dtype": str(calc.adapter.dtype).removeprefix("torch.")}
    return summary
