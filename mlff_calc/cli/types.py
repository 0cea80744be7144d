"""Checked argparse types shared by every verb, and the same checks for ``--config`` values.

Every numeric option goes through :class:`Number` (finite, integral where asked, in
range), so a bad value stops the run before any work with one line naming the
option. :func:`coerce` applies an option's own type, choices and checks to a value
read from a YAML config.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path


class UsageError(Exception):
    """A bad command line; ``mlff_calc.cli.main`` prints it as one line and returns 2."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are :class:`UsageError` (one line, no usage dump)."""

    def error(self, message):
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


class Number:
    """``Number(int, lo=1)``: a finite int or float, ``lo <= x <= hi`` (``lo_open``/``hi_open``: strict).

    Accepts command-line strings and YAML numbers; rejects booleans, nan, inf and,
    for ints, values with a fractional part (``2.7`` is not silently 2).
    """

    def __init__(self, kind=float, lo=None, hi=None, *, lo_open=False, hi_open=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = self.describe()  # argparse names the type by it

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            bounds.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return what + (f" {' and '.join(bounds)}" if bounds else "")

    def __call__(self, value):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {value!r}")
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {value!r}") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
        if self.kind is int:
            if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", value) or x != int(x):
                raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {value!r}")
            x = int(x)
        below = self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo)
        above = self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {value!r}")
        return x

    def __repr__(self):
        return f"Number({self.describe()})"


INT = Number(int)
POSITIVE_INT = Number(int, 1)
COUNT = Number(int, 0)  # a non-negative integer: steps, repeats, seeds
REAL = Number(float)
POSITIVE = Number(float, 0, lo_open=True)
NON_NEGATIVE = Number(float, 0)
FRACTION = Number(float, 0, 1, lo_open=True, hi_open=True)  # strictly between 0 and 1
UNIT_INTERVAL = Number(float, 0, 1, hi_open=True)  # 0 <= x < 1 (decays, momenta)

_INDEX = re.compile(r"[+-]?\d+|([+-]?\d*):([+-]?\d*)(:([+-]?\d*))?")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def ase_index(value) -> str:
    """An ASE frame index: an integer (``-1``) or a slice (``:``, ``0:10``, ``::2``)."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not _INDEX.fullmatch(text) or re.fullmatch(r"[+-]?\d*:[+-]?\d*:[+-]?0", text):
        raise argparse.ArgumentTypeError(f"must be a frame number (e.g. -1) or a slice (e.g. ':', '0:10', '::2'), got {value!r}")
    return text


def device(value) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value.strip()):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value.strip()


# checks on a whole multi-value option ---------------------------------------------------


class Checked(argparse._StoreAction):
    """``add_argument(..., action=Checked, check=fn)``: ``fn(values)`` raises ArgumentTypeError if they don't fit together."""

    def __init__(self, *args, check, **kwargs):
        super().__init__(*args, **kwargs)
        self.check = check

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            self.check(values)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, values)


def not_all_zero(values) -> None:
    if not any(values):
        raise argparse.ArgumentTypeError(f"must not be all zero, got {' '.join(str(v) for v in values)}")


def supercell_repeats(values) -> None:
    """3 positive repeats, or 9 integers (a 3x3 matrix, row by row) with a positive determinant."""
    import numpy as np

    if len(values) == 3:
        if min(values) < 1:
            raise argparse.ArgumentTypeError(f"repeats must be at least 1, got {' '.join(str(v) for v in values)}")
    elif len(values) == 9:
        det = round(float(np.linalg.det(np.asarray(values, dtype=float).reshape(3, 3))))
        if det <= 0:
            raise argparse.ArgumentTypeError(f"the 3x3 matrix must have a positive determinant, got {det}")
    else:
        raise argparse.ArgumentTypeError(f"takes 3 integers or 9 (a 3x3 matrix), got {len(values)}")


def fractions_sum_to_one(values) -> None:
    if abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"must sum to 1, got {' + '.join(f'{v:g}' for v in values)} = {sum(values):g}")


# --config values ---------------------------------------------------------------------------


def coerce(action: argparse.Action, value):
    """``value`` from a YAML config, converted and checked as the command line would; ArgumentTypeError if it does not fit."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"must be true or false, got {value!r}")
        return value
    if not isinstance(action, argparse._StoreAction):
        raise argparse.ArgumentTypeError("cannot be set from a config file")
    if value is None:
        if action.default is None and not action.required:
            return None
        raise argparse.ArgumentTypeError("needs a value")
    many = action.nargs not in (None, "?")
    if many and isinstance(value, dict) and action.type is None:
        return value  # a mapping the verb reads itself (e.g. chemical potentials)
    if many:
        values = value if isinstance(value, list) else ([value] if action.nargs in ("+", "*") else None)
        if values is None:
            raise argparse.ArgumentTypeError(f"takes a list of {action.nargs} values, got {value!r}")
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise argparse.ArgumentTypeError(f"takes {action.nargs} values, got {len(values)}")
        if action.nargs == "+" and not values:
            raise argparse.ArgumentTypeError("takes at least one value")
        out = [_one(action, v) for v in values]
    elif isinstance(value, (list, dict)):
        raise argparse.ArgumentTypeError(f"takes one value, got {value!r}")
    else:
        out = _one(action, value)
    if isinstance(action, Checked):
        action.check(out)
    return out


def _one(action, value):
    if isinstance(value, (list, dict)) or isinstance(value, bool) and action.type is not None:
        raise argparse.ArgumentTypeError(f"got {value!r}")
    if action.type is None or action.type is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise argparse.ArgumentTypeError(f"must be text, got {value!r}")
        out = str(value)
    elif action.type is Path:
        if not isinstance(value, str):
            raise argparse.ArgumentTypeError(f"must be a path, got {value!r}")
        out = Path(value)
    else:
        out = action.type(value)
    if action.choices is not None and out not in action.choices:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return out
