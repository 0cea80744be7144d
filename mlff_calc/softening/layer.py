"""The softening correction of Deng et al. 2024 as a calculator layer.

Forces, stress and the Hessian are multiplied by ``c`` (so phonon frequencies
scale by √c). The energy depends on ``mode``:

- ``"reference"`` (default): ``E' = E_ref + c (E - E_ref)`` with ``E_ref`` the
  model's own per-element reference energies summed over the composition. Only the
  part of the energy the model learned beyond those references is stretched, so
  formation and reaction energies are scaled, not shifted by ``(c-1) E_ref``.
- ``"total"``: ``E' = c E``, the paper's scaling of the total energy. Forces and
  stress are the same as in ``"reference"`` mode, but energy differences between
  different compositions change by ``(c-1) ΔE_ref`` as well.

Per-atom energies follow the same rule per atom, so they still sum to ``E'``.
``results["contributions"]["softening"]`` holds ``E' - E``.

The layer declares ``changes_outputs``: a calculator moves it to the end of its
layer list, so its ``after`` runs first and scales the model's output only, not
other layers' corrections.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np

from ..data.dft import chemical_system
from ..errors import ArtifactError, ConfigurationError, InvalidStructureError
from ..layers.base import Layer, Request
from .fit import MODES, SofteningFit, composition_energy

log = logging.getLogger(__name__)


class SofteningLayer(Layer):
    """Scale the model's potential energy surface by ``c`` (``c > 1`` stiffens a softened model).

    ``fit``: the :class:`~mlff_calc.softening.SofteningFit` ``c`` came from; it binds the
    layer to that fit's model and chemical system. Structures of another chemical
    system warn once per system, or raise InvalidStructureError with ``strict=True``.
    """

    name = "softening"
    changes_outputs = True

    def __init__(self, c: float, *, mode: str = "reference", fit: SofteningFit | None = None, strict: bool = False):
        if isinstance(c, bool) or not isinstance(c, (int, float, np.floating)) or not math.isfinite(c) or c <= 0:
            raise ConfigurationError(f"softening scale c must be a finite number > 0, not {c!r}")
        if mode not in MODES:
            raise ConfigurationError(f"softening mode {mode!r} is not one of {MODES}")
        self.c = float(c)
        self.mode = mode
        self.fit = fit
        self.strict = bool(strict)
        self._refs: dict[int, float] = {}
        self._model_id: str | None = None
        self._warned: set[str] = set()

    @classmethod
    def from_file(cls, path, strict: bool = False, *, mode: str | None = None) -> "SofteningLayer":
        """A layer from a saved fit; ``mode`` defaults to the mode the fit was made for."""
        fit = SofteningFit.load(path)
        return cls(fit.c, mode=mode or fit.mode, fit=fit, strict=strict)

    @classmethod
    def from_option(cls, value: str, *, verb: str | None = None) -> "SofteningLayer":
        """The layer of the command-line value ``--softening FIT.json``."""
        return cls.from_file(value)

    def bind(self, adapter) -> None:
        if self.fit is not None:
            self._check_model(adapter)
        self._model_id = adapter.model_id
        if self.mode == "reference":
            self._refs = dict(adapter.reference_energies())
            if not self._refs:
                raise ConfigurationError(f"model {adapter.model_id} has no per-element reference energies; use SofteningLayer(c, mode='total')")

    def _check_model(self, adapter) -> None:
        fit = self.fit
        where = fit.path or fit.source
        if fit.model_id != adapter.model_id:
            raise ArtifactError(f"softening fit {where} was made for model '{fit.model_id}', not '{adapter.model_id}'; a softening scale belongs to one model: fit c again for this one")
        if fit.model_sha256 and adapter.sha256 and fit.model_sha256 != adapter.sha256:
            raise ArtifactError(
                f"softening fit {where} was made for '{fit.model_id}' with weights sha256 {fit.model_sha256[:12]}..., "
                f"but the loaded weights have sha256 {adapter.sha256[:12]}...; fit c again for these weights"
            )

    def before(self, atoms_list, request: Request) -> Request:
        if self.fit is not None:
            for atoms in atoms_list:
                self._check_system(atoms)
        return request

    def _check_system(self, atoms) -> None:
        system = chemical_system(atoms)
        if system in self.fit.chemical_systems:
            return
        message = (
            f"softening scale c = {self.c:.4f} was fitted on chemical system {self.fit.chemical_system} "
            f"({self.fit.source}); applying it to {system} ({atoms.get_chemical_formula()}) is an extrapolation"
        )
        if self.strict:
            raise InvalidStructureError(message + "; strict=True refuses it")
        if system not in self._warned:
            self._warned.add(system)
            warnings.warn(message, UserWarning, stacklevel=4)
            log.warning(message)

    def after(self, atoms_list, results: list[dict], request: Request) -> list[dict]:
        return [self._scale(atoms, res) for atoms, res in zip(atoms_list, results)]

    def _scale(self, atoms, res: dict) -> dict:
        c = self.c
        res = dict(res)
        energy = float(res["energy"])
        e_ref = composition_energy(atoms.numbers, self._refs) if self.mode == "reference" else 0.0
        site_ref = np.array([self._refs[int(z)] for z in atoms.numbers]) if self.mode == "reference" else np.zeros(len(atoms))
        res["energy"] = e_ref + c * (energy - e_ref)
        if "energies" in res:
            res["energies"] = site_ref + c * (np.asarray(res["energies"]) - site_ref)
        for key in ("forces", "stress"):
            if key in res:
                res[key] = c * np.asarray(res[key])
        res["contributions"] = {**res.get("contributions", {}), self.name: res["energy"] - energy}
        return res

    def transform_hessian(self, atoms, hessian: np.ndarray) -> np.ndarray:
        return self.c * np.asarray(hessian)

    def reset(self) -> None:
        self._warned.clear()

    def describe(self) -> dict:
        info = {"name": self.name, "c": self.c, "mode": self.mode, "strict": self.strict}
        if self.fit is not None:
            info.update(fit=self.fit.path or self.fit.source, chemical_system=self.fit.chemical_system, model_id=self.fit.model_id)
        return info
