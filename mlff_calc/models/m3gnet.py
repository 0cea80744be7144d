"""M3GNet potentials through matgl 4 (PyTorch Geometric backend).

Upstream quirks hidden here:
- matgl 4 loads matgl-2 (DGL era) checkpoints without complaint but evaluates
  them wrongly: its graph convolution feeds ``(v_src, v_dst)`` to weights trained
  for the other end of each edge (the matgl-4 re-export of the same model swaps
  those weight blocks). We recognise such folders before building anything.
- ``matgl.load_model`` treats a path that does not exist as a Hugging Face repo
  name; we check the folder first so a typo never turns into a download attempt.
- ``Atoms2Graph`` treats any cell that is not periodic in all three directions as
  a molecule; we build the graph from our own neighbour list (mixed pbc works).
- ``Potential.forward`` squeezes the ``AtomRef`` offset to a scalar for one
  structure; we sum per-atom offsets by structure instead. Offsets are indexed by
  position in ``model.element_types`` (89 elements), not by atomic number.
- matgl's modules hold sympy-generated functions, which do not pickle. A pickled
  adapter carries the module's recipe instead (matgl's own constructor arguments,
  ``_init_args``, and the state dict) and rebuilds it on unpickle.
- ZBL (``calc_repuls=True``) needs ``g.bond_dist``, which M3GNet never sets, so
  matgl itself cannot evaluate it; such models are refused with that reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers

from .._runtime import backend, isolated
from ..errors import ModelLoadError
from ..neighbors import bounding_cell, device_neighbor_list
from .base import Forward, ModelAdapter
from .family import Family, folder_with, register

log = logging.getLogger(__name__)

MODEL_FILES = ("model.json", "model.pt", "state.pt")


def legacy_signs(path: Path) -> list[str]:
    """Evidence that a matgl folder was written by matgl 2 (DGL era); empty if none."""
    signs = []
    meta = json.loads((path / "model.json").read_text())
    kwargs = meta.get("kwargs") if isinstance(meta, dict) else None
    if meta.get("@class") == "Potential" and isinstance(kwargs, dict) and "calc_repuls" not in kwargs:
        signs.append("model.json lacks the 'calc_repuls' argument that every current Potential records")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # matgl loads with weights_only too and will report it
        log.debug("could not read %s/state.pt with weights_only=True: %s", path, exc)
        state = {}
    if any(str(k).endswith("element_refs.onehot") for k in state):
        signs.append("state.pt holds the 'element_refs.onehot' buffer that matgl 4 no longer writes")
    return signs


class M3GNetAdapter(ModelAdapter):
    family = "m3gnet"
    supported_dtypes = (torch.float32, torch.float64)

    def __init__(self, module, *, model_id: str, device="auto", dtype=None, source=None, sha256=None):
        model = module.model
        self._types = np.full(max(atomic_numbers.values()) + 1, -1, dtype=np.int64)
        zs = [atomic_numbers[s] for s in model.element_types]
        self._types[zs] = np.arange(len(zs))
        super().__init__(module, model_id=model_id, device=device, dtype=dtype, cutoff=model.cutoff, elements=zs, source=source, sha256=sha256)
        self.module.model.final_layer.register_forward_hook(self._capture_readout)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["module"] = _recipe(self.module)
        return state

    def __setstate__(self, state: dict) -> None:
        recipe = state.pop("module")
        super().__setstate__(state)
        self.module = _rebuild(recipe, self.device, self.dtype)
        self.module.model.final_layer.register_forward_hook(self._capture_readout)

    @classmethod
    def load(cls, path, *, device="auto", dtype=None, model_id: str | None = None) -> "M3GNetAdapter":
        """A matgl model folder (``model.json``, ``model.pt``, ``state.pt``) holding an M3GNet Potential."""
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelLoadError(f"matgl model folder {path} does not exist (published M3GNet weights: `mlff-calc models fetch NAME`, names in `mlff-calc models`)")
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; an M3GNet model is a folder holding {', '.join(MODEL_FILES)}")
        missing = [f for f in MODEL_FILES if not (path / f).is_file()]
        if missing:
            raise ModelLoadError(f"{path} is not a matgl model folder: it lacks {', '.join(missing)}")
        try:
            signs = legacy_signs(path)
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{path}/model.json is not a readable matgl model description: {exc}") from exc
        if signs:
            raise ModelLoadError(
                f"{path} is a matgl-2 (DGL era) checkpoint ({'; '.join(signs)}). matgl 4 loads it without error "
                "but evaluates it wrongly (its graph convolution aggregates on the other end of each edge), so it is "
                "refused; use the matgl-4 re-export of the same model (e.g. M3GNet-MP-2021.2.8-PES as distributed for matgl 4: "
                "`mlff-calc models fetch m3gnet-mp-2021.2.8` gets or converts it)"
            )
        with isolated(), backend("m3gnet", "an M3GNet model"):
            import matgl
            from matgl.apps.pes import Potential
            from matgl.models import M3GNet

            try:
                module = matgl.load_model(path)
            except (RuntimeError, ValueError, OSError, KeyError, TypeError) as exc:
                cause = exc.__cause__ or exc
                raise ModelLoadError(f"matgl could not load a model from {path}: {cause}") from exc
        cls._check_supported(module, path, Potential, M3GNet)
        from ..artifacts import sha256_file

        return cls(module, model_id=model_id or f"m3gnet:{path.name}", device=device, dtype=dtype, source=str(path), sha256=sha256_file(path))

    @staticmethod
    def _check_supported(module, path, potential_cls, m3gnet_cls) -> None:
        if not isinstance(module, potential_cls):
            raise ModelLoadError(f"{path} holds a {type(module).__name__}, not a matgl Potential (an energy model with forces)")
        model = module.model
        problems = []
        if not isinstance(model, m3gnet_cls):
            problems.append(f"it wraps {type(model).__name__}, not M3GNet")
        elif model.is_intensive or model.include_state:
            problems.append("its M3GNet is intensive or uses global state attributes, which a PES does not")
        if module.calc_repuls:
            problems.append("it adds ZBL repulsion (calc_repuls=True), which matgl 4 cannot evaluate for M3GNet")
        if module.calc_charge:
            problems.append("it predicts charges (calc_charge=True)")
        if module.element_refs is not None and module.element_refs.property_offset.ndim != 1:
            problems.append("it has multi-state element references")
        if problems:
            raise ModelLoadError(f"{path} is not supported by the M3GNet adapter: {'; '.join(problems)}")

    def _capture_readout(self, _module, args, output):
        self._captured["descriptors"] = args[0]
        self._captured["atomic"] = output

    def _forward(self, atoms_list: Sequence[Atoms], cutoff: float, *, stress: bool, descriptors: bool) -> Forward:
        from torch_geometric.data import Data

        pot, dev, dt = self.module, self.device, self.dtype
        edges, shifts, cells, offset = [], [], [], 0
        for atoms in atoms_list:
            i, j, s = device_neighbor_list(atoms, cutoff, dev, backend=self.neighbor_backend)
            edges.append(torch.stack([i, j]) + offset)
            shifts.append(s)
            cells.append(bounding_cell(atoms, cutoff))
            offset += len(atoms)
        n_graphs = len(atoms_list)
        n_atoms = torch.tensor([len(a) for a in atoms_list], device=dev)
        node_batch = torch.repeat_interleave(torch.arange(n_graphs, device=dev), n_atoms)
        edge_index = torch.cat(edges, dim=1)
        numbers = np.concatenate([a.numbers for a in atoms_list])
        node_type = torch.as_tensor(self._types[numbers], device=dev)

        # Strain per structure: lattice = lat @ (I + st), positions follow the cell.
        eye = torch.eye(3, dtype=dt, device=dev)
        st = torch.zeros((n_graphs, 3, 3), dtype=dt, device=dev, requires_grad=stress)
        lattice = torch.as_tensor(np.stack(cells), dtype=dt, device=dev) @ (eye + st)
        positions = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=dt, device=dev, requires_grad=True)
        pos = torch.einsum("ni,nij->nj", positions, (eye + st)[node_batch]) if stress else positions
        shift = torch.cat(shifts).to(dt)
        offshift = torch.einsum("ei,eij->ej", shift, lattice[node_batch[edge_index[0]]])

        g = Data(num_nodes=int(node_type.numel()), edge_index=edge_index, node_type=node_type, pos=pos, pbc_offshift=offshift, batch=node_batch)
        g.num_graphs = n_graphs
        pot.model(g=g, state_attr=None, l_g=self._line_graph(pos, edge_index, offshift))  # per-atom terms come from the readout hook
        atomic = self._captured.pop("atomic").reshape(-1)
        node_feat = self._captured.pop("descriptors")
        # E = data_std * sum(atomic) + data_mean + sum(refs), as Potential.forward; data_mean is spread evenly.
        node_energy = pot.data_std * atomic + pot.data_mean / n_atoms[node_batch].to(dt)
        if pot.element_refs is not None:
            node_energy = node_energy + pot.element_refs.property_offset[node_type].to(dt)
        # Sum in float64: a float32 index_add of 64 equal Si offsets already drifts by 3e-4 eV.
        energy = torch.zeros(n_graphs, dtype=torch.float64, device=dev).index_add(0, node_batch, node_energy.double())
        return Forward(
            energy=energy.to(dt),
            positions=[positions],
            strains=[st],
            volumes=torch.linalg.det(lattice).abs(),
            node_energy=node_energy,
            descriptors=node_feat if descriptors else None,
        )

    def _line_graph(self, pos, edge_index, offshift) -> dict | None:
        """M3GNet's three-body line graph from matgl's tensor-only builder.

        Left to itself, matgl's PyG M3GNet enumerates bond pairs with a Python loop
        over atoms (holding the GIL); its tensor port gives
        the same indices. Distances come from the same matgl function as the
        model's, so the cutoff test agrees bond for bond (matgl checks it). A matgl
        without that builder gets ``None`` (matgl then builds the graph itself).
        """
        try:
            from matgl.graph._compute import compute_pair_vector_and_distance, create_line_graph_torch
        except ImportError:  # pragma: no cover - matgl < 4.1.2
            return None

        with torch.no_grad():
            vec, dist = compute_pair_vector_and_distance(pos.detach(), edge_index, offshift.detach())
            return create_line_graph_torch(edge_index, dist, vec, int(pos.shape[0]), float(self.module.model.threebody_cutoff))

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        m = self.module.model
        groups = {"embedding": [*m.embedding.parameters(), *m.bond_expansion.parameters(), *m.basis_expansion.parameters()]}
        for k in range(m.n_blocks):
            groups[f"interaction_{k}"] = [*m.three_body_interactions[k].parameters(), *m.graph_layers[k].parameters()]
        groups["readout"] = list(m.final_layer.parameters())
        refs = self.module.element_refs
        if refs is not None and any(True for _ in refs.parameters()):
            groups["reference"] = list(refs.parameters())
        return groups

    def reference_energies(self) -> dict[int, float]:
        refs = self.module.element_refs
        if refs is None:
            return {}
        offsets = refs.property_offset.detach().cpu().double().numpy()
        return {atomic_numbers[s]: float(offsets[k]) for k, s in enumerate(self.module.model.element_types)}


def _recipe(module) -> dict:
    """What rebuilds a matgl module: its class, matgl's record of its constructor arguments, its state."""
    return {
        "module": type(module).__module__,
        "class": type(module).__name__,
        "init_args": module._init_args,
        "state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "training": module.training,
    }


def _rebuild(recipe: dict, device, dtype):
    """The module of :func:`_recipe`, as ``matgl``'s own loader builds it, with the recorded state."""
    import importlib

    with isolated():
        cls = getattr(importlib.import_module(recipe["module"]), recipe["class"])
        args = {}
        for key, value in recipe["init_args"].items():
            if key.startswith("@"):
                continue
            if isinstance(value, dict) and "@class" in value and "@module" in value:  # a nested matgl module
                inner = getattr(importlib.import_module(value["@module"]), value["@class"])
                value = inner(**value["init_args"])
            args[key] = value
        module = cls(**args)
    module = module.to(device=device, dtype=dtype)  # before the state, so float64 weights stay exact
    module.load_state_dict(recipe["state"], strict=True)
    return module.train(recipe["training"])


register(Family("m3gnet", M3GNetAdapter, folder_with("model.json", "state.pt"), "a matgl model (model.json + state.pt)", folder=True))
