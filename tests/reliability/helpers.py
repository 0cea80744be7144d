"""Helpers of the reliability tests (``from .helpers import ...``); the finite-difference
helpers shared with the other suites live in ``tests/helpers.py``."""

from __future__ import annotations

import contextlib
import signal

from helpers import fd_forces, fd_stress  # noqa: F401  tests/helpers.py, re-exported


class Hang(Exception):
    """A guarded block ran longer than allowed."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise Hang in the main thread after ``seconds`` (checked between Python bytecodes,
    so between torch ops; a single long C call is interrupted only when it returns)."""

    def handler(_signum, _frame):
        raise Hang(f"ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
