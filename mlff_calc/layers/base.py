"""The hook protocol every layer follows.

A calculation builds one :class:`Request`, runs the ``before`` hooks in order,
one batched adapter call, then the ``after`` hooks in reverse order::

    for layer in layers: request = layer.before(atoms_list, request)
    results = adapter.evaluate(atoms_list, request.properties, cutoff=request.cutoff)
    for layer in reversed(layers): results = layer.after(atoms_list, results, request)

The request is made per call and handed to ``after`` too, so whatever a layer
needs to carry from ``before`` to ``after`` lives there, never on the layer:
layers are re-entrant and one calculator may serve several threads.

What a layer declares (class attributes, read by the calculator):

- ``provides``: result keys it adds (they become calculator properties);
- ``deferrable``: the subset it may leave out until asked for (:meth:`Layer.complete`);
- ``sets_cutoff``: it sets ``request.cutoff``; a calculator takes at most one such
  layer, and a layer that does not declare it may not change the cutoff;
- ``changes_outputs``: its ``after`` changes the model's energy, forces or stress
  (softening). The calculator places such layers last in its list, so their
  ``after`` runs first, on the model's own outputs, before any other layer's;
- ``adapts``: it implements :meth:`Layer.adapt` (test-time training).

The one post-forward descriptor hook: :meth:`Layer.descriptor_hook` may return a
function ``fn(descriptors [N, d] float32, numbers [N], n_atoms per structure)``;
the adapter calls it as soon as the forward pass has made the descriptors,
before the backward pass (so work on another thread overlaps it), and the
layer finds its return value in ``after`` with :meth:`Request.descriptor_job`.

A layer checks at :meth:`Layer.bind` time that the adapter offers what it needs,
so a mismatch fails when the calculator is built, not on its first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigurationError


@dataclass
class Request:
    """What one adapter call must produce, and the per-call state the layers share."""

    properties: set[str] = field(default_factory=lambda: {"energy", "forces"})
    cutoff: float | None = None
    #: what the caller asked for, before any layer added to ``properties``
    requested: frozenset = frozenset()
    #: per structure: layer name -> ``(value of its descriptor hook for that pass, index in the pass)``
    jobs: list = field(default_factory=list)

    def descriptor_job(self, layer: "Layer", index: int):
        """``(value, index in its forward pass)`` of ``layer``'s descriptor hook for structure ``index``, or None."""
        if index >= len(self.jobs):
            return None
        return self.jobs[index].get(layer.name)

    #: ``{Z: w}``: forces/stress/Hessian of ``E + Σ_i (w_Z_i - 1) E_i`` (per-element softening)
    node_weights: dict | None = None


class Layer:
    """Base class: every hook is the identity."""

    name = "layer"
    #: result keys this layer adds
    provides: tuple[str, ...] = ()
    #: outputs this layer may leave out of a calculation until they are asked for (:meth:`complete`)
    deferrable: tuple[str, ...] = ()
    #: whether ``before`` sets ``request.cutoff`` (at most one layer per calculator)
    sets_cutoff: bool = False
    #: whether ``after`` changes the model's energy, forces or stress (run first, on the model's outputs)
    changes_outputs: bool = False
    #: whether :meth:`adapt` is implemented
    adapts: bool = False

    def bind(self, adapter) -> None:
        """Check the adapter offers what this layer needs; raise ConfigurationError if not."""

    def before(self, atoms_list, request: Request) -> Request:
        return request

    def descriptor_hook(self, request: Request) -> Callable | None:
        """A function for the forward pass's descriptors (see the module docstring), or None."""
        return None

    def after(self, atoms_list, results: list[dict], request: Request) -> list[dict]:
        return results

    def transform_hessian(self, atoms, hessian: np.ndarray) -> np.ndarray:
        return hessian

    def complete(self, atoms, result: dict) -> bool:
        """Add the outputs deferred at the last calculation of ``atoms`` to ``result``, without a model call.

        False (``result`` untouched) when this layer holds nothing for exactly these atoms.
        """
        return False

    def adapt(self, structures) -> dict:
        """Test-time training on ``structures`` (layers with ``adapts = True``); returns the history."""
        raise ConfigurationError(f"the {self.name} layer does not adapt")

    def reset(self) -> None:
        """Forget any per-system state (e.g. a chosen radius)."""

    def describe(self) -> dict:
        """Plain-data summary for run summaries."""
        return {"name": self.name}
