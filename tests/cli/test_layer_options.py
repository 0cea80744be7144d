"""Layer flags are built from the layer classes (``Layer.from_option``); nothing below the CLI imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mlff_calc
from mlff_calc.cli.main import build_parser
from mlff_calc.cli.options import LAYER_OPTIONS, build_layers
from mlff_calc.errors import ArtifactError, ConfigurationError
from mlff_calc.layers.base import Layer

PACKAGE = Path(mlff_calc.__file__).parent


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_outside_the_cli_imports_it():
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        bad = {m for m in imported_modules(path, package) if m == "mlff_calc.cli" or m.startswith("mlff_calc.cli.")}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_options_import_no_verb_module():
    """The layer flags no longer reach into cli/ltau.py, cli/rewire.py, cli/ttt.py (the options <-> verbs cycle)."""
    path = PACKAGE / "cli" / "options.py"
    cli_imports = {m for m in imported_modules(path, "mlff_calc.cli") if m.startswith("mlff_calc.cli.")}
    assert {m.rsplit(".", 1)[0] if m.count(".") > 2 else m for m in cli_imports} <= {"mlff_calc.cli.types"}


@pytest.mark.parametrize("opt", LAYER_OPTIONS, ids=[o.flag for o in LAYER_OPTIONS])
def test_every_layer_flag_is_built_by_its_class(opt):
    cls = opt.layer_class()
    assert issubclass(cls, Layer)
    assert "from_option" in vars(cls), f"{cls.__name__} lacks its own from_option"
    flags = {s for a in build_parser()._subparsers._group_actions[0].choices["relax"]._actions for s in a.option_strings}
    assert opt.flag in flags


def test_from_option_builds_the_layer_and_its_errors_stay_clear(tmp_path):
    from mlff_calc.rewiring.layer import RewiringLayer
    from mlff_calc.softening.layer import SofteningLayer

    with pytest.raises(ConfigurationError, match="unknown spectral distance 'bogus'"):
        RewiringLayer.from_option(str(tmp_path / "ref.json:bogus"))
    with pytest.raises(ArtifactError, match="does not exist"):
        SofteningLayer.from_option(str(tmp_path / "fit.json"))
    args = build_parser().parse_args(["relax", "x.cif"])
    assert build_layers(args) == []
