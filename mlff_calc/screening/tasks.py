"""Task functions: what a worker does with one chunk of structures.

Every task function has the signature ``fn(calc, payload)`` and lives at module
level (Ray sends it by name). Screening tasks get ``{"task", "params",
"indices", "structures"}`` and return one item per structure::

    {"index": i, "ok": True, "results": {...}, "atoms": Atoms or None, "error": None, "wall_s": t}

``results`` holds floats, ints, bools and numpy arrays in the units of
:data:`UNITS`; ``atoms`` is an output structure (the relaxed one) where the
task makes one. A structure that fails (bad input, non-finite output) fails
alone: single points are evaluated as one batch per chunk, and only when that
batch raises are its structures evaluated one by one to find the bad ones.
"""

from __future__ import annotations

import time

import numpy as np

from ..executors.base import error_text

UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³ (Voigt-6, positive is tensile)", "frequency": "THz", "wall_s": "s", "softening": "dimensionless (model/DFT force slope)", "mae": "eV/Å"}

#: default parameters of each screening task
DEFAULTS = {
    "singlepoint": {},
    "relax": {"relax_cell": True, "fmax_eV_per_A": 0.05, "max_steps": 200, "optimizer": "FIRE"},
    "phonons": {"supercell": [2, 2, 2], "displacement": 0.01, "mesh": [8, 8, 8]},
    "softening": {},
}


def params_for(task: str, params: dict | None = None) -> dict:
    """The task's defaults updated by ``params``; unknown tasks or keys raise ConfigurationError."""
    from ..errors import ConfigurationError

    if task not in DEFAULTS:
        raise ConfigurationError(f"unknown screening task {task!r}; choose one of {sorted(DEFAULTS)}")
    unknown = set(params or {}) - set(DEFAULTS[task])
    if unknown:
        raise ConfigurationError(f"task {task!r} takes no parameter(s) {sorted(unknown)}; it takes {sorted(DEFAULTS[task])}")
    return {**DEFAULTS[task], **(params or {})}


def screen_chunk(calc, payload: dict) -> list[dict]:
    """Run the screening task named in ``payload`` on its structures."""
    task, params = payload["task"], payload["params"]
    structures, indices = payload["structures"], payload["indices"]
    if task == "singlepoint":
        return _singlepoint(calc, structures, indices)
    one = {"relax": _relax_one, "phonons": _phonons_one, "softening": _softening_one}[task]
    return [_guarded(one, calc, atoms, index, params) for atoms, index in zip(structures, indices)]


def _item(index, results=None, atoms=None, error=None, wall_s=0.0) -> dict:
    return {"index": int(index), "ok": error is None, "results": results or {}, "atoms": atoms, "error": error, "wall_s": float(wall_s)}


def _guarded(one, calc, atoms, index, params) -> dict:
    start = time.perf_counter()
    try:
        results, out = one(calc, atoms, params)
        return _item(index, results, out, wall_s=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - one structure fails, the others go on
        return _item(index, error=error_text(exc), wall_s=time.perf_counter() - start)


def _properties(structures) -> tuple[str, ...]:
    return ("energy", "forces", "stress") if all(a.pbc.all() for a in structures) else ("energy", "forces")


def _plain(res: dict) -> dict:
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64)) for k, v in res.items() if k in ("energy", "forces", "stress")}


def _singlepoint(calc, structures, indices) -> list[dict]:
    start = time.perf_counter()
    try:
        batch = calc.evaluate(list(structures), _properties(structures))
    except Exception:  # noqa: BLE001 - find the structures that fail; the rest are evaluated alone
        return [_guarded(lambda c, a, p: (_plain(c.evaluate([a], _properties([a]))[0]), None), calc, atoms, index, {}) for atoms, index in zip(structures, indices)]
    wall = (time.perf_counter() - start) / len(structures)
    return [_item(index, _plain(res), wall_s=wall) for index, res in zip(indices, batch)]


def _relax_one(calc, atoms, params):
    from ..workflows.relax import Relax

    relax_cell = bool(params["relax_cell"]) and bool(atoms.pbc.all())
    res = Relax(atoms, calc, relax_cell=relax_cell, fmax_eV_per_A=params["fmax_eV_per_A"], max_steps=params["max_steps"], optimizer=params["optimizer"], progress=False).run()
    results = {
        "energy": float(res.energy),
        "converged": bool(res.converged),
        "n_steps": int(res.n_steps),
        "max_force": float(res.max_force_eV_per_A),
        "volume": float(res.atoms.get_volume()) if res.atoms.pbc.all() else float("nan"),
    }
    final = res.atoms.copy()
    final.calc = None
    return results, final


def _phonons_one(calc, atoms, params):
    from ..workflows.phonons import Phonons

    ph = Phonons(atoms, calc, supercell_matrix=params["supercell"], displacement=params["displacement"], mesh=params["mesh"], band_npoints=11, progress=False)
    res = ph.run()
    t = np.asarray(res.temperatures_K)
    k300 = int(np.argmin(np.abs(t - 300.0)))
    results = {
        "min_frequency": float(res.min_frequency_THz),
        "max_frequency": float(res.max_frequency_THz),
        "has_imaginary_modes": bool(res.has_imaginary_modes),
        "n_displacements": int(res.n_displacements),
        "free_energy_300K_kJ_per_mol": float(res.free_energy_kJ_per_mol[k300]),
        "dos_frequencies": np.asarray(res.dos_frequencies_THz, dtype=np.float64),
        "dos": np.asarray(res.dos_states_per_THz, dtype=np.float64),
    }
    return results, None


def _softening_one(calc, atoms, params):
    """Softening of the model against the DFT forces stored with the structure (extxyz ``forces``, ``dft_forces``, ...)."""
    from ..data.dft import DFTDataset, dft_structure
    from ..softening.measure import measure

    labelled = dft_structure(atoms, "structures:0")
    report = measure(calc, DFTDataset([labelled], "screen"), subtract_reference=False)
    row = report.structures[0]
    return {"softening": float(row.s), "mae": float(row.mae), "cmae": float(row.cmae), "rmse": float(row.rmse), "n_components": int(row.n_components)}, None
