"""``correct()``: the softening correction that the given DFT data support, chosen by cross-validation.

Candidates: ``raw`` (no correction), ``scalar`` (:func:`mlff_calc.softening.fit_scale`)
and ``elements`` (:mod:`mlff_calc.softening.elements`, one candidate per ridge
strength). Each is scored by the mean absolute force error (eV/Å) on held-out data:
leave-one-structure-out with two or more structures; with one structure, blocks of
atoms (slabs along the longest cell vector, so held-out atoms are not neighbours of
every fitted atom). ``auto`` takes the lowest score; raw wins ties, so a correction is
kept only when it beats the bare model on data it was not fitted on.

The result is a folder: ``correction.json`` (method, CV scores, data hash, base model)
plus the fit of the chosen method; ``mlff_calc.load(folder)`` and ``--model folder``
rebuild the corrected calculator.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from ..artifacts import check_manifest, read_json, write_json
from ..data.dft import DFTDataset
from ..errors import ArtifactError, ConfigurationError
from .elements import (
    Design,
    ElementFit,
    ElementSofteningLayer,
    build_design,
    fit_element_scales,
    solve_scales,
)
from .fit import _closed_form, fit_scale

log = logging.getLogger(__name__)

FORMAT = "mlff_calc.softening.correction"
FORMAT_VERSION = 1
MANIFEST = "correction.json"
METHODS = ("auto", "raw", "scalar", "elements")
RIDGES = (0.03, 0.3, 3.0)
FIT_FILES = {"scalar": "softening-fit.json", "elements": "element-fit.json"}


@dataclass
class Choice:
    """Cross-validation of the candidates and the method picked."""

    method: str
    candidate: str
    ridge: float | None
    scores: dict[str, float]
    fit_scores: dict[str, float]
    folds: str
    n_folds: int


def candidates(ridges=RIDGES) -> dict[str, tuple[str, float | None]]:
    """Candidate name -> (method, ridge)."""
    out = {"raw": ("raw", None), "scalar": ("scalar", None)}
    out.update({f"elements(ridge={r:g})": ("elements", float(r)) for r in ridges})
    return out


def folds_of(design: Design, n_blocks: int = 4, atoms=None) -> tuple[list[np.ndarray], str]:
    """Held-out masks over ``design``'s components and a description of how they were made."""
    structures = np.unique(design.structure)
    if len(structures) >= 2:
        return [design.structure == k for k in structures], f"leave-one-structure-out ({len(structures)} structures)"
    if atoms is None:
        raise ConfigurationError("one structure: folds of atoms need its Atoms")
    frac = atoms.get_scaled_positions(wrap=True)
    axis = int(np.argmax(atoms.cell.lengths()))
    block = np.minimum((frac[:, axis] * n_blocks).astype(int), n_blocks - 1)
    masks = [np.isin(design.atom, np.flatnonzero(block == b)) for b in range(n_blocks)]
    masks = [m for m in masks if m.any()]
    if len(masks) < 2:
        raise ConfigurationError("too few atoms to hold any out; give more DFT structures")
    return masks, f"{len(masks)} slabs of atoms along cell vector {axis + 1} of the one structure"


def _scales_for(method: str, ridge, train: Design) -> dict[int, float]:
    if method == "raw":
        return {}
    if method == "scalar":
        c = _closed_form([(1.0, train.base, train.dft)], train.source)
        return {z: c for z in train.elements}
    return solve_scales(train, ridge)[0]


def cross_validate(design: Design, folds: list[np.ndarray], ridges=RIDGES) -> dict[str, float]:
    """Held-out force MAE (eV/Å) of each candidate, pooled over the folds."""
    scores = {}
    for name, (method, ridge) in candidates(ridges).items():
        errors = []
        try:
            for held in folds:
                scales = _scales_for(method, ridge, design.rows(~held))
                test = design.rows(held)
                errors.append(np.abs(test.predict(scales) - test.dft))
        except ConfigurationError as exc:  # an ill-posed fit on some fold: the candidate drops out
            log.info("candidate %s dropped: %s", name, exc)
            continue
        scores[name] = float(np.mean(np.concatenate(errors)))
    return scores


