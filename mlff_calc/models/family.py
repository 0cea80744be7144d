"""How a model family declares itself to the registry: its adapter and how to recognise its files.

Each adapter module declares its family with :func:`register` (see
:mod:`mlff_calc.models.families`); the registry asks the declared families, in
order, whether a local path holds one of their models, so it knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_FAMILIES: dict[str, Family] = {}


@dataclass(frozen=True)
class Family:
    """A loadable model family.

    ``adapter``: the class whose ``load(path, device=, dtype=, ...)`` builds an
    adapter. ``recognises(path)``: whether a local file or folder holds a model of
    this family. ``files``: what it looks for, for error messages.
    ``wraps_base``: its models load a base model by name, so the registry passes
    ``load_base=`` (its own ``load_adapter``) to ``adapter.load``. ``precedence``:
    families with a higher one are asked first (a two-head student folder is also
    a student folder).
    """

    name: str
    adapter: type
    recognises: Callable[[Path], bool]
    files: str
    folder: bool = False
    wraps_base: bool = False
    precedence: int = 0


def register(family: Family) -> Family:
    """Declare ``family``; a later declaration of the same name replaces it (recognition order is kept)."""
    _FAMILIES[family.name] = family
    return family


def declared() -> dict[str, Family]:
    """Every declared family, highest precedence first, then in declaration order."""
    order = sorted(enumerate(_FAMILIES.values()), key=lambda item: (-item[1].precedence, item[0]))
    return {family.name: family for _, family in order}


def folder_with(*names: str) -> Callable[[Path], bool]:
    """A ``recognises`` for folders holding every file of ``names``."""
    return lambda path: path.is_dir() and all((path / name).exists() for name in names)


def file_ending(*suffixes: str) -> Callable[[Path], bool]:
    """A ``recognises`` for files whose name ends with one of ``suffixes``."""
    return lambda path: path.is_file() and path.name.endswith(suffixes)
