"""MACE (mace-torch 0.3.x ScaleShiftMACE / MACE) models.

Upstream quirks hidden here:
- Importing mace (and e3nn 0.4.4, which fails to import without it) sets
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in ``os.environ``. mace is imported
  only inside :func:`mace_scope`, which restores the environment and torch's
  default dtype afterwards.
- ``MACECalculator`` appends to ASE's shared ``implemented_properties`` list and
  changes the default dtype; it is never constructed here. We build mace's
  batch dict ourselves from our neighbour list (same sender/receiver and shift
  convention as ``mace.data.neighborhood.get_neighborhood``).
- The strain is applied here (``pos @ (I + ε)``, ``cell @ (I + ε)``), so mace's
  own force/stress code is switched off and the base class differentiates.
- ``node_feats`` hold equivariant (l > 0) parts; descriptors keep only the
  invariant ``0e`` channels of every layer, as ``MACECalculator.get_descriptors``.
- mace's radial envelope vanishes at its native ``r_max`` only. A graph built at a
  smaller cutoff ``r`` (test-time radius refinement) would cut edges sharply at
  ``r``, so the energy would jump whenever a pair crosses it. Below ``r_max`` each
  edge's radial features are therefore multiplied by :func:`cutoff_switch`, 1 up to
  ``r - w`` and 0 at ``r`` with zero first and second derivatives
  (``w = switch_width_A``, default :data:`SWITCH_WIDTH_A`; 0 keeps the sharp cut).
  A forward hook on ``module.radial_embedding``, present only while such a call
  runs, applies it (to the envelope output when mace returns one separately); it
  reads the window from the calling thread, so calls at the native cutoff (on any
  thread) are never switched and stay bitwise unchanged. A subclass whose
  ``_call_module`` runs another copy of the module, which bypasses the hook, is
  not used for switched calls: they run the eager module. (A compiled student
  never gets such calls: it sends them to its eager module itself.)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from .._runtime import backend, isolated
from ..errors import ConfigurationError, ModelLoadError
from ..neighbors import bounding_cell, device_neighbor_list
from .base import Forward, ModelAdapter
from .family import Family, file_ending, register

log = logging.getLogger(__name__)

_MACE_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}

#: default width (Å) of the smooth switch applied to edges below a reduced cutoff. In
#: ``benchmarks/rewiring_shifts.py`` (Si students, r* 4.0 Å, 2 ps NVE) 0.25 and 0.5 Å both
#: conserved energy like the plain model; 0.25 Å changed the forces at r* less (pairs
#: within w of r* count only partly). It is also the candidate-radius step for rc 4.5 Å.
SWITCH_WIDTH_A = 0.25


def mace_scope():
    """Scope for importing or unpickling mace: sets the variable e3nn needs, then restores."""
    return isolated(env_during=_MACE_ENV)


def _check_mace(module, where: str) -> None:
    needed = ("r_max", "atomic_numbers", "atomic_energies_fn", "interactions", "products", "readouts")
    if not isinstance(module, torch.nn.Module) or not all(hasattr(module, a) for a in needed):
        raise ModelLoadError(f"{where} holds a {type(module).__name__}, not a MACE model; pass a whole-model MACE file (.model, as the MACE-MP-0 releases) or an nn.Module")


def _select_head(module, head: str | None) -> int:
    heads = list(getattr(module, "heads", None) or ["Default"])
    if head is None:
        if len(heads) == 1:
            return 0
        named = [k for k, h in enumerate(heads) if h.lower() == "default"]
        if named:
            return named[0]
        raise ConfigurationError(f"this MACE model has heads {heads}; choose one with head=...")
    if head not in heads:
        raise ConfigurationError(f"head {head!r} is not one of this MACE model's heads {heads}")
    return heads.index(head)


def _invariant_columns(module) -> torch.Tensor:
    """Columns of ``node_feats`` that are ``0e`` scalars, layer by layer."""
    cols, start = [], 0
    for product in module.products:
        irreps = product.linear.irreps_out
        for (_mul, ir), sl in zip(irreps, irreps.slices()):
            if ir.l == 0 and ir.p == 1:
                cols.extend(range(start + sl.start, start + sl.stop))
        start += irreps.dim
    return torch.tensor(cols, dtype=torch.long)


def cutoff_switch(d: torch.Tensor, r: float, w: float) -> torch.Tensor:
    """Quintic smoothstep of ``x = (r - d) / w`` clamped to [0, 1]: ``6x⁵ - 15x⁴ + 10x³``.

    Exactly 1 for ``d <= r - w``, 0 at ``d = r``; first and second derivatives
    vanish at both ends of the window, so an energy built on it is C² in the positions.
    """
    x = ((r - d) / w).clamp(0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def _check_switch_width(w) -> float:
    w = float(w)
    if not (w >= 0.0 and np.isfinite(w)):
        raise ConfigurationError(f"switch_width_A must be a finite width >= 0 Å (0: cut edges sharply), not {w}")
    return w


def strained(graph: dict[str, torch.Tensor], strain: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """mace's batch dict from :meth:`MACEAdapter.graph`, with positions and cells deformed by ``I + strain``.

    ``strain`` is ``[n_graphs, 3, 3]`` (None: undeformed); stress is the energy's derivative
    with respect to it. Edge shift vectors are taken from the deformed cells.
    """
    batch, edge_index = graph["batch"], graph["edge_index"]
    positions, cell = graph["positions"], graph["cell"]
    if strain is not None:
        deform = torch.eye(3, dtype=positions.dtype, device=positions.device) + strain
        positions = torch.einsum("ni,nij->nj", positions, deform[batch])
        cell = cell @ deform
    shifts = torch.einsum("ei,eij->ej", graph["unit_shifts"], cell[batch[edge_index[0]]])
    # prepare_graph's requires_grad_(True) on positions is a no-op here
    return {**graph, "positions": positions, "shifts": shifts, "cell": cell.reshape(-1, 3)}


class MACEAdapter(ModelAdapter):
    family = "mace"
    supported_dtypes = (torch.float32, torch.float64)

    def __init__(self, module, *, model_id="mace", device="auto", dtype=None, head: str | None = None, source=None, sha256=None, switch_width_A: float = SWITCH_WIDTH_A):
        _check_mace(module, "the given module")
        zs = [int(z) for z in module.atomic_numbers]
        super().__init__(module, model_id=model_id, device=device, dtype=dtype, cutoff=float(module.r_max), elements=zs, source=source, sha256=sha256)
        self._head = _select_head(module, head)
        self._z_index = np.full(max(zs) + 1, -1, dtype=np.int64)
        self._z_index[zs] = np.arange(len(zs))
        self._n_species = len(zs)
        self._invariant = _invariant_columns(module).to(self.device)
        self.switch_width_A = switch_width_A
        self._switch_handle, self._switch_users = None, 0
        self._switch_lock = threading.Lock()
        self._switch_bypassed = False

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_switch_lock", None)  # rebuilt; no switched call is running in the copy
        state.update(_switch_handle=None, _switch_users=0)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._switch_lock = threading.Lock()

    @property
    def switch_width_A(self) -> float:
        """Width (Å) of the smooth switch taking edges to 0 at a cutoff below ``r_max``.

        The switch is 1 up to ``cutoff - w`` and falls to 0 at ``cutoff`` (zero first
        and second derivatives there), so energy and forces stay continuous as pairs
        cross a reduced cutoff (e.g. the rewiring layer's r*). The window is never
        wider than the cutoff itself. 0 cuts edges sharply (the energy jumps when a
        pair crosses the cutoff). Calls at the native cutoff are never switched.
        """
        return self._switch_width

    @switch_width_A.setter
    def switch_width_A(self, w: float) -> None:
        self._switch_width = _check_switch_width(w)

    def _switch_window(self, cutoff: float) -> tuple[float, float] | None:
        """(r, w) of the switch for a graph at ``cutoff``; None at the native cutoff or w = 0."""
        if self._switch_width <= 0.0 or cutoff >= self.cutoff - 1e-9:
            return None
        return float(cutoff), min(self._switch_width, float(cutoff))

    def _hook_switch(self, on: bool) -> None:
        """Hold the switch hook while any thread runs a switched call; remove it after the last.

        One hook for all threads (it reads each thread's own window), so that concurrent
        calls on CPU worker threads never apply the switch twice; none is left on the
        module between calls (it stays picklable and, at the native cutoff, unhooked).
        """
        with self._switch_lock:
            self._switch_users += 1 if on else -1
            if on and self._switch_handle is None:
                self._switch_handle = self.module.radial_embedding.register_forward_hook(self._apply_switch, with_kwargs=True)
            elif not on and self._switch_users == 0 and self._switch_handle is not None:
                self._switch_handle.remove()
                self._switch_handle = None

    def _apply_switch(self, _module, args, kwargs, output):
        window = self._captured.get("switch")
        if window is None:
            return None  # output untouched
        lengths = args[0] if args else kwargs["edge_lengths"]
        s = cutoff_switch(lengths, *window)  # [n_edges, 1]
        self._captured["switch_applied"] = True
        feats, envelope = output
        if envelope is None:  # radial features already carry mace's envelope
            return feats * s, None
        return feats, envelope * s  # apply_cutoff=False: interactions multiply by the envelope

    @classmethod
    def load(cls, path, *, device="auto", dtype=None, model_id: str | None = None, head: str | None = None) -> "MACEAdapter":
        """A whole pickled MACE model file (``torch.save(model)``, as MACE-MP-0 ships).

        Security: such a file is a pickle and is read with
        ``torch.load(weights_only=False)``, which runs any code stored in it.
        Only load files you trust; mlff_calc never unpickles a path the user
        did not name.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"MACE model file {path} does not exist")
        with mace_scope():
            with backend("mace", "a MACE model"):
                import mace.modules  # noqa: F401  (classes the pickle refers to)

            try:
                module = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # pickle raises many types for a bad file
                raise ModelLoadError(f"could not read a MACE model from {path}: {type(exc).__name__}: {exc}") from exc
        _check_mace(module, str(path))
        from ..artifacts import sha256_file

        log.info("loaded MACE model %s", path)
        return cls(module, model_id=model_id or f"mace:{path}", device=device, dtype=dtype, head=head, source=str(path), sha256=sha256_file(path))

    def graph(self, atoms_list: Sequence[Atoms], cutoff: float) -> dict[str, torch.Tensor]:
        """The unstrained batch as tensors: positions, cells, edges and their lattice shifts, species."""
        dev, dt = self.device, self.dtype
        pos, cells, edges, unit, species, counts, offset = [], [], [], [], [], [], 0
        for atoms in atoms_list:
            i, j, shifts = device_neighbor_list(atoms, cutoff, dev, backend=self.neighbor_backend)
            pos.append(atoms.positions)
            cells.append(atoms.cell.array if atoms.pbc.all() else bounding_cell(atoms, cutoff))
            edges.append(torch.stack([i + offset, j + offset]))  # [0] sender, [1] receiver
            unit.append(shifts)
            species.append(self._z_index[atoms.numbers])
            counts.append(len(atoms))
            offset += len(atoms)
        n_atoms = torch.tensor(counts, dtype=torch.long, device=dev)
        species_t = torch.tensor(np.concatenate(species), dtype=torch.long, device=dev)
        return {
            "positions": torch.tensor(np.concatenate(pos), dtype=dt, device=dev),
            "cell": torch.tensor(np.stack(cells), dtype=dt, device=dev),
            "edge_index": torch.cat(edges, dim=1),
            "unit_shifts": torch.cat(unit).to(dt),
            "batch": torch.repeat_interleave(torch.arange(len(atoms_list), device=dev), n_atoms),
            "ptr": torch.cat([n_atoms.new_zeros(1), torch.cumsum(n_atoms, 0)]),
            "node_attrs": torch.nn.functional.one_hot(species_t, self._n_species).to(dt),
            "head": torch.full((len(atoms_list),), self._head, dtype=torch.long, device=dev),
        }

    def _forward(self, atoms_list: Sequence[Atoms], cutoff: float, *, stress: bool, descriptors: bool) -> Forward:
        g = self.graph(atoms_list, cutoff)
        if stress:
            strains = [torch.zeros(3, 3, dtype=self.dtype, device=self.device, requires_grad=True) for _ in atoms_list]
            data = strained(g, torch.stack(strains))
        else:
            strains = None
            data = strained({**g, "positions": g["positions"].requires_grad_(True)}, None)
        out = self._call_switched(data, self._switch_window(cutoff))
        feats = out["node_feats"][:, self._invariant] if descriptors else None
        return Forward(
            energy=out["energy"],
            positions=[data["positions"]],
            strains=strains,
            volumes=torch.linalg.det(g["cell"]).abs(),
            node_energy=out["node_energy"].to(self.dtype),
            descriptors=feats,
        )

    def _call_switched(self, data: dict, window: tuple[float, float] | None) -> dict:
        """:meth:`_call_module` with the cutoff switch active on this thread (``window`` = (r, w))."""
        if window is None:
            return self._call_module(data)
        captured = self._captured
        captured["switch"], captured["switch_applied"] = window, False
        self._hook_switch(True)
        try:
            if not self._switch_bypassed:
                out = self._call_module(data)
                if captured["switch_applied"]:
                    return out
                # another module ran (a subclass's own copy), without the hook
                log.info("%s: the cutoff switch needs the eager module; calls below the native cutoff use it", self.model_id)
                self._switch_bypassed = True
            out = MACEAdapter._call_module(self, data)
            if not captured["switch_applied"]:
                raise ConfigurationError(f"{self.model_id}: the cutoff switch hook on radial_embedding did not run; set switch_width_A=0 to cut edges sharply")
            return out
        finally:
            self._hook_switch(False)
            captured.pop("switch", None)
            captured.pop("switch_applied", None)

    def _call_module(self, data: dict) -> dict:
        """mace's energy forward pass; a hook for subclasses that run another copy of the module."""
        return self.module(data, compute_force=False, compute_stress=False, training=False)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        m = self.module
        groups: dict[str, list[torch.nn.Parameter]] = {"embedding": []}
        for k, (interaction, product) in enumerate(zip(m.interactions, m.products)):
            groups[f"interaction_{k}"] = [*interaction.parameters(), *product.parameters()]
        scale_shift = getattr(m, "scale_shift", None)
        groups["readout"] = [*m.readouts.parameters(), *(scale_shift.parameters() if scale_shift is not None else [])]
        groups["reference"] = list(m.atomic_energies_fn.parameters())
        # node/radial embedding, spherical harmonics and any optional extras (ZBL, joint embedding)
        taken = {id(p) for params in groups.values() for p in params}
        groups["embedding"] = [p for p in m.parameters() if id(p) not in taken]
        return groups

    def reference_energies(self) -> dict[int, float]:
        table = torch.atleast_2d(self.module.atomic_energies_fn.atomic_energies)
        row = table[self._head if table.shape[0] > 1 else 0].detach().cpu().double().numpy()
        return {int(z): float(e) for z, e in zip(self.module.atomic_numbers.tolist(), row)}


register(Family("mace", MACEAdapter, file_ending(".model"), "a MACE model file (*.model)"))
