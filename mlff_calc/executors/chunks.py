"""Work units: structures cut into chunks that do not depend on the executor.

A chunk is a run of consecutive structures (by index) whose atoms add up to at
most ``max_atoms`` (and whose count is at most ``max_structures``); a structure
bigger than ``max_atoms`` gets a chunk of its own. The cut depends only on the
structure sizes and the two limits, never on the executor or the number of
workers, so every executor runs the same batched forward passes and gives
bitwise-identical results on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError


@dataclass
class Job:
    """One unit of work: ``key`` names it (unique within a run), ``payload`` is what the task function gets."""

    key: str
    payload: Any
    n_items: int = 1


@dataclass
class Outcome:
    """What became of a job: ``result`` or ``error`` (text), after ``attempts`` tries, on ``worker``."""

    key: str
    result: Any = None
    error: str | None = None
    attempts: int = 1
    worker: str = ""
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def make_chunks(n_atoms: Sequence[int], *, max_atoms: int = 512, max_structures: int = 64) -> list[list[int]]:
    """Indices of consecutive structures, cut so that a chunk holds at most ``max_atoms`` atoms and ``max_structures`` structures."""
    if max_atoms < 1 or max_structures < 1:
        raise ConfigurationError(f"chunks need max_atoms >= 1 and max_structures >= 1; got {max_atoms} and {max_structures}")
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, n in enumerate(n_atoms):
        if current and (size + n > max_atoms or len(current) >= max_structures):
            chunks.append(current)
            current, size = [], 0
        current.append(i)
        size += int(n)
    if current:
        chunks.append(current)
    return chunks
