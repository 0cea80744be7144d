"""The hook protocol every layer follows.

A calculation runs ``before`` hooks in order, one batched adapter call, then the
``after`` hooks in reverse order::

    for layer in layers: request = layer.before(atoms_list, request)
    results = adapter.evaluate(atoms_list, request.properties, cutoff=request.cutoff)
    for layer in reversed(layers): results = layer.after(atoms_list, results)

A layer that works on per-atom descriptors can put a callable in
``request.on_descriptors[name]``: the adapter calls it with the descriptors as
soon as the forward pass has made them, before the backward pass, and the
layer finds its return value in ``result["descriptor_jobs"]`` (so work on
another thread overlaps the backward pass).

A layer checks at :meth:`Layer.bind` time that the adapter offers what it needs,
so a mismatch fails when the calculator is built, not on its first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Request:
    """What one adapter call must produce."""

    properties: set[str] = field(default_factory=lambda: {"energy", "forces"})
    cutoff: float | None = None
    #: layer name -> ``fn(descriptors [N, d] float32, numbers [N], n_atoms per structure)``
    on_descriptors: dict = field(default_factory=dict)
    #: ``{Z: w}``: forces/stress/Hessian of ``E + Σ_i (w_Z_i - 1) E_i`` (per-element softening)
    node_weights: dict | None = None


class Layer:
    """Base class: every hook is the identity."""

    name = "layer"
    #: outputs this layer may leave out of a calculation until they are asked for (:meth:`complete`)
    deferrable: tuple[str, ...] = ()

    def bind(self, adapter) -> None:
        """Check the adapter offers what this layer needs; raise ConfigurationError if not."""

    def before(self, atoms_list, request: Request) -> Request:
        return request

    def after(self, atoms_list, results: list[dict]) -> list[dict]:
        return results

    def transform_hessian(self, atoms, hessian: np.ndarray) -> np.ndarray:
        return hessian

    def complete(self, atoms, result: dict) -> bool:
        """Add the outputs deferred at the last calculation of ``atoms`` to ``result``, without a model call.

        False (``result`` untouched) when this layer holds nothing for exactly these atoms.
        """
        return False

    def reset(self) -> None:
        """Forget any per-system state (e.g. a chosen radius)."""

    def describe(self) -> dict:
        """Plain-data summary for run summaries."""
        return {"name": self.name}
