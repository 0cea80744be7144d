"""Test-time training as a calculator layer (Kreiman & Krishnapriyan 2025).

::

    calc = mlff_calc.load("ttt-student/", layers=[TTTLayer()])
    calc.adapt(test_structures)        # prior labels + 500 SGD steps, once
    atoms.calc = calc                  # MD / relaxation through the reference head
    calc.reset_layers()                # pristine weights again, bitwise

Adaptation happens only when asked (:meth:`TTTLayer.adapt` or
``MLFFCalculator.adapt``), never inside ``calculate()``: weights stay fixed for
a whole MD run or relaxation. Adapted weights are saved as an artifact bound
to the base model (``ttt_adapted.json`` + ``ttt_adapted.pt``) and can be loaded
onto a fresh copy of the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ArtifactError, ConfigurationError
from ..layers.base import Layer, Request

ADAPTED_FORMAT = "mlff_calc.ttt_adapted"
ADAPTED_VERSION = 1
ADAPTED_MANIFEST = "ttt_adapted.json"
ADAPTED_WEIGHTS = "ttt_adapted.pt"

NO_HEAD = (
    "{model} has no prior head, so test-time training cannot adapt it. Train a two-head student "
    "(`mlff-calc ttt train` or mlff_calc.ttt.train_ttt_student), or fit an experimental head on this "
    "foundation model with mlff_calc.ttt.fit_prior_head"
)


class TTTLayer(Layer):
    """Holds the adaptation settings, the pristine weights and what the last adaptation did."""

    name = "ttt"
    adapts = True

    def __init__(self, *, adapted=None, adapt_on=None, progress: bool | None = None, **adapt_config):
        """``adapt_config``: fields of :class:`~mlff_calc.ttt.adapt.AdaptConfig`. When the layer
        is bound to a model it loads ``adapted`` (a folder from :meth:`save`) or adapts on
        the structures ``adapt_on``, if given."""
        from .adapt import AdaptConfig

        if adapted is not None and adapt_on is not None:
            raise ConfigurationError("give either adapted (saved weights) or adapt_on (structures), not both")
        self._on_bind = ("load", adapted) if adapted is not None else ("adapt", adapt_on) if adapt_on is not None else None
        self.config = AdaptConfig(**adapt_config)
        self.config.check()
        self.progress = progress
        self.model = None
        self._binding: dict = {}
        self._pristine: dict[str, torch.Tensor] | None = None
        self.history: dict | None = None

    @classmethod
    def from_option(cls, value: str, *, verb: str | None = None) -> "TTTLayer":
        """The layer of ``--ttt``: a folder written by :meth:`save`, or a structure file to adapt on."""
        from ..data.structure_files import read_frames

        path = Path(value)
        return cls(adapted=path) if path.is_dir() else cls(adapt_on=read_frames(path))

    def bind(self, adapter) -> None:
        from ..models.two_head import TwoHeadModel

        if not isinstance(adapter, TwoHeadModel):
            raise ConfigurationError(NO_HEAD.format(model=adapter.model_id))
        from ..models.identity import model_identity

        self.model = adapter
        self._pristine = {n: p.detach().clone() for n, p in self._params().items()}
        # hashed now, while the weights are pristine (a model without a file hashes its parameters)
        self._binding = model_identity(adapter.base)
        if self._on_bind is not None:
            action, value = self._on_bind
            self.load(value) if action == "load" else self.adapt(value)

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return self.model.named_group_parameters(self.model.adapt_groups)

    def _bound(self):
        if self.model is None:
            raise ConfigurationError("this TTT layer is not attached to a model; pass it in a calculator's layers")
        return self.model

    def adapt(self, structures, *, labels=None) -> dict:
        """Label ``structures`` with the model's prior and adapt; returns the history."""
        from .adapt import adapt

        model = self._bound()
        self.reset()
        self.history = adapt(model, structures, self.config, labels=labels, progress=self.progress)
        return self.history

    def before(self, atoms_list, request: Request) -> Request:
        if self.model is not None and self.model.head != "reference":
            raise ConfigurationError("predictions must go through the reference head; a prior-head block is still open")
        return request

    def reset(self) -> None:
        """Restore the pristine weights exactly (bitwise) and forget the adaptation."""
        if self.model is None or self._pristine is None:
            return
        with torch.no_grad():
            for name, p in self._params().items():
                p.copy_(self._pristine[name])
        self.history = None

    @property
    def adapted(self) -> bool:
        return self.history is not None

    def describe(self) -> dict:
        out = {"name": self.name, "adapted": self.adapted}
        if self.model is not None:
            out.update(prior=self.model.prior["name"], adapt_groups=list(self.model.adapt_groups))
        if self.history:
            out.update({k: self.history[k] for k in ("n_structures", "prior_loss_initial", "prior_loss_final", "wall_time_s")}, steps=self.config.steps)
        return out

    # artifact ------------------------------------------------------------------
    def save(self, folder) -> Path:
        """Write the adapted parameters and what produced them, bound to the base model."""
        from ..models.weights_file import write_bound

        model = self._bound()
        if not self.adapted:
            raise ConfigurationError("nothing to save: call adapt(structures) first")
        history = {k: v for k, v in self.history.items() if k != "step_losses"}
        write_bound(
            folder,
            manifest_name=ADAPTED_MANIFEST,
            weights_name=ADAPTED_WEIGHTS,
            state=self._params(),
            fmt=ADAPTED_FORMAT,
            version=ADAPTED_VERSION,
            base_model=self._binding,
            prior=model.prior,
            adapt_groups=list(model.adapt_groups),
            history=history,
        )
        return Path(folder)

    def load(self, folder) -> None:
        """Put adapted parameters saved by :meth:`save` into the bound model."""
        from ..models.weights_file import read_bound

        model = self._bound()
        foreign = "the adapted weights in {folder} belong to {model_id!r}, not to " + repr(model.model_id) + "; adapt this model instead"
        manifest, state = read_bound(folder, manifest_name=ADAPTED_MANIFEST, fmt=ADAPTED_FORMAT, version=ADAPTED_VERSION, kind="adapted", base_model=self._binding, foreign=foreign)
        params = self._params()
        if set(state) != set(params) or any(state[n].shape != params[n].shape for n in params):
            raise ArtifactError(f"the adapted weights in {folder} do not fit this model's groups {list(model.adapt_groups)}")
        self.reset()
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name].to(p.device, p.dtype))
        self.history = {**manifest.get("history", {}), "loaded_from": str(folder)}
