"""Two heads on one backbone (test-time training, :mod:`mlff_calc.ttt`): :class:`PriorHead` and :class:`TwoHeadModel`.

The reference head is the wrapped model itself (a student, CHGNet, M3GNet or
MACE). The prior head is a small MLP on per-atom features taken from the same
forward pass (``columns`` of the adapter's descriptors), plus per-element
energies::

    E_prior = sum_i  e0[Z_i] + scale * MLP(h_i[columns])

so prior forces are -dE_prior/dx through the shared backbone. For a two-head
student (:func:`mlff_calc.ttt.train_ttt_student`) the columns are the features
after the first interaction only, so the prior path runs through exactly the
layers test-time training adapts (``embedding`` and ``interaction_0``), and the
reference head's later blocks never touch it.

Artifact (``prior_head.json`` + ``prior_head.pt``, written atomically): the head
architecture and the prior it was trained on, the groups test-time training
adapts, and the base model's id and sha256. It lives inside a two-head student's
folder, or next to any model it was fitted for; loading it onto another model
is refused.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from ase import Atoms

from ..errors import ArtifactError, ConfigurationError
from .base import Forward, ModelAdapter
from .family import Family, folder_with, register
from .identity import model_identity
from .student import StudentAdapter
from .weights_file import read_bound, write_bound

HEAD_FORMAT = "mlff_calc.prior_head"
HEAD_VERSION = 1
HEAD_MANIFEST = "prior_head.json"
HEAD_WEIGHTS = "prior_head.pt"
#: what test-time training adapts by default (the paper: embeddings and the first interaction block)
DEFAULT_ADAPT_GROUPS = ("embedding", "interaction_0")
HEADS = ("reference", "prior")


class PriorHead(torch.nn.Module):
    """Per-atom energy ``e0[Z] + scale * MLP(features[:, columns])``."""

    def __init__(self, columns: Sequence[int], *, hidden: int = 32, e0: Mapping[int, float] | None = None, scale: float = 1.0, seed: int = 0):
        super().__init__()
        self.config = {"columns": [int(c) for c in columns], "hidden": int(hidden), "seed": int(seed)}
        gen = torch.Generator().manual_seed(int(seed))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(len(columns), hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in self.mlp.parameters():
                p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=gen) / np.sqrt(max(p.shape[-1], 1)))
        self.register_buffer("columns", torch.tensor(self.config["columns"], dtype=torch.long))
        self.register_buffer("e0", torch.zeros(119))
        self.register_buffer("scale", torch.tensor(float(scale)))
        if e0:
            self.set_e0(e0)

    def set_e0(self, e0: Mapping[int, float]) -> None:
        with torch.no_grad():
            for z, e in e0.items():
                self.e0[int(z)] = float(e)

    def forward(self, features: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        h = features[:, self.columns].to(self.scale.dtype)
        return self.e0[numbers] + self.scale * self.mlp(h).squeeze(-1)


class TwoHeadModel(ModelAdapter):
    """A model adapter with a reference head (the base model) and a prior head.

    ``head`` selects what every evaluation returns; :meth:`using` switches it for
    a block. Everything else (device, dtype, cutoff, elements, id) is the base
    model's, and the base adapter's parameters are shared, not copied.
    """

    def __init__(self, base: ModelAdapter, prior_head: PriorHead, *, prior, adapt_groups: Sequence[str] = DEFAULT_ADAPT_GROUPS, experimental: bool = False):
        self.supported_dtypes = type(base).supported_dtypes
        self.family = base.family
        self.double_backward = base.double_backward
        super().__init__(base.module, model_id=base.model_id, device=base.device, dtype=base.dtype, cutoff=base.cutoff, elements=base.elements, source=base.source, sha256=base.sha256)
        self.base = base
        self.prior_head = prior_head.to(device=base.device, dtype=base.dtype)
        self.prior = _prior_spec(prior)
        groups = base.parameter_groups()
        unknown = [g for g in adapt_groups if g not in groups]
        if unknown or not adapt_groups:
            raise ConfigurationError(f"adapt groups {list(adapt_groups)} must be a non-empty subset of this model's groups {sorted(groups)}")
        self.adapt_groups = tuple(adapt_groups)
        self.experimental = bool(experimental)
        self.head = "reference"

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("module")  # the base adapter's module, pickled (or rebuilt) with the base
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.module = self.base.module

    @classmethod
    def load(cls, path, *, device="auto", dtype=None, model_id=None) -> "TwoHeadModel":
        """A two-head student folder (:func:`~mlff_calc.ttt.save_ttt_student`: student files + ``prior_head.json``)."""
        return load_head(StudentAdapter.load(path, device=device, dtype=dtype), path)

    @contextlib.contextmanager
    def using(self, head: str):
        """Evaluate through ``head`` ("reference" or "prior") inside the block."""
        if head not in HEADS:
            raise ConfigurationError(f"head must be one of {HEADS}, not {head!r}")
        previous, self.head = self.head, head
        try:
            yield self
        finally:
            self.head = previous

    def check(self, atoms: Atoms, **kwargs) -> None:
        self.base.check(atoms, **kwargs)

    def _forward(self, atoms_list: Sequence[Atoms], cutoff: float, *, stress: bool, descriptors: bool) -> Forward:
        if self.head == "reference":
            return self.base._forward(atoms_list, cutoff, stress=stress, descriptors=descriptors)
        fwd = self.base._forward(atoms_list, cutoff, stress=stress, descriptors=True)
        numbers = torch.tensor(np.concatenate([a.numbers for a in atoms_list]), dtype=torch.long, device=self.device)
        per_atom = self.prior_head(fwd.descriptors, numbers)
        graph = torch.repeat_interleave(torch.arange(len(atoms_list), device=self.device), torch.tensor([len(a) for a in atoms_list], device=self.device))
        energy = torch.zeros(len(atoms_list), dtype=per_atom.dtype, device=self.device).index_add(0, graph, per_atom)
        return Forward(energy=energy, positions=fwd.positions, strains=fwd.strains, volumes=fwd.volumes, node_energy=per_atom, descriptors=fwd.descriptors if descriptors else None)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {**self.base.parameter_groups(), "prior_head": list(self.prior_head.parameters())}

    def reference_energies(self) -> dict[int, float]:
        return self.base.reference_energies()

    def named_group_parameters(self, groups: Sequence[str]) -> dict[str, torch.nn.Parameter]:
        """``{name: parameter}`` of ``groups``, names as in the base module's (or head's) state dict."""
        names = {id(p): n for n, p in self.module.named_parameters()}
        names.update({id(p): f"prior_head.{n}" for n, p in self.prior_head.named_parameters()})
        table = self.parameter_groups()
        return {names[id(p)]: p for g in groups for p in table[g]}

    def describe_heads(self) -> dict:
        return {"prior": self.prior, "adapt_groups": list(self.adapt_groups), "head": self.prior_head.config, "experimental": self.experimental}


def invariant_width(adapter: ModelAdapter, probe: Atoms) -> int:
    """Width of the adapter's per-atom descriptors, from one evaluation of ``probe``."""
    return int(adapter.compute([probe], forces=False, descriptors=True, min_distance=None)["descriptors"].shape[1])


