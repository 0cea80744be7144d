"""A worker: one loaded model, kept warm, that runs task functions on chunks.

Workers in other processes (Ray actors) cannot be handed a calculator object
(it holds threads and device memory), so they get a :class:`ModelRecipe` — the
model name or path, device, dtype and layer files — and load the model once.
Each worker reports the identity of what it loaded (model id, weights sha256,
layers, dtype), and the driver refuses a worker whose identity differs from its
own, so results never mix two models.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigurationError


@dataclass(frozen=True)
class ModelRecipe:
    """How to load a calculator anywhere: ``mlff_calc.load(model, device, dtype)`` plus its layers.

    ``layers``: picklable zero-argument factories, one per layer, called in each
    worker, e.g. ``functools.partial(SofteningLayer.from_file, "fit.json")``.
    ``compile``: compile a distilled student (:meth:`StudentAdapter.compile`) once per worker.
    """

    model: str
    device: str = "auto"
    dtype: str | None = None
    layers: tuple[Callable, ...] = field(default_factory=tuple)
    compile: bool = False

    def load(self):
        from ..calculator import load

        calc = load(self.model, device=self.device, dtype=self.dtype, layers=[make() for make in self.layers])
        if self.compile:
            from ..models.registry import compile_student

            compile_student(calc.adapter)
        return calc

    @classmethod
    def of(cls, calc) -> ModelRecipe:
        """The recipe of an mlff_calc calculator without layers (a path source, or its model name)."""
        adapter = calc.adapter
        if getattr(calc, "layers", None):
            raise ConfigurationError(
                f"a calculator with layers {[type(layer).__name__ for layer in calc.layers]} cannot be rebuilt on remote workers; "
                "pass a ModelRecipe(model, device, dtype, layers=(functools.partial(SofteningLayer.from_file, 'fit.json'),)) instead"
            )
        source = adapter.source
        model = source if source and Path(source).exists() else adapter.model_id
        device = adapter.device.type if adapter.device.type == "cpu" else str(adapter.device)
        return cls(model=str(model), device=device, dtype=str(adapter.dtype).removeprefix("torch."))


def identity(calc) -> dict:
    """What makes two loaded models the same (see mlff_calc.models.identity.teacher_identity)."""
    from ..calculator import as_calculator
    from ..models.identity import teacher_identity

    return teacher_identity(as_calculator(calc))


class Worker:
    """Holds one calculator and runs ``fn(calc, payload)`` for each chunk it is given."""

    def __init__(self, model, *, threads: int | None = None):
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
            try:
                from threadpoolctl import threadpool_limits

                self._blas = threadpool_limits(limits=int(threads), user_api="blas")
            except ImportError:  # pragma: no cover
                self._blas = None
        self.calc = model.load() if isinstance(model, ModelRecipe) else model
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def identity(self) -> dict:
        return identity(self.calc)

    def pid(self) -> int:
        return os.getpid()

    def hello(self) -> dict:
        """Identity of the loaded model and this process id (answered once the model is loaded)."""
        return {"identity": self.identity(), "pid": os.getpid()}

    def run(self, fn: Callable, payload) -> tuple:
        """``(result, wall seconds, worker name)``; exceptions propagate to the executor."""
        start = time.perf_counter()
        result = fn(self.calc, payload)
        return result, time.perf_counter() - start, self.name
