"""The one ASE calculator of mlff_calc: a model adapter plus optional layers."""

from __future__ import annotations

import logging
import threading
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .checks import MIN_DISTANCE
from .errors import ConfigurationError, NotImplementedProperty
from .layers.base import Layer, Request

log = logging.getLogger(__name__)

BASE_PROPERTIES = ("energy", "free_energy", "energies", "forces", "stress")
#: what an adapter call can be asked for
MODEL_PROPERTIES = {"energy", "forces", "stress", "energies", "descriptors"}


class MLFFCalculator(Calculator):
    """ASE calculator for any mlff_calc model adapter.

    Results are float64 numpy arrays in ASE units: energy in eV, forces in eV/Å,
    stress as Voigt-6 in eV/Å³ (positive is tensile). Stress is computed for
    cells periodic in all three directions; asked for another cell it raises
    :class:`~mlff_calc.errors.StressNotDefined`, an ASE ``PropertyNotImplementedError``.
    CHGNet also gives ASE's ``magmoms`` (μB per atom). Layers add their own results
    (for example ``forces_uncertainty``) and report their share under
    ``results["contributions"][layer.name]``.

    ``layers`` keep their order, except that layers changing the model's energy,
    forces or stress (``changes_outputs``, e.g. softening) are moved to the end:
    ``after`` hooks run in reverse order, so theirs act on the model's outputs
    before any other layer's. At most one layer may set the graph cutoff.

    One calculator may be used from several threads: its ASE calls
    (``get_property``, ``calculate``) run one at a time, each on its own atoms.
    For parallel work use :meth:`evaluate` on a list, or one copy per thread
    (calculators pickle and deep-copy, layers included).

    ``min_distance`` (Å): atoms closer than this raise InvalidStructureError;
    ``None`` turns the check off.
    """

    def __init__(self, adapter, layers: Sequence[Layer] = (), *, min_distance: float | None = MIN_DISTANCE, **kwargs):
        self._lock = threading.RLock()  # before ASE's __init__, which calls reset()
        super().__init__(**kwargs)
        self.adapter = adapter
        layers = list(layers)
        cutters = [layer.name for layer in layers if layer.sets_cutoff]
        if len(cutters) > 1:
            raise ConfigurationError(f"layers {cutters} all set the graph cutoff; use one layer that sets the cutoff")
        self.layers = [layer for layer in layers if not layer.changes_outputs] + [layer for layer in layers if layer.changes_outputs]
        self.min_distance = min_distance
        for layer in self.layers:
            layer.bind(adapter)
        # a fresh list per instance: never extend ASE's shared class attribute
        self.implemented_properties = list(BASE_PROPERTIES)
        if "magmoms" in adapter.implemented_properties:
            self.implemented_properties.append("magmoms")
        for layer in self.layers:
            for prop in layer.provides:
                if prop not in self.implemented_properties:
                    self.implemented_properties.append(prop)
        self.parameters = {"model": adapter.model_id, "device": str(adapter.device), "dtype": str(adapter.dtype).removeprefix("torch."), "layers": [l.describe() for l in self.layers]}

    def __repr__(self) -> str:
        names = ", ".join(l.name for l in self.layers)
        return f"MLFFCalculator({self.adapter!r}, layers=[{names}])"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)  # a lock does not pickle; the copy gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def get_property(self, name, atoms=None, allow_calculation=True):
        with self._lock:  # the check of the cached atoms, the calculation and the read are one step
            return super().get_property(name, atoms, allow_calculation)

    def reset(self) -> None:
        with self._lock:
            super().reset()

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes):
        with self._lock:
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
        with self._lock:
            if self.results and self.atoms is not None:
                self._complete(set().union(*(layer.deferrable for layer in self.layers)) - set(self.results))
            return self.results

    def _complete(self, missing: set) -> bool:
        """Fill ``missing`` from the layers that deferred them for the current atoms; False if they cannot."""
        layers = [layer for layer in self.layers if missing & set(layer.deferrable)]
        if not missing or not layers or not missing <= set().union(*(layer.deferrable for layer in layers)):
            return False
        return all([layer.complete(self.atoms, self.results) for layer in layers])  # every layer tries

    def _request(self, atoms_list, properties) -> Request:
        """The request of one call after every layer's ``before``; only a ``sets_cutoff`` layer may set the cutoff."""
        request = Request(properties=set(properties) - {"free_energy"}, requested=frozenset(properties))
        for layer in self.layers:
            cutoff = request.cutoff
            request = layer.before(atoms_list, request)
            if request.cutoff != cutoff and not layer.sets_cutoff:
                raise ConfigurationError(f"layer {layer.name!r} changed the graph cutoff but does not declare sets_cutoff")
        return request

    def evaluate(self, atoms_list: Sequence[Atoms], properties=("energy", "forces")) -> list[dict]:
        """Batched evaluation of many structures with all layers applied (one forward pass)."""
        if len(atoms_list) == 0:
            raise ConfigurationError("no structures to evaluate")
        request = self._request(atoms_list, properties)
        model_props = request.properties & MODEL_PROPERTIES
        hooks = {}
        if "descriptors" in model_props:
            hooks = {layer.name: fn for layer in self.layers if (fn := layer.descriptor_hook(request)) is not None}
        on_descriptors = (lambda *args: {name: fn(*args) for name, fn in hooks.items()}) if hooks else None
        weights = {"node_weights": request.node_weights} if request.node_weights else {}
        results = self.adapter.evaluate(atoms_list, model_props, cutoff=request.cutoff, min_distance=self.min_distance, on_descriptors=on_descriptors, **weights)
        for res in results:
            jobs, b = res.pop("descriptor_jobs", ({}, 0))
            request.jobs.append({name: (value, b) for name, value in jobs.items()})
            res.setdefault("contributions", {})
        for layer in reversed(self.layers):
            results = layer.after(atoms_list, results, request)
        for res in results:
            res["free_energy"] = res["energy"]
        return results

    def get_hessian(self, atoms: Atoms | None = None, rows=None, method: str = "auto") -> np.ndarray:
        """Energy Hessian rows (eV/Å²) with layers applied; forces are -∇E so dF/dx = -H."""
        atoms = self.atoms if atoms is None else atoms
        request = self._request([atoms], {"energy", "forces"})
        weights = {"node_weights": request.node_weights} if request.node_weights else {}
        hessian = self.adapter.hessian(atoms, rows, method=method, cutoff=request.cutoff, min_distance=self.min_distance, **weights)
        for layer in reversed(self.layers):
            hessian = layer.transform_hessian(atoms, hessian)
        return hessian

    def adapt(self, structures) -> dict:
        """Test-time training on ``structures`` by the layers that adapt (TTT); drops cached results."""
        adapting = [layer for layer in self.layers if layer.adapts]
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


def load(model="chgnet", device="auto", dtype=None, *, layers=(), family=None, min_distance=0.5, verify=True):
    """Build an ASE calculator from a model name or a local path.

    ``model``: a name (``"chgnet"``, ``"m3gnet-mp-2021.2.8"``, ``"mace-mp-0-medium"``, ...;
    ``mlff-calc models`` lists them) or a path to a model file or folder. Names are
    resolved in ``$MLFF_CALC_MODEL_DIR`` then ``~/.cache/mlff_calc/models``; nothing
    is downloaded. ``device``: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``. ``dtype``:
    ``None`` (the family default), ``"float32"`` or ``"float64"``. ``layers``: layer
    objects, applied in order.
    """
    from .models.registry import load_adapter

    adapter = load_adapter(model, device=device, dtype=dtype, family=family, verify=verify)
    return MLFFCalculator(adapter, layers=list(layers), min_distance=min_distance)
