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
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from .._scope import isolated
from ..errors import ConfigurationError, ModelLoadError
from ..neighbors import bounding_cell, neighbor_list
from .base import Forward, ModelAdapter

log = logging.getLogger(__name__)

_MACE_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def mace_scope():
    """Scope for importing or unpickling mace: sets the variable e3nn needs, then restores."""
    return isolated(env_during=_MACE_ENV)


def _check_mace(module, where: str) -> None:
    needed = ("r_max", "atomic_numbers", "atomic_energies_fn", "interactions", "products", "readouts")
    if not isinstance(module, torch.nn.Module) or not all(hasattr(module, a) for a in needed):
        raise ModelLoadError(
            f"{where} holds a {type(module).__name__}, not a MACE model; "
            "pass a whole-model MACE file (.model, as the MACE-MP-0 releases) or an nn.Module"
        )


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


class MACEAdapter(ModelAdapter):
    family = "mace"
    supported_dtypes = (torch.float32, torch.float64)

    def __init__(self, module, *, model_id="mace", device="auto", dtype=None, head: str | None = None, source=None, sha256=None):
        _check_mace(module, "the given module")
        zs = [int(z) for z in module.atomic_numbers]
        super().__init__(module, model_id=model_id, device=device, dtype=dtype, cutoff=float(module.r_max), elements=zs, source=source, sha256=sha256)
        self._head = _select_head(module, head)
        self._z_index = np.full(max(zs) + 1, -1, dtype=np.int64)
        self._z_index[zs] = np.arange(len(zs))
        self._n_species = len(zs)
        self._invariant = _invariant_columns(module).to(self.device)

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
            import mace.modules  # noqa: F401  (classes the pickle refers to)

            try:
                module = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # pickle raises many types for a bad file
                raise ModelLoadError(f"could not read a MACE model from {path}: {type(exc).__name__}: {exc}") from exc
        _check_mace(module, str(path))
        from ..artifacts import sha256_file

        log.info("loaded MACE model %s", path)
        return cls(module, model_id=model_id or f"mace:{path}", device=device, dtype=dtype, head=head, source=str(path), sha256=sha256_file(path))

    def _forward(self, atoms_list: Sequence[Atoms], cutoff: float, *, stress: bool, descriptors: bool) -> Forward:
        dev, dt = self.device, self.dtype
        pos, cells, edges, unit, species, counts, offset = [], [], [], [], [], [], 0
        for atoms in atoms_list:
            i, j, shifts = neighbor_list(atoms, cutoff)
            pos.append(atoms.positions)
            cells.append(atoms.cell.array if atoms.pbc.all() else bounding_cell(atoms, cutoff))
            edges.append(np.stack([i + offset, j + offset]))  # [0] sender, [1] receiver
            unit.append(shifts)
            species.append(self._z_index[atoms.numbers])
            counts.append(len(atoms))
            offset += len(atoms)
        n_graphs = len(atoms_list)
        pos0 = torch.tensor(np.concatenate(pos), dtype=dt, device=dev)
        cell0 = torch.tensor(np.stack(cells), dtype=dt, device=dev)
        edge_index = torch.tensor(np.concatenate(edges, axis=1), dtype=torch.long, device=dev)
        unit_shifts = torch.tensor(np.concatenate(unit), dtype=dt, device=dev)
        n_atoms = torch.tensor(counts, dtype=torch.long, device=dev)
        batch = torch.repeat_interleave(torch.arange(n_graphs, device=dev), n_atoms)
        ptr = torch.cat([n_atoms.new_zeros(1), torch.cumsum(n_atoms, 0)])
        species_t = torch.tensor(np.concatenate(species), dtype=torch.long, device=dev)
        node_attrs = torch.nn.functional.one_hot(species_t, self._n_species).to(dt)

        if stress:
            strains = [torch.zeros(3, 3, dtype=dt, device=dev, requires_grad=True) for _ in atoms_list]
            deform = torch.eye(3, dtype=dt, device=dev) + torch.stack(strains)
            positions = torch.einsum("ni,nij->nj", pos0, deform[batch])
            cell = cell0 @ deform
        else:
            strains, positions, cell = None, pos0.requires_grad_(True), cell0
        shifts = torch.einsum("ei,eij->ej", unit_shifts, cell[batch[edge_index[0]]])
        data = {
            "positions": positions,  # prepare_graph's requires_grad_(True) is a no-op on it
            "node_attrs": node_attrs,
            "edge_index": edge_index,
            "shifts": shifts,
            "unit_shifts": unit_shifts,
            "cell": cell.reshape(-1, 3),
            "batch": batch,
            "ptr": ptr,
            "head": torch.full((n_graphs,), self._head, dtype=torch.long, device=dev),
        }
        out = self.module(data, compute_force=False, compute_stress=False, training=False)
        feats = out["node_feats"][:, self._invariant] if descriptors else None
        return Forward(
            energy=out["energy"],
            positions=[positions],
            strains=strains,
            volumes=torch.linalg.det(cell0).abs(),
            node_energy=out["node_energy"].to(dt),
            descriptors=feats,
        )

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