def first_layer_columns(adapter: ModelAdapter) -> list[int]:
    """Descriptor columns written by the first interaction of a MACE-family model."""
    from .mace import _invariant_columns

    module = adapter.module
    dim0 = module.products[0].linear.irreps_out.dim
    return [k for k, col in enumerate(_invariant_columns(module).tolist()) if col < dim0]


# artifact --------------------------------------------------------------------------


def save_head(model: TwoHeadModel, folder) -> Path:
    """Write ``prior_head.json`` + ``prior_head.pt`` into ``folder`` atomically."""
    base_model = model_identity(model.base)
    return write_bound(
        folder, manifest_name=HEAD_MANIFEST, weights_name=HEAD_WEIGHTS, state=model.prior_head.state_dict(), fmt=HEAD_FORMAT, version=HEAD_VERSION, base_model=base_model, **model.describe_heads()
    )


def load_head(base: ModelAdapter, folder) -> TwoHeadModel:
    """``base`` with the prior head saved in ``folder``; refused if it belongs to another model."""
    foreign = "the prior head in {folder} was trained for {model_id!r}, not for " + repr(base.model_id) + " (weights differ); train a head for this model"
    manifest, state = read_bound(folder, manifest_name=HEAD_MANIFEST, fmt=HEAD_FORMAT, version=HEAD_VERSION, kind="prior head", base_model=model_identity(base), foreign=foreign)
    try:
        cfg = manifest["head"]
        head = PriorHead(cfg["columns"], hidden=cfg["hidden"], seed=cfg.get("seed", 0))
        head.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"the prior head in {folder} cannot be rebuilt ({type(exc).__name__}: {exc}); it is corrupt") from exc
    return TwoHeadModel(base, head, prior=manifest["prior"], adapt_groups=manifest["adapt_groups"], experimental=bool(manifest.get("experimental")))


def _prior_spec(prior) -> dict:
    """``"emt"`` or ``{"name", "params"}`` as plain data (which priors exist is mlff_calc.ttt.priors' to check)."""
    spec = {"name": prior, "params": {}} if isinstance(prior, str) else {"name": prior.get("name"), "params": dict(prior.get("params") or {})}
    if not isinstance(spec["name"], str):
        raise ConfigurationError(f"a prior is a name or {{'name': ..., 'params': {{...}}}}, not {prior!r}")
    return spec


register(Family("ttt_student", TwoHeadModel, folder_with("student.json", HEAD_MANIFEST), "a two-head student (student.json + prior_head.json)", folder=True, precedence=1))
