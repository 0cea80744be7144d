"""torch-sim interface: any mlff_calc adapter as a ``torch_sim.models.interface.ModelInterface``.

torch-sim (package ``torch-sim-atomistic``, an optional extra: ``pip install
'mlff_calc[torchsim]'``) integrates many systems at once on one device. A
:class:`TorchSimModel` hands each batched ``SimState`` to the adapter's batched forward
pass (one pass for all systems) and returns energy ``[n_systems]`` (eV), forces
``[n_atoms, 3]`` (eV/Å) and stress ``[n_systems, 3, 3]`` (eV/Å³, ASE's sign, which is
also torch-sim's and mace's), in the state's dtype on the state's device.

Layers (e.g. ``SofteningLayer``) run through :meth:`MLFFCalculator.evaluate`, so they
act exactly as in the ASE calculator; only energy, forces and stress come back (a
layer's extra outputs, such as uncertainties, are not torch-sim outputs).

Written against the part of torch-sim's interface shared by its releases: the
``ModelInterface`` properties and ``forward(state)``, ``SimState.positions``,
``row_vector_cell``, ``atomic_numbers``, ``pbc`` (a bool in 0.3, three bools later)
and ``system_idx`` (``batch`` before 0.3).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from .checks import MIN_DISTANCE
from .errors import ConfigurationError

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("mlff_calc.torchsim needs torch-sim: pip install 'mlff_calc[torchsim]'") from exc


def state_to_atoms(state) -> list[Atoms]:
    """One ASE ``Atoms`` per system of a torch-sim ``SimState`` (positions and cells as float64)."""
    positions = state.positions.detach().cpu().double().numpy()
    cells = state.row_vector_cell.detach().cpu().double().numpy().reshape(-1, 3, 3)
    numbers = state.atomic_numbers.detach().cpu().numpy()
    index = getattr(state, "system_idx", None)
    index = (index if index is not None else state.batch).detach().cpu().numpy()
    pbc = state.pbc
    pbc = pbc.detach().cpu().tolist() if isinstance(pbc, torch.Tensor) else pbc
    pbc = [bool(pbc)] * 3 if isinstance(pbc, (bool, int)) else [bool(p) for p in pbc]
    atoms_list = []
    for b in range(len(cells)):
        mask = index == b
        atoms_list.append(Atoms(numbers=numbers[mask], positions=positions[mask], cell=cells[b], pbc=pbc))
    return atoms_list


class TorchSimModel(ModelInterface):
    """A mlff_calc adapter (CHGNet, M3GNet, MACE, student), with optional layers, for torch-sim.

    ``min_distance`` (Å) is the calculator's check for atoms too close together
    (None: off); ``cutoff`` a graph cutoff below the model's native one (None: native).
    """

    def __init__(self, adapter, layers: Sequence = (), *, compute_stress: bool = True, compute_forces: bool = True, cutoff: float | None = None, min_distance: float | None = MIN_DISTANCE):
        super().__init__()
        self.adapter = adapter
        self.layers = list(layers)
        self._calc = None
        if self.layers:
            from .calculator import MLFFCalculator

            self._calc = MLFFCalculator(adapter, self.layers, min_distance=min_distance)
        self._device, self._dtype = adapter.device, adapter.dtype
        self._compute_stress, self._compute_forces = bool(compute_stress), bool(compute_forces)
        self.cutoff, self.min_distance = cutoff, min_distance

    # torch-sim's validation switches these on; they may be set
    compute_stress = property(lambda self: self._compute_stress, lambda self, v: setattr(self, "_compute_stress", bool(v)))
    compute_forces = property(lambda self: self._compute_forces, lambda self, v: setattr(self, "_compute_forces", bool(v)))

    def __repr__(self) -> str:
        return f"TorchSimModel({self.adapter!r}, layers=[{', '.join(l.name for l in self.layers)}])"

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        atoms_list = state_to_atoms(state)
        stress = self._compute_stress
        if stress and not all(a.pbc.all() for a in atoms_list):
            raise ConfigurationError("stress needs cells periodic in all three directions; build the model with compute_stress=False")
        if self._calc is not None:
            out = self._through_layers(atoms_list, stress)
        else:
            raw = self.adapter.compute(atoms_list, forces=self._compute_forces, stress=stress, cutoff=self.cutoff, min_distance=self.min_distance)
            out = {key: raw[key] for key in ("energy", "forces", "stress") if key in raw}
        like = state.positions
        return {key: value.detach().to(device=like.device, dtype=like.dtype) for key, value in out.items()}

    def _through_layers(self, atoms_list, stress: bool) -> dict[str, torch.Tensor]:
        props = {"energy"} | ({"forces"} if self._compute_forces else set()) | ({"stress"} if stress else set())
        results = self._calc.evaluate(atoms_list, props)
        out = {"energy": torch.tensor([r["energy"] for r in results], dtype=torch.float64)}
        if self._compute_forces:
            out["forces"] = torch.from_numpy(np.concatenate([r["forces"] for r in results]))
        if stress:
            out["stress"] = torch.from_numpy(np.stack([voigt_6_to_full_3x3_stress(r["stress"]) for r in results]))
        return out
