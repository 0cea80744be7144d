"""Choosing an executor by name."""

from __future__ import annotations

from ..errors import ConfigurationError


def get_executor(executor=None, **kwargs):
    """An executor from a name (``"local"``, ``"ray"``) and its options, or the executor given."""
    from .base import Executor

    if executor is None or executor == "local":
        from .local import LocalExecutor

        return LocalExecutor(**{k: v for k, v in kwargs.items() if k == "threads"})
    if executor == "ray":
        from .ray import RayExecutor

        return RayExecutor(**kwargs)
    if isinstance(executor, Executor):
        return executor
    raise ConfigurationError(f"unknown executor {executor!r}; use 'local' or 'ray'")
