"""Process and run-time helpers shared by every layer of mlff_calc.

- :func:`isolated`: mace-torch/e3nn, matgl and CHGNet write environment
  variables at import and some versions change torch's default dtype. Everything
  that touches a backend runs inside it; it restores both on exit, normal or not.
- :func:`set_threads` / :func:`restore_threads`: CPU thread control for processes
  that own their threads (the CLI and executor workers; library code never sets them).
- :func:`progress_bar`, :func:`evaluate_structures`, :func:`snapshot`: progress,
  batched evaluation through any ASE calculator, results kept through extxyz.
- :func:`backend`: a missing optional backend is a ModelLoadError naming its pip extra.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .errors import ConfigurationError, ModelLoadError


@contextlib.contextmanager
def isolated(env_during: dict[str, str] | None = None):
    """Restore ``os.environ`` and torch's default dtype on exit.

    ``env_during`` sets variables only for the duration of the block (e3nn 0.4
    needs ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` to import under torch >= 2.6).
    """
    import torch  # here, so importing this module stays cheap

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


def set_threads(threads: int | None) -> dict:
    """Set torch's CPU threads and the BLAS libraries' (numpy, scipy) to ``threads``; return the previous settings.

    For processes that own their threads (the CLI, executor workers); library
    code never sets thread counts. On a small,
    shared machine one thread is often much faster: two OpenMP threads made small
    CHGNet evaluations 10-40x slower here, and two OpenBLAS threads made the 3x3
    matrix functions of ASE's FrechetCellFilter ~100x slower. ``None`` changes
    nothing. Pass the returned dict to :func:`restore_threads` to undo.
    """
    if threads is None:
        return {}
    if int(threads) < 1:
        raise ConfigurationError(f"--threads must be at least 1, got {threads}")
    import scipy.linalg  # noqa: F401  load scipy's own BLAS too (ASE's cell filters use it)
    import torch
    from threadpoolctl import threadpool_limits

    previous = {"torch": torch.get_num_threads(), "blas": threadpool_limits(limits=int(threads), user_api="blas")}
    torch.set_num_threads(int(threads))
    return previous


def restore_threads(previous: dict) -> None:
    """Undo :func:`set_threads`."""
    if not previous:
        return
    import torch

    torch.set_num_threads(previous["torch"])
    previous["blas"].restore_original_limits()


#: graphs smaller than this run on one thread; above it, one more thread per this many atoms
#: (up to MAX_DEFAULT_THREADS and the cores the machine's load leaves idle); README, Threads
ATOMS_PER_THREAD = 200
MAX_DEFAULT_THREADS = 2


def default_threads(n_atoms: int | None) -> int:
    """CPU threads for a job whose model graphs hold about ``n_atoms`` atoms, when ``--threads`` is not given.

    Small graphs get one thread: a second intra-op thread gains little there and,
    when another process holds the other core, costs many times over
    (benchmarks/threads_default.py). Unknown sizes get one thread. For the CLI;
    library code never sets thread counts.
    """
    if not n_atoms or n_atoms < 2 * ATOMS_PER_THREAD:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = int(cpus - os.getloadavg()[0]) if hasattr(os, "getloadavg") else 1
    return max(1, min(MAX_DEFAULT_THREADS, idle, n_atoms // ATOMS_PER_THREAD))


def progress_bar(iterable=None, *, total=None, desc: str = "", enabled: bool | None = None, unit: str = "it"):
    """The one progress bar of mlff_calc: tqdm on stderr, with the time per step.

    ``enabled=None`` shows it only when stderr is a terminal (:func:`on_terminal`),
    so logs, pipes and CI stay clean. Callers add their status (step, T, E, ...)
    with ``bar.set_postfix``.
    """
    import sys

    from tqdm.auto import tqdm

    enabled = on_terminal() if enabled is None else bool(enabled)
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, unit=unit, mininterval=0.5, file=sys.stderr)


def on_terminal() -> bool:
    """Whether stderr (where progress bars go) is an interactive terminal."""
    import sys

    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def has_batched_evaluate(calc) -> bool:
    """Whether ``calc`` offers mlff_calc's batched ``evaluate(atoms_list, properties)``."""
    return callable(getattr(calc, "evaluate", None))


def evaluate_structures(
    calc,
    structures: Sequence[Atoms],
    properties: Iterable[str] = ("energy", "forces"),
    *,
    batch_size: int = 32,
    progress: bool | None = None,
    desc: str = "evaluate",
) -> list[dict]:
    """Energy/forces/stress of many structures: batched through ``calc.evaluate`` when available.

    Returns one dict per structure with float64 numpy values. With a plain ASE
    calculator each structure is copied and evaluated on its own; the inputs are
    never modified.
    """
    properties = tuple(properties)
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    results: list[dict] = []
    structures = list(structures)
    with progress_bar(total=len(structures), desc=desc, enabled=progress) as bar:
        if has_batched_evaluate(calc):
            for start in range(0, len(structures), batch_size):
                batch = structures[start : start + batch_size]
                for res in calc.evaluate(batch, properties):
                    results.append({k: res[k] for k in properties if k in res})
                bar.update(len(batch))
        else:
            for atoms in structures:
                work = atoms.copy()
                work.calc = calc
                res = {}
                if "energy" in properties:
                    res["energy"] = float(work.get_potential_energy())
                if "forces" in properties:
                    res["forces"] = np.asarray(work.get_forces(), dtype=float)
                if "stress" in properties:
                    res["stress"] = np.asarray(work.get_stress(voigt=True), dtype=float)
                results.append(res)
                bar.update(1)
    return results


#: results that go to a SinglePointCalculator (and so to extxyz as standard fields)
_SINGLE_POINT = ("energy", "free_energy", "forces", "stress", "energies", "stresses", "magmom", "magmoms", "charges", "dipole")


def snapshot(atoms: Atoms, results: dict | None = None) -> Atoms:
    """A copy of ``atoms`` that keeps its calculator's results through an extxyz round trip.

    Standard ASE properties (energy, forces, stress, ...) go to a
    SinglePointCalculator; any other per-atom array goes to ``atoms.arrays`` and any
    other scalar to ``atoms.info`` (nested dicts such as ``contributions`` are
    flattened with ``_``). Momenta are kept in ``arrays["momenta"]``.
    """
    frame = atoms.copy()  # copies arrays (momenta included), info and constraints
    if results is None:
        calc = atoms.calc
        if calc is not None and hasattr(calc, "complete_results"):
            calc.complete_results()  # outputs deferred by on-demand layers belong in the frame
        results = calc.results if calc is not None else {}
    standard, extras = {}, {}
    for key, value in _flatten(results):
        if key in _SINGLE_POINT:
            standard[key] = np.array(value, dtype=float) if np.ndim(value) else float(value)
        else:
            extras[key] = value
    n = len(frame)
    for key, value in extras.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            continue
        if arr.ndim == 0:
            frame.info[key] = arr.item()
        elif arr.shape[0] == n and arr.ndim <= 2 and key not in ("numbers", "positions"):
            frame.arrays[key] = np.array(arr, dtype=float) if arr.dtype.kind == "f" else np.array(arr)
    frame.calc = SinglePointCalculator(frame, **standard) if standard else None
    return frame


def _flatten(results: dict, parent: str = ""):
    for key, value in results.items():
        name = f"{parent}_{key}" if parent else str(key)
        if isinstance(value, dict):
            yield from _flatten(value, name)
        elif value is not None:
            yield name, value


#: pip extra of mlff_calc -> the package it installs (pyproject.toml [project.optional-dependencies])
EXTRAS = {"m3gnet": "matgl", "mace": "mace-torch", "ltau": "faiss-cpu", "ttt": "tblite", "ray": "ray"}


@contextlib.contextmanager
def backend(extra: str, what: str):
    """Imports inside this block that fail raise ModelLoadError: ``what`` needs ``pip install 'mlff_calc[extra]'``."""
    try:
        yield
    except ImportError as exc:
        raise ModelLoadError(f"{what} needs the optional backend {EXTRAS[extra]} ({exc.name or 'a module'} cannot be imported: {exc}); install it with: pip install 'mlff_calc[{extra}]'") from exc
