"""Scopes that undo the process-wide side effects of upstream libraries.

mace-torch/e3nn, matgl and CHGNet write environment variables at import and some
versions change torch's default dtype. Everything that touches a backend runs
inside :func:`isolated`, which restores both on exit, normal or not.
"""

from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def isolated(env_during: dict[str, str] | None = None):
    """Restore ``os.environ`` and torch's default dtype on exit.

    ``env_during`` sets variables only for the duration of the block (e3nn 0.4
    needs ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` to import under torch >= 2.6).
    """
    saved_env = dict(os.environ)
    saved_dtype = torch.get_default_dtype()
    try:
        if env_during:
            os.environ.update(env_during)
        yield
    finally:
        torch.set_default_dtype(saved_dtype)
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        for key, value in saved_env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
