"""Teacher labels for distillation: energies, forces, stress and energy-Hessian rows.

The label store format (folder, manifest, chunks, sign conventions) is described
in :mod:`mlff_calc.data.labels`.

Rows: the full Hessian when ``3N <= full_hessian_max_dof`` (default 96), otherwise
``n_rows`` rows drawn without replacement from the free DOF (atoms not held by
``FixAtoms``) with a generator seeded by ``(seed, structure index)``, so a resumed
run draws the same rows. Rows are computed only for structures whose split is in
``hessian_splits`` (default: train only; validation and test need no Hessian).

Resuming: the manifest is written first and updated (atomically) after every
chunk with that chunk's sha256. A restart with the same teacher, structures and
config skips the chunks listed there; a chunk file that exists but is not listed
(interrupted between the two writes) is recomputed. A manifest of another
teacher, other structures or another config is refused with ArtifactError, and a
listed chunk whose bytes changed is refused with ArtifactError naming it; no
existing file is modified in either case.

Concurrent writers: several processes may label into one folder at once. Each
claims a chunk (:class:`~mlff_calc.artifacts.FolderClaims`, ``.claims.json``
under ``.lock``), computes it, and under the lock writes it and adds it to the
manifest as read from disk, so no writer's chunks are lost and no chunk is
labelled twice while its claimant lives. A writer with nothing left to claim
waits for the chunks others hold. Readers see whole chunks only (atomic renames).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from .._version import __version__
from ..artifacts import FolderClaims, check_manifest, read_json, sha256_file, write_json, write_npz
from ..calculator import as_calculator
from ..data.labels import LABELS_FORMAT, LABELS_VERSION, MANIFEST, UNITS, LabelRecord, LabelStore, check_label_manifest, chunk_name, records_of_chunk  # noqa: F401 (re-exported)
from ..data.structures import pack_structures, structures_sha256
from ..errors import ArtifactError, ConfigurationError
from ..models.identity import teacher_identity, weights_sha256  # noqa: F401 (re-exported)
from .sample import SampleSet

log = logging.getLogger(__name__)


def hessian_rows_for(index: int, n_atoms: int, fixed: np.ndarray, *, full_max_dof: int, n_rows: int, seed: int) -> np.ndarray:
    """Which DOF rows to label for structure ``index``: all when small, else a seeded sample of free DOF."""
    free = np.flatnonzero(np.repeat(~np.asarray(fixed, dtype=bool), 3))
    if 3 * n_atoms <= full_max_dof or n_rows >= free.size:
        return free
    rng = np.random.default_rng([int(seed), int(index)])
    return np.sort(rng.choice(free, size=n_rows, replace=False))


# labelling -----------------------------------------------------------------------------------


class _HessianRows:
    """Teacher Hessian rows with the auto -> finite-difference fallback logged once."""

    def __init__(self, calc, method: str):
        if method not in ("auto", "autograd", "fd"):
            raise ConfigurationError(f"unknown Hessian method {method!r}; use 'auto', 'autograd' or 'fd'")
        self.calc = calc
        self.method = method
        if method == "auto" and not calc.adapter.double_backward:
            log.info("teacher %s has no double backward; Hessian rows by central finite differences of forces", calc.adapter.model_id)
            self.method = "fd"

    def __call__(self, atoms: Atoms, rows: np.ndarray) -> np.ndarray:
        if rows.size == 0:
            return np.zeros((0, 3 * len(atoms)))
        if self.method == "auto":
            try:
                result = self.calc.get_hessian(atoms, rows, method="autograd")
                self.method = "autograd"
                return result
            except RuntimeError as exc:  # e.g. "derivative for ... is not implemented" in double backward
                log.warning("autograd Hessian of teacher %s failed (%s); using finite differences from now on", self.calc.adapter.model_id, exc)
                self.method = "fd"
        # through the calculator, so layers (e.g. softening) apply to the rows
        return self.calc.get_hessian(atoms, rows, method=self.method)


def label(
    samples: SampleSet | Sequence[Atoms],
    teacher,
    out_dir,
    *,
    chunk_size: int = 16,
    full_hessian_max_dof: int = 96,
    n_rows: int = 8,
    hessian_splits: Sequence[str] = ("train",),
    hessian_method: str = "auto",
    seed: int = 0,
    progress: bool | None = None,
    executor=None,
    model=None,
) -> LabelStore:
    """Label ``samples`` with ``teacher`` into the label store folder ``out_dir`` (resumable).

    ``samples``: a :class:`SampleSet` (its splits are kept) or a list of Atoms (all
    "train"). ``teacher``: an :class:`~mlff_calc.calculator.MLFFCalculator` (layers
    such as softening apply: labels come from ``calc.evaluate`` and
    ``calc.get_hessian``) or a bare adapter.

    ``executor``: ``None`` labels chunk after chunk here; ``"local"``, ``"ray"`` or
    an executor object (see :mod:`mlff_calc.executors`) hands the chunks to its
    workers, which load ``model`` (a ModelRecipe; default: rebuilt from the
    teacher) and must hold the same teacher. Chunks are the same on every path,
    so the labels are bitwise identical on the same device; each finished chunk
    is written (npz, then manifest) as it arrives, so a restart skips it.
    """
    from .._runtime import progress_bar

    if chunk_size < 1 or n_rows < 0 or full_hessian_max_dof < 0:
        raise ConfigurationError(f"need chunk_size >= 1, n_rows >= 0 and full_hessian_max_dof >= 0; got {chunk_size}, {n_rows}, {full_hessian_max_dof}")
    if isinstance(samples, SampleSet):
        structures, splits = list(samples.structures), np.asarray(samples.split, dtype=str)
    else:
        structures = [samples] if isinstance(samples, Atoms) else list(samples)
        splits = np.array(["train"] * len(structures))
    if not structures:
        raise ConfigurationError("no structures to label")
    calc = as_calculator(teacher)
    folder = Path(out_dir)
    packed = pack_structures(structures)
    config = {
        "chunk_size": int(chunk_size),
        "full_hessian_max_dof": int(full_hessian_max_dof),
        "n_rows": int(n_rows),
        "hessian_splits": sorted(hessian_splits),
        "hessian_method": hessian_method,
        "seed": int(seed),
    }
    identity = teacher_identity(calc)
    n_chunks = -(-len(structures) // chunk_size)
    fresh = {
        "format": LABELS_FORMAT,
        "format_version": LABELS_VERSION,
        "mlff_calc_version": __version__,
        "teacher": identity,
        "units": UNITS,
        "n_structures": len(structures),
        "n_chunks": n_chunks,
        "structures_sha256": structures_sha256(packed),
        "splits_sha256": hashlib.sha256("\n".join(splits.tolist()).encode()).hexdigest(),
        "counts": {s: int(np.sum(splits == s)) for s in sorted(set(splits.tolist()))},
        "config": config,
        "chunks": {},
    }
    claims = FolderClaims(folder)
    with claims.lock():
        manifest = _resume_manifest(folder, fresh)
        write_json(folder / MANIFEST, manifest)
    hessian_rows = _HessianRows(calc, hessian_method)
    names = [chunk_name(k) for k in range(n_chunks)]
    todo = [k for k in range(n_chunks) if names[k] not in manifest["chunks"]]
    if len(todo) < n_chunks:
        log.info("label store %s: %d of %d chunks already done, skipping them", folder, n_chunks - len(todo), n_chunks)
    if executor is not None:
        _label_on_executor(executor, model, calc, identity, structures, splits, chunk_size, todo, config, folder, claims, manifest, progress)
        return LabelStore(folder)
    try:
        with progress_bar(total=len(todo), desc="label: teacher", enabled=progress) as bar:
            while True:
                with claims.lock():
                    done = set(_chunks_on_disk(folder))
                    got = claims.take(names, done, 1)
                if not got:
                    if len(done) == n_chunks:
                        break
                    time.sleep(0.2)  # the rest is claimed by live writers: wait for them (or for their claims to lapse)
                    continue
                k = names.index(got[0])
                idx = np.arange(k * chunk_size, min((k + 1) * chunk_size, len(structures)))
                arrays = _label_chunk([structures[i] for i in idx], idx, splits[idx], calc, hessian_rows, config)
                _add_chunk(folder, claims, manifest, got[0], arrays)
                bar.update(1)
    finally:
        claims.release()
    return LabelStore(folder)


def _chunks_on_disk(folder: Path) -> dict:
    """The finished chunks the manifest on disk lists (under the folder's lock)."""
    return read_json(folder / MANIFEST, kind="label store manifest")["chunks"]


def _add_chunk(folder: Path, claims: FolderClaims, manifest: dict, name: str, arrays: dict) -> None:
    """Under the lock: write chunk ``name`` and add it to the chunks other writers listed meanwhile."""
    with claims.lock():
        write_npz(folder / name, **arrays)
        manifest["chunks"] = {**_chunks_on_disk(folder), name: sha256_file(folder / name)}
        write_json(folder / MANIFEST, manifest)


def _label_on_executor(executor, model, calc, identity, structures, splits, chunk_size, todo, config, folder, claims, manifest, progress) -> None:
    """Label the chunks ``todo`` on an executor's workers; write each as it arrives."""
    from ..errors import CalculationFailed
    from ..executors import Job, get_executor

    own = isinstance(executor, str)
    ex = get_executor(executor)
    try:
        model = calc if model is None and ex.name == "local" else model
        if model is None:
            from ..executors import ModelRecipe

            model = ModelRecipe.of(calc)
        loaded = ex.start(model)
        if loaded != identity:
            raise ConfigurationError(f"the executor's workers loaded teacher {loaded} but the label store is for {identity}; give the workers the same model")
        jobs = []
        for k in todo:
            idx = np.arange(k * chunk_size, min((k + 1) * chunk_size, len(structures)))
            jobs.append(Job(chunk_name(k), {"structures": [structures[i] for i in idx], "index": idx, "split": splits[idx], "config": config}, len(idx)))
        failed = []

        def write(outcome):
            if not outcome.ok:
                failed.append(f"{outcome.key} (after {outcome.attempts} tries): {outcome.error.splitlines()[0]}")
                return
            _add_chunk(folder, claims, manifest, outcome.key, outcome.result)

        ex.run(label_chunk, jobs, model, write, progress=progress, desc="label: teacher")
    finally:
        if own:
            ex.close()
    if failed:
        raise CalculationFailed(f"{len(failed)} label chunk(s) failed and were not written (run again to retry them): " + "; ".join(failed[:3]))


def label_chunk(calc, payload: dict) -> dict[str, np.ndarray]:
    """Task function for executors: the arrays of one label chunk."""
    config = payload["config"]
    return _label_chunk(payload["structures"], np.asarray(payload["index"]), np.asarray(payload["split"]), calc, _HessianRows(calc, config["hessian_method"]), config)


def _resume_manifest(folder: Path, fresh: dict) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        return fresh
    old = read_json(path, kind="label store manifest")
    check_manifest(old, fmt=LABELS_FORMAT, versions=(LABELS_VERSION,), path=path)
    check_label_manifest(old, path)
    if old.get("teacher") != fresh["teacher"]:
        raise ArtifactError(
            f"label store {folder} was written by teacher {old.get('teacher', {}).get('model_id')!r} "
            f"(sha256 {str(old.get('teacher', {}).get('sha256'))[:12]}..., layers {old.get('teacher', {}).get('layers')}); "
            f"this teacher is {fresh['teacher']['model_id']!r} (sha256 {fresh['teacher']['sha256'][:12]}..., layers {fresh['teacher']['layers']}). "
            "Use another folder for another teacher"
        )
    for key in ("structures_sha256", "splits_sha256", "n_structures", "config"):
        if old.get(key) != fresh[key]:
            raise ArtifactError(f"label store {folder} holds labels of other inputs ({key} differs: {old.get(key)!r} vs {fresh[key]!r}); use another folder or the original inputs")
    for name, digest in old.get("chunks", {}).items():
        chunk = folder / name
        if not chunk.is_file() or sha256_file(chunk) != digest:
            raise ArtifactError(f"label chunk {chunk} is listed as finished in {path} but is missing or does not match its recorded sha256; delete it and run again to recompute it")
    resumed = dict(fresh)
    resumed["chunks"] = dict(old.get("chunks", {}))
    return resumed


def _label_chunk(atoms_list: list[Atoms], idx: np.ndarray, splits: np.ndarray, calc, hessian_rows: _HessianRows, config: dict) -> dict[str, np.ndarray]:
    packed = pack_structures(atoms_list)
    results: list[dict | None] = [None] * len(atoms_list)
    periodic = [b for b, a in enumerate(atoms_list) if a.pbc.all()]
    other = [b for b, a in enumerate(atoms_list) if not a.pbc.all()]
    for group, props in ((periodic, ("energy", "forces", "stress")), (other, ("energy", "forces"))):
        if group:
            for b, res in zip(group, calc.evaluate([atoms_list[b] for b in group], props)):
                results[b] = res
    bounds = np.cumsum([0, *packed["n_atoms"].tolist()])
    rows_all, hess_all, n_rows = [], [], []
    for b, atoms in enumerate(atoms_list):
        if splits[b] in config["hessian_splits"]:
            rows = hessian_rows_for(int(idx[b]), len(atoms), packed["fixed"][bounds[b] : bounds[b + 1]], full_max_dof=config["full_hessian_max_dof"], n_rows=config["n_rows"], seed=config["seed"])
        else:
            rows = np.zeros(0, dtype=np.int64)
        hess = hessian_rows(atoms, rows)
        rows_all.append(rows.astype(np.int64))
        hess_all.append(hess.reshape(-1))
        n_rows.append(len(rows))
    return {
        **packed,
        "index": idx.astype(np.int64),
        "split": np.asarray(splits, dtype="U8"),
        "energy": np.array([r["energy"] for r in results], dtype=np.float64),
        "forces": np.concatenate([r["forces"] for r in results]).astype(np.float64),
        "stress": np.stack([r.get("stress", np.full(6, np.nan)) for r in results]).astype(np.float64),
        "hessian_n_rows": np.asarray(n_rows, dtype=np.int64),
        "hessian_rows": np.concatenate(rows_all) if rows_all else np.zeros(0, dtype=np.int64),
        "hessian": np.concatenate(hess_all) if hess_all else np.zeros(0),
    }
