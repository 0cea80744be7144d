"""CHGNet through the ``chgnet`` package.

Upstream quirks hidden here:
- ``CHGNetCalculator`` converts every call ASE -> pymatgen ``Structure`` and asks
  pymatgen for neighbours, then builds the graph through Python edge objects.
  We build CHGNet's own ``CrystalGraph`` straight from our neighbour list with
  numpy (:mod:`.chgnet_graph`), which skips that round trip.
- CHGNet 0.3.0 is intensive: its head predicts energy per atom; we return totals.
- CHGNet reports stress in GPa; we return eV/Å³ from the same strain derivative.
- Inputs are float32 only (``chgnet.model.model.TORCH_DTYPE``).
- Magnetic moments (``magmoms``, μB per atom) are ``|site_wise(atom features)|``
  after the second-to-last convolution, as ``CHGNetCalculator`` gives them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from .._runtime import isolated
from ..errors import ModelLoadError
from ..neighbors import bounding_cell, device_neighbor_list
from .base import Forward, ModelAdapter
from .chgnet_graph import angles, bonds
from .family import Family, file_ending, register


class CHGNetAdapter(ModelAdapter):
    family = "chgnet"
    supported_dtypes = (torch.float32,)

    def __init__(self, module, *, model_id="chgnet-0.3.0", device="auto", dtype=None, source=None, sha256=None):
        converter = module.graph_converter
        self._bond_cutoff = float(converter.bond_graph_cutoff)
        self._converter = converter
        elements = range(1, module.atom_embedding.embedding.num_embeddings + 1)
        super().__init__(module, model_id=model_id, device=device, dtype=dtype, cutoff=converter.atom_graph_cutoff, elements=elements, source=source, sha256=sha256)
        self.module.mlp.register_forward_pre_hook(self._capture_readout_input)

    @property
    def implemented_properties(self) -> tuple[str, ...]:
        return (*super().implemented_properties, "magmoms")

    @classmethod
    def load(cls, path: str | None = None, *, version: str = "0.3.0", device="auto", dtype=None) -> "CHGNetAdapter":
        """The weights that ship in the chgnet wheel, or a checkpoint file the user gave."""
        with isolated(), contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a banner
            from chgnet.model import CHGNet

            try:
                if path is None:
                    module = CHGNet.load(model_name=version, use_device="cpu", check_cuda_mem=False, verbose=False)
                else:  # a user-given CHGNet checkpoint is a pickle: trusted because the user named it
                    module = CHGNet.from_file(path, use_device="cpu", verbose=False)
            except (OSError, KeyError, RuntimeError, ValueError) as exc:
                raise ModelLoadError(f"could not load a CHGNet model from {path or version!r}: {exc}") from exc
        from ..artifacts import sha256_file

        if path is None:
            weights = wheel_weights(version)
            return cls(module, model_id=f"chgnet-{version}", device=device, dtype=dtype, source=f"chgnet wheel ({version})", sha256=sha256_file(weights) if weights else None)

        return cls(module, model_id=f"chgnet:{path}", device=device, dtype=dtype, source=str(path), sha256=sha256_file(path))

    def _capture_readout_input(self, _module, args):
        self._captured["descriptors"] = args[0]

    def _graph(self, atoms: Atoms, cutoff: float):
        from chgnet.graph.crystalgraph import CrystalGraph

        # bonds and angles are built with numpy, so the search runs on the CPU (as upstream's converter)
        i, j, shifts = (t.numpy() for t in device_neighbor_list(atoms, cutoff, "cpu", backend=self.neighbor_backend))
        cell = atoms.cell.array if atoms.pbc.all() else bounding_cell(atoms, cutoff)
        dist = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array, axis=1)
        d2u, u2d = bonds(i, j, shifts)
        bond_graph = angles(i, dist, d2u, min(self._bond_cutoff, cutoff))
        atom_graph = np.stack([i, j], axis=1)
        dev, f32, i32 = self.device, torch.float32, torch.int32
        lattice = torch.tensor(cell, dtype=f32, device=dev)
        frac = torch.tensor(atoms.positions @ np.linalg.inv(cell), dtype=f32, device=dev)
        return CrystalGraph(
            atomic_number=torch.tensor(atoms.numbers, dtype=i32, device=dev),
            atom_frac_coord=frac,
            atom_graph=torch.tensor(np.asarray(atom_graph), dtype=i32, device=dev).reshape(-1, 2),
            neighbor_image=torch.tensor(shifts, dtype=f32, device=dev),
            directed2undirected=torch.tensor(d2u, dtype=i32, device=dev),
            undirected2directed=torch.tensor(u2d, dtype=i32, device=dev),
            bond_graph=torch.tensor(np.asarray(bond_graph), dtype=i32, device=dev).reshape(-1, 5),
            lattice=lattice,
            graph_id=None,
            mp_id=None,
            composition=atoms.get_chemical_formula(),
            atom_graph_cutoff=cutoff,
            bond_graph_cutoff=min(self._bond_cutoff, cutoff),
        )

    def _forward(self, atoms_list: Sequence[Atoms], cutoff: float, *, stress: bool, descriptors: bool) -> Forward:
        from chgnet.model.model import BatchedGraph

        m = self.module
        graphs = [self._graph(a, cutoff) for a in atoms_list]
        with warnings.catch_warnings():  # chgnet builds volumes with torch.tensor(list of tensors)
            warnings.simplefilter("ignore", UserWarning)
            batched = BatchedGraph.from_graphs(graphs, bond_basis_expansion=m.bond_basis_expansion, angle_basis_expansion=m.angle_basis_expansion, compute_stress=True)
        pred = m._compute(batched, compute_force=False, compute_stress=False, compute_magmom=True, return_site_energies=True)
        n_atoms = torch.tensor([len(a) for a in atoms_list], device=self.device, dtype=torch.float32)
        site = torch.cat(pred["site_energies"])
        energy = pred["e"]
        if m.composition_model is not None:
            energy = energy + m.composition_model(graphs)
            site = site + torch.cat(m.composition_model.get_site_energies(graphs))
        if m.is_intensive:
            energy = energy * n_atoms
        return Forward(
            energy=energy,
            positions=list(batched.atom_positions),
            strains=list(batched.strains),
            volumes=batched.volumes,
            node_energy=site,
            descriptors=self._captured.pop("descriptors", None),
            magmoms=torch.cat(pred["m"]),
        )

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        m = self.module
        groups = {
            "embedding": [
                *m.atom_embedding.parameters(),
                *m.bond_basis_expansion.parameters(),
                *m.bond_embedding.parameters(),
                *m.bond_weights_ag.parameters(),
                *m.bond_weights_bg.parameters(),
                *m.angle_basis_expansion.parameters(),
                *m.angle_embedding.parameters(),
            ],
        }
        for k, atom_layer in enumerate(m.atom_conv_layers):
            params = list(atom_layer.parameters())
            for layers in (m.bond_conv_layers, m.angle_layers):
                if k < len(layers) and layers[k] is not None:
                    params += list(layers[k].parameters())
            groups[f"interaction_{k}"] = params
        groups["readout"] = [*m.readout_norm.parameters(), *m.mlp.parameters()]
        groups["reference"] = list(m.composition_model.parameters()) if m.composition_model is not None else []
        groups["magmom"] = list(m.site_wise.parameters())
        return groups

    def reference_energies(self) -> dict[int, float]:
        ref = self.module.composition_model
        if ref is None:
            return {}
        weights = ref.fc.weight.detach().cpu().double().numpy().reshape(-1)
        return {z: float(weights[z - 1]) for z in range(1, len(weights) + 1)}


register(Family("chgnet", CHGNetAdapter, file_ending(".pth.tar", ".pth"), "a CHGNet checkpoint (*.pth.tar)"))


def wheel_weights(version: str):
    """The checkpoint file of ``version`` inside the installed chgnet package (what ``CHGNet.load`` reads), or None."""
    import chgnet

    files = sorted((Path(chgnet.__file__).parent / "pretrained" / version).glob("*.pth.tar"))
    return files[0] if len(files) == 1 else None
