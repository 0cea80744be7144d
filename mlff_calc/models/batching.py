"""Batched evaluation in chunks: chunk size from a memory estimate, out-of-memory backed off.

A chunk is a run of consecutive structures evaluated in one forward pass. Its size
comes from the graph's estimated edge count times the adapter's bytes per edge,
against a share of the device's free memory. On CUDA the bytes per edge are
re-measured after every chunk from the allocator's peak, so the estimate follows the
model. A chunk that still runs out of memory is halved and retried (a warning, and
the count in each result's ``batching`` entry); a single structure that does not fit
raises CalculationFailed as before.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import torch

from ..errors import CalculationFailed

log = logging.getLogger(__name__)

#: share of the free device memory one chunk may plan to use
MEMORY_FRACTION = 0.5


def estimate_edges(atoms, cutoff: float) -> float:
    """Directed edges of ``atoms``' graph at ``cutoff``: atoms times neighbours in a sphere at the mean density."""
    n = len(atoms)
    volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0
    if volume <= 0.0:  # not periodic: every pair at most
        return float(n * max(n - 1, 1))
    return n * max(1.0, 4.0 / 3.0 * math.pi * cutoff**3 * n / volume)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's figure; CPU: available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def plan_chunk(edges: list[float], start: int, bytes_per_edge: float, budget: float) -> int:
    """How many structures from ``start`` fit ``budget`` bytes (at least one)."""
    total, stop = 0.0, start
    while stop < len(edges) and (stop == start or total + edges[stop] * bytes_per_edge <= budget):
        total += edges[stop] * bytes_per_edge
        stop += 1
    return stop - start


def is_out_of_memory(exc: BaseException) -> bool:
    """The adapter's CalculationFailed for memory exhaustion (or the allocator's own error)."""
    cause = exc.__cause__ if isinstance(exc, CalculationFailed) else exc
    return isinstance(cause, (torch.OutOfMemoryError, MemoryError))


def evaluate_in_chunks(adapter, atoms_list, rc: float, run, *, max_chunk: int | None = None) -> list[dict]:
    """``run(structures) -> per-structure results`` over chunks that fit; OOM halves the chunk.

    ``adapter.last_batching`` is ``{"chunks", "oom_backoffs", "chunk_structures"}`` (the
    last: the largest chunk that ran); results get it as ``batching`` when more than one
    chunk ran or a chunk was backed off.
    """
    device = adapter.device
    edges = [estimate_edges(a, rc) for a in atoms_list]
    per_edge = float(getattr(adapter, "_measured_bytes_per_edge", None) or adapter.bytes_per_edge)
    cap = max_chunk or len(atoms_list)
    results, start, chunks, backoffs, largest = [], 0, 0, 0, 0
    while start < len(atoms_list):
        size = min(cap, plan_chunk(edges, start, per_edge, MEMORY_FRACTION * free_memory(device)))
        chunk = atoms_list[start : start + size]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        try:
            out = run(chunk)
        except (CalculationFailed, torch.OutOfMemoryError, MemoryError) as exc:
            if size == 1 or not is_out_of_memory(exc):
                raise
            cap, backoffs = max(1, size // 2), backoffs + 1
            message = f"{adapter.model_id}: out of memory on {size} structures ({sum(len(a) for a in chunk)} atoms) on {device}; retrying {cap} at a time"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            log.warning(message)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if device.type == "cuda":
            used = torch.cuda.max_memory_allocated(device) - before
            per_edge = max(per_edge * 0.25, used / max(sum(edges[start : start + size]), 1.0))
            adapter._measured_bytes_per_edge = per_edge
        results.extend(out)
        start, chunks, largest = start + size, chunks + 1, max(largest, size)
    report = {"chunks": chunks, "oom_backoffs": backoffs, "chunk_structures": largest}
    adapter.last_batching = report
    if chunks > 1 or backoffs:
        for res in results:
            res["batching"] = dict(report)
    return results