def choose(design: Design, folds, folds_text: str, method: str = "auto", ridges=RIDGES) -> Choice:
    """Pick ``method`` (or, for ``auto``, the candidate with the lowest held-out MAE)."""
    if method not in METHODS:
        raise ConfigurationError(f"method {method!r} is not one of {METHODS}")
    scores = cross_validate(design, folds, ridges)
    table = candidates(ridges)
    fit_scores = {}
    for name, (m, ridge) in table.items():
        try:
            fit_scores[name] = float(np.mean(np.abs(design.predict(_scales_for(m, ridge, design)) - design.dft)))
        except ConfigurationError:
            pass
    if method == "auto":
        pool = [n for n in table if n in scores]
        best = min(pool, key=lambda n: (scores[n], n != "raw"))
    elif method == "elements":
        pool = [n for n in table if table[n][0] == "elements" and n in scores]
        if not pool:
            raise ConfigurationError("the per-element fit is ill-posed on these data; use method='scalar'")
        best = min(pool, key=scores.get)
    else:
        best = method
    m, ridge = table[best]
    return Choice(m, best, ridge, scores, fit_scores, folds_text, len(folds))


def data_hash(dataset: DFTDataset) -> str:
    """sha256 of the structures and DFT forces a correction was fitted on (rounded to 1e-8)."""
    digest = hashlib.sha256()
    items = ([dataset.reference] if dataset.reference is not None else []) + [s.atoms for s in dataset.structures]
    for atoms in items:
        for arr in (atoms.numbers, atoms.positions, atoms.cell.array):
            digest.update(np.ascontiguousarray(np.round(np.asarray(arr, float), 8)).tobytes())
    for s in dataset.structures:
        digest.update(np.ascontiguousarray(np.round(np.asarray(s.forces, float), 8)).tobytes())
    return digest.hexdigest()


def correct(calc, dataset: DFTDataset, method: str = "auto", *, out=None, ridges=RIDGES, subtract_reference: bool | None = None, n_blocks: int = 4):
    """A corrected calculator of ``calc``'s bare model fitted on ``dataset``; see the module docstring.

    ``method``: ``"auto"``, ``"raw"``, ``"scalar"`` or ``"elements"``. ``out``: folder to
    write the artifact to (``mlff_calc.load(out)`` rebuilds the calculator). The method and
    CV scores are in the returned calculator's ``parameters["softening_correction"]``.
    """
    from ..calculator import MLFFCalculator

    adapter = getattr(calc, "adapter", None)
    if adapter is None:
        raise ConfigurationError("correct() needs an mlff_calc MLFFCalculator")
    if getattr(calc, "layers", None):
        raise ConfigurationError(f"correct() corrects the bare model; this calculator has layers {[l.name for l in calc.layers]}")
    design = build_design(calc, dataset, subtract_reference=subtract_reference)
    folds, text = folds_of(design, n_blocks, dataset.structures[0].atoms)
    choice = choose(design, folds, text, method, ridges)
    fit = None
    if choice.method == "scalar":
        fit = fit_scale(calc, dataset, subtract_reference=design.subtract_reference, allow_mixed=True)
    elif choice.method == "elements":
        fit = fit_element_scales(calc, dataset, ridge=choice.ridge, design=design)
    log.info("softening correct on %s: %s (held-out MAE %s)", dataset.source, choice.method, choice.scores)
    manifest = _manifest(adapter, dataset, choice)
    if out is not None:
        save(out, manifest, fit)
    corrected = MLFFCalculator(adapter, layers=_layers(choice.method, fit), min_distance=calc.min_distance)
    corrected.parameters["softening_correction"] = _summary(manifest)
    return corrected


