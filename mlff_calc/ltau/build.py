"""Building an LTAU estimator from a training run: descriptors, the error log, calibration data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .._runtime import progress_bar
from ..artifacts import read_npz, sha256_file
from ..data.error_log import check_binding
from ..errors import ArtifactError, ConfigurationError
from ..models.identity import weights_sha256
from .distributions import error_distributions
from .estimator import LTAU, Calibration, calibrate, descriptor_spec
from .index import HNSW_EF_CONSTRUCTION, LTAUIndex, as_float32

log = logging.getLogger(__name__)


# building from a training run ------------------------------------------------------------


def _structures_by_index(training_structures) -> Mapping[int, object]:
    """``{structure_index: Atoms}`` from a label store (folder), a mapping or a sequence."""
    from ..data.labels import LabelStore

    if isinstance(training_structures, (str, Path)):
        training_structures = LabelStore(training_structures)
    if isinstance(training_structures, LabelStore):
        return {r.index: r.atoms for r in training_structures.records()}
    if isinstance(training_structures, Mapping):
        return {int(k): v for k, v in training_structures.items()}
    return dict(enumerate(training_structures))


def compute_descriptors(adapter, structures: Sequence, *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(descriptors [N, d] float32, numbers [N])`` of all atoms, structure after structure."""
    desc, numbers = [], []
    for start in progress_bar(range(0, len(structures), batch_size), desc="ltau: descriptors", unit="batch"):
        chunk = list(structures[start : start + batch_size])
        for atoms, res in zip(chunk, adapter.evaluate(chunk, ("energy", "descriptors"), min_distance=None)):
            if "descriptors" not in res:
                raise ConfigurationError(f"{adapter.model_id} gives no per-atom descriptors; LTAU needs them")
            desc.append(as_float32(res["descriptors"]))
            numbers.append(np.asarray(atoms.numbers))
    return np.ascontiguousarray(np.concatenate(desc)), np.concatenate(numbers)


