"""The one ASE calculator of mlff_calc: a model adapter plus optional layers."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .checks import MIN_DISTANCE
from .errors import ConfigurationError, NotImplementedProperty
from .layers.base import Layer, Request

log = logging.getLogger(__name__)

BASE_PROPERTIES = ("energy", "free_energy", "energies", "forces", "stress")


class MLFFCalculator(Calculator):
    """ASE calculator for any mlff_calc model adapter.

    Results are float64 numpy arrays in ASE units: energy in eV, forces in eV/Å,
    stress as Voigt-6 in eV/Å³ (positive is tensile). Stress is computed for
    cells periodic in all three directions. Layers add their own results (for
    example ``forces_uncertainty``) and report their share under
    ``results["contributions"][layer.name]``.

    ``min_distance`` (Å): atoms closer than this raise InvalidStructureError;
    ``None`` turns the check off.
    """

    def __init__(self, adapter, layers: Sequence[Layer] = (), *, min_distance: float | None = MIN_DISTANCE, **kwargs):
        super().__init__(**kwargs)
        self.adapter = adapter
        self.layers = list(layers)
        self.min_distance = min_distance
        for layer in self.layers:
            layer.bind(adapter)
        # a fresh list per instance: never extend ASE's shared class attribute
        self.implemented_properties = list(BASE_PROPERTIES)
        for layer in self.layers:
            for prop in getattr(layer, "provides", ()):
                if prop not in self.implemented_properties:
                    self.implemented_properties.append(prop)
        self.parameters = {"model": adapter.model_id, "device": str(adapter.device), "dtype": str(adapter.dtype).removeprefix("torch."), "layers": [l.describe() for l in self.layers]}

    def __repr__(self) -> str:
        names = ", ".join(l.name for l in self.layers)
        return f"MLFFCalculator({self.adapter!r}, layers=[{names}])"

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes):
        if not system_changes and self.results and self._complete(set(properties) - set(self.results)):
            return  # outputs a layer deferred, computed now for the same atoms without a model call
        super().calculate(atoms, properties, system_changes)
        unknown = set(properties) - set(self.implemented_properties)
        if unknown:
            raise NotImplementedProperty(f"{sorted(unknown)} not implemented; this calculator gives {self.implemented_properties}")
        want = {"energy", "forces"} | set(properties)
        if self.atoms.pbc.all():
            want.add("stress")
        self.results = self.evaluate([self.atoms], want)[0]

    def complete_results(self) -> dict:
        """``results`` with every output a layer deferred (e.g. ``LTAULayer(on_demand=True)``) added; no model call."""
        if self.results and self.atoms is not None:
            self._complete(set().union(*(layer.deferrable for layer in self.layers)) - set(self.results))
        return self.results

    def _complete(self, missing: set) -> bool:
        """Fill ``missing`` from the layers that deferred them for the current atoms; False if they cannot."""
        layers = [layer for layer in self.layers if missing & set(layer.deferrable)]
        if not missing or not layers or not missing <= set().union(*(layer.deferrable for layer in layers)):
            return False
        return all([layer.complete(self.atoms, self.results) for layer in layers])  # every layer tries

    def evaluate(self, atoms_list: Sequence[Atoms], properties=("energy", "forces")) -> list[dict]:
        """Batched evaluation of many structures with all layers applied (one forward pass)."""
        if len(atoms_list) == 0:
            raise ConfigurationError("no structures to evaluate")
        request = Request(properties=set(properties) - {"free_energy"})
        for layer in self.layers:
            request = layer.before(atoms_list, request)
        model_props = request.properties & {"energy", "forces", "stress", "energies", "descriptors"}
        hooks = request.on_descriptors if "descriptors" in model_props else {}
        on_descriptors = (lambda *args: {name: fn(*args) for name, fn in hooks.items()}) if hooks else None
        results = self.adapter.evaluate(atoms_list, model_props, cutoff=request.cutoff, min_distance=self.min_distance, on_descriptors=on_descriptors)
        for res in results:
            res.setdefault("contributions", {})
        for layer in reversed(self.layers):
            results = layer.after(atoms_list, results)
        for res in results:
            res.pop("descriptor_jobs", None)
            res["free_energy"] = res["energy"]
        return results

    def get_hessian(self, atoms: Atoms | None = None, rows=None, method: str = "auto") -> np.ndarray:
        """Energy Hessian rows (eV/Å²) with layers applied; forces are -∇E so dF/dx = -H."""
        atoms = self.atoms if atoms is None else atoms
        cutoff = None
        request = Request(properties={"energy", "forces"})
        for layer in self.layers:
            request = layer.before([atoms], request)
            cutoff = request.cutoff
        hessian = self.adapter.hessian(atoms, rows, method=method, cutoff=cutoff, min_distance=self.min_distance)
        for layer in reversed(self.layers):
            hessian = layer.transform_hessian(atoms, hessian)
        return hessian

    def adapt(self, structures) -> dict:
        """Test-time training on ``structures`` by the layers that adapt (TTT); drops cached results."""
        adapting = [layer for layer in self.layers if hasattr(layer, "adapt")]
        if not adapting:
            raise ConfigurationError("no layer of this calculator adapts; attach mlff_calc.layers.ttt.TTTLayer()")
        history = {layer.name: layer.adapt(structures) for layer in adapting}
        self.reset()
        return history

    def reset_layers(self) -> None:
        """Forget per-system layer state (a chosen radius, ...) and cached results."""
        for layer in self.layers:
            layer.reset()
        self.reset()


def as_calculator(model) -> MLFFCalculator:
    """An MLFFCalculator for ``model`` (an MLFFCalculator already, or a bare model adapter)."""
    if isinstance(model, MLFFCalculator):
        return model
    if hasattr(model, "compute") and hasattr(model, "hessian"):
        return MLFFCalculator(model)
    raise ConfigurationError(f"the teacher must be an mlff_calc calculator or model adapter, not {type(model).__name__}")