def _summary(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("method", "candidate", "ridge", "cv_mae", "cv_folds", "data_sha256", "source")}


def _manifest(adapter, dataset: DFTDataset, choice: Choice) -> dict:
    from ..models.registry import KNOWN_MODELS

    base = adapter.model_id if adapter.model_id in KNOWN_MODELS else (str(Path(adapter.source).resolve()) if adapter.source else adapter.model_id)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": choice.method,
        "candidate": choice.candidate,
        "ridge": choice.ridge,
        "cv_mae": choice.scores,
        "fit_mae": choice.fit_scores,
        "cv_folds": choice.folds,
        "n_folds": choice.n_folds,
        "units": {"cv_mae": "eV/Å", "fit_mae": "eV/Å"},
        "data_sha256": data_hash(dataset),
        "source": dataset.source,
        "n_structures": len(dataset),
        "chemical_systems": dataset.chemical_systems,
        "base_model": base,
        "model_id": adapter.model_id,
        "model_family": adapter.family,
        "model_sha256": adapter.sha256,
        "fit_file": FIT_FILES.get(choice.method),
        "mlff_calc_version": __version__,
    }


def save(folder, manifest: dict, fit) -> Path:
    """Write the fit, then the manifest (atomically, checksummed), into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fit is not None:
        fit.save(folder / manifest["fit_file"])
    write_json(folder / MANIFEST, manifest)
    return folder


def _layers(method: str, fit) -> list:
    from .layer import SofteningLayer

    if method == "scalar":
        return [SofteningLayer(fit.c, mode=fit.mode, fit=fit)]
    if method == "elements":
        return [ElementSofteningLayer(fit.by_number, mode=fit.mode, fit=fit)]
    return []


def is_correction(path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def load_corrected(folder, *, device="auto", dtype=None, layers=(), min_distance=0.5, verify=True):
    """The corrected calculator saved by :func:`correct`; ``layers`` go before the correction."""
    from ..calculator import MLFFCalculator
    from ..models.registry import load_adapter
    from .fit import SofteningFit

    folder = Path(folder)
    manifest = read_manifest(folder)
    adapter = load_adapter(manifest["base_model"], device=device, dtype=dtype, family=manifest.get("model_family"), verify=verify)
    if adapter.model_id != manifest["model_id"] or (manifest.get("model_sha256") and adapter.sha256 and adapter.sha256 != manifest["model_sha256"]):
        raise ArtifactError(f"softening correction {folder} was made for model '{manifest['model_id']}', but '{manifest['base_model']}' now loads '{adapter.model_id}' (or other weights)")
    fit = None
    if manifest["method"] == "scalar":
        fit = SofteningFit.load(folder / manifest["fit_file"])
    elif manifest["method"] == "elements":
        fit = ElementFit.load(folder / manifest["fit_file"])
    corrected = MLFFCalculator(adapter, layers=[*layers, *_layers(manifest["method"], fit)], min_distance=min_distance)
    corrected.parameters["softening_correction"] = {**_summary(manifest), "folder": str(folder)}
    return corrected


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    manifest = read_json(path, kind="softening correction")
    check_manifest(manifest, fmt=FORMAT, versions=(FORMAT_VERSION,), path=path)
    for key in ("method", "base_model", "model_id", "cv_mae", "data_sha256"):
        if key not in manifest:
            raise ArtifactError(f"softening correction {path} lacks '{key}'")
    if manifest["method"] not in METHODS[1:]:
        raise ArtifactError(f"softening correction {path}: method {manifest['method']!r} is not one of {METHODS[1:]}")
    if manifest["method"] != "raw" and manifest.get("fit_file") != FIT_FILES[manifest["method"]]:
        raise ArtifactError(f"softening correction {path}: fit_file {manifest.get('fit_file')!r} does not belong to method {manifest['method']}")
    return manifest