def reference_force_errors(adapter, structures: Sequence, reference_forces: Sequence[np.ndarray], *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One forward pass per batch: ``(descriptors, numbers, |F_model - F_ref| per atom, F_model)``."""
    desc, numbers, errs, forces = [], [], [], []
    for start in progress_bar(range(0, len(structures), batch_size), desc="ltau: calibration", unit="batch"):
        chunk = list(structures[start : start + batch_size])
        for j, (atoms, res) in enumerate(zip(chunk, adapter.evaluate(chunk, ("energy", "forces", "descriptors"), min_distance=None))):
            ref = np.asarray(reference_forces[start + j], dtype=np.float64)
            desc.append(as_float32(res["descriptors"]))
            numbers.append(np.asarray(atoms.numbers))
            errs.append(np.linalg.norm(res["forces"] - ref, axis=1))
            forces.append(res["forces"])
    return np.concatenate(desc), np.concatenate(numbers), np.concatenate(errs), np.concatenate(forces)


def _calibration_data(calibration):
    """``(structures, reference forces)`` from a label store / records / Atoms with forces."""
    from ..data.labels import LabelStore

    if isinstance(calibration, (str, Path)):
        calibration = LabelStore(calibration)
    if isinstance(calibration, LabelStore):
        records = calibration.records("valid") or calibration.records("test")
        return [r.atoms for r in records], [r.forces for r in records]
    items = list(calibration)
    if items and hasattr(items[0], "forces") and hasattr(items[0], "atoms"):
        return [r.atoms for r in items], [r.forces for r in items]
    if items and isinstance(items[0], tuple):
        return [a for a, _ in items], [f for _, f in items]
    forces = []
    for atoms in items:
        if "forces" in atoms.arrays:
            forces.append(atoms.arrays["forces"])
        elif atoms.calc is not None and "forces" in atoms.calc.results:
            forces.append(atoms.calc.results["forces"])
        else:
            raise ConfigurationError("calibration structures need reference forces (atoms.arrays['forces'] or a calculator with results)")
    return items, forces


def build_ltau(
    adapter,
    training_structures,
    error_log_path,
    out_dir=None,
    *,
    n_bins: int = 100,
    log_bins: bool = True,
    burn_in: int = 0,
    e_min: float | None = None,
    e_max: float | None = None,
    k: int = 10,
    index_kind: str = "flat",
    per_element: bool = False,
    hnsw_m: int = 32,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = 64,
    ivf_nlist: int | None = None,
    ivf_nprobe: int = 8,
    exact_search: str = "auto",
    calibration=None,
    ks: Sequence[int] = (1, 2, 5, 10, 20, 50),
    level: float = 0.9,
    batch_size: int = 16,
) -> LTAU:
    """Build (and with ``out_dir`` save) an LTAU estimator for ``adapter``, the final trained model.

    ``training_structures``: the label store (or its folder) the model was trained
    on, a ``{structure_index: Atoms}`` mapping, or a sequence indexed by the error
    log's ``structure_index``. ``error_log_path``: the ``error_log.npz`` of the
    training run. Descriptors are computed with ``adapter`` in the error log's atom
    order. ``e_min=None``: half the smallest positive logged error, at least 1e-6 eV/Å
    (symmetric structures log float-noise errors that carry no information).
    ``calibration``: held-out labelled data (a label store, whose "valid" split is
    used, LabelRecords, ``(atoms, forces)`` pairs, or Atoms carrying reference
    forces); without it ``scale=1`` and the given ``k`` are stored.
    """
    log_arrays = read_npz(error_log_path, kind="error log")
    needed = ("errors", "structure_index", "atom_index", "numbers")
    if any(key not in log_arrays for key in needed):
        raise ArtifactError(f"error log {error_log_path} lacks {[k for k in needed if k not in log_arrays]}")
    errors = log_arrays["errors"]
    sidx, aidx, numbers = (np.asarray(log_arrays[k], dtype=np.int64) for k in needed[1:])
    if errors.ndim != 2 or errors.shape[1] != len(sidx) or errors.shape[0] == 0:
        raise ArtifactError(f"error log {error_log_path} has errors of shape {errors.shape} for {len(sidx)} atoms")
    by_index = _structures_by_index(training_structures)
    order = list(dict.fromkeys(sidx.tolist()))  # structures in the log's order of appearance
    missing = [s for s in order if s not in by_index]
    if missing:
        raise ConfigurationError(f"error log {error_log_path} refers to structures {missing[:5]} that training_structures lacks")
    structures = [by_index[s] for s in order]
    sizes = {s: len(a) for s, a in zip(order, structures)}
    if any(a >= sizes[s] for s, a in zip(sidx.tolist(), aidx.tolist())):
        raise ConfigurationError(f"error log {error_log_path} names atoms beyond the sizes of training_structures: the log belongs to other structures")
    check_binding(log_arrays, error_log_path, weights_sha256=weights_sha256(adapter), structures=structures)
    desc_s, _ = compute_descriptors(adapter, structures, batch_size=batch_size)
    offsets = dict(zip(order, np.cumsum([0] + [len(a) for a in structures[:-1]])))
    rows = np.array([offsets[s] for s in sidx], dtype=np.int64) + aidx
    desc = np.ascontiguousarray(desc_s[rows])
    got = np.concatenate([np.asarray(a.numbers) for a in structures])[rows]
    if not np.array_equal(got, numbers):
        raise ConfigurationError(f"the atomic numbers in {error_log_path} do not match training_structures: the log belongs to other structures")
    if e_min is None:
        pos = errors[np.isfinite(errors) & (errors > 0)]
        e_min = max(float(pos.min()) * 0.5, 1e-6) if pos.size else 1e-6
    dists = error_distributions(errors, n_bins=n_bins, log_bins=log_bins, burn_in=burn_in, e_min=e_min, e_max=e_max)
    index = LTAUIndex(
        desc,
        numbers,
        kind=index_kind,
        per_element=per_element,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        ef_search=ef_search,
        ivf_nlist=ivf_nlist,
        ivf_nprobe=ivf_nprobe,
        exact_search=exact_search,
    )
    spec = descriptor_spec(adapter, desc.shape[1])
    extra = {
        "error_log": str(error_log_path),
        "error_log_sha256": sha256_file(error_log_path),
        "n_epochs": int(errors.shape[0]),
        "n_atoms": int(len(sidx)),
        "ids": {"structure_index": sidx, "atom_index": aidx},
    }
    ltau = LTAU(index, dists, model_id=adapter.model_id, model_sha256=adapter.sha256, spec=spec, calibration=Calibration(k=int(k), level=level), extra=extra)
    if calibration is not None:
        structs, forces = _calibration_data(calibration)
        if not structs:
            raise ConfigurationError("the calibration data hold no structures")
        vdesc, vnum, verr, _ = reference_force_errors(adapter, structs, forces, batch_size=batch_size)
        calibrate(ltau, vdesc, vnum, verr, ks=ks, level=level)
    if out_dir is not None:
        ltau.save(out_dir)
    return ltau
