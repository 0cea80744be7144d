"""Optional backends: a missing one is a :class:`ModelLoadError` naming the pip extra that installs it."""

from __future__ import annotations

from contextlib import contextmanager

from .errors import ModelLoadError

#: pip extra of mlff_calc -> the packages it installs (pyproject.toml [project.optional-dependencies])
EXTRAS = {"m3gnet": "matgl", "mace": "mace-torch", "ltau": "faiss-cpu", "ttt": "tblite", "ray": "ray"}


@contextmanager
def backend(extra: str, what: str):
    """Imports inside this block that fail raise ModelLoadError: ``what`` needs ``pip install 'mlff_calc[extra]'``."""
    try:
        yield
    except ImportError as exc:
        missing = exc.name or "a module"
        raise ModelLoadError(
            f"{what} needs the optional backend {EXTRAS[extra]} ({missing} cannot be imported: {exc}); "
            f"install it with: pip install 'mlff_calc[{extra}]'"
        ) from exc
