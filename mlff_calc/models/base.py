"""The adapter contract every model family implements.

An adapter owns one upstream ``nn.Module`` and exposes it in ASE units:
energy (eV), forces (eV/Å), stress (eV/Å³, 3x3, ASE sign: positive is tensile),
per-atom energies, per-atom descriptors, Hessian rows, batched evaluation and
named parameter groups. A backend implements only :meth:`ModelAdapter._forward`:
the energy of a batch as a differentiable function of atomic positions and a
strain tensor. Everything derived (forces, stress, Hessian) is computed here, once.
"""

from __future__ import annotations

import abc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ..checks import MIN_DISTANCE, check_atoms, check_graph_size
from ..errors import CalculationFailed, ConfigurationError, StressNotDefined

log = logging.getLogger(__name__)


@dataclass
class Forward:
    """What a backend's forward pass hands back to the base class.

    ``positions`` and ``strains`` are the tensors the energy is differentiated
    against: their concatenations are ``[n_atoms, 3]`` and ``[n_systems, 3, 3]``.
    """

    energy: torch.Tensor
    positions: list[torch.Tensor]
    strains: list[torch.Tensor] | None
    volumes: torch.Tensor
    node_energy: torch.Tensor | None = None
    descriptors: torch.Tensor | None = None
    #: per-atom magnetic moments (μB), for a family that predicts them (CHGNet)
    magmoms: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` picks CUDA when present; anything else must exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device '{device}' was requested but CUDA is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"device '{device}' is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    return dev


def resolve_dtype(dtype, supported: tuple[torch.dtype, ...], family: str) -> torch.dtype:
    """``None`` gives the family's default (the first supported dtype)."""
    if dtype is None:
        return supported[0]
    table = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32, torch.float64: torch.float64}
    if dtype not in table:
        raise ConfigurationError(f"dtype {dtype!r} is not supported; use 'float32' or 'float64'")
    resolved = table[dtype]
    if resolved not in supported:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported)
        raise ConfigurationError(f"{family} models run in {names} only, not {str(resolved).removeprefix('torch.')}")
    return resolved


class ModelAdapter(abc.ABC):
    """One loaded model with a fixed device, dtype, cutoff and element set."""

    #: short name of the model family, e.g. ``"chgnet"``
    family: str = ""
    #: dtypes the backend can run in; the first is the default
    supported_dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    #: whether the backend's energy supports double backward (Hessian by autograd)
    double_backward: bool = True
    #: neighbour search: ``"auto"`` (vesin on CUDA, matscipy on CPU), ``"vesin"`` or ``"matscipy"``
    neighbor_backend: str = "auto"
    #: first guess of a batched pass's device memory per graph edge (re-measured on CUDA)
    bytes_per_edge: float = 16384.0

    def __init__(self, module: torch.nn.Module, *, model_id: str, device, dtype, cutoff: float, elements, source: str | None = None, sha256: str | None = None):
        self._device = resolve_device(device)
        self._dtype = resolve_dtype(dtype, self.supported_dtypes, self.family)
        self.module = module.to(device=self._device, dtype=self._dtype).eval()
        self._model_id = model_id
        self._cutoff = float(cutoff)
        self._elements = frozenset(int(z) for z in elements)
        self.source = source
        self.sha256 = sha256
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    # pickling and deep copies ---------------------------------------------------
    def __getstate__(self) -> dict:
        """Everything but the per-thread scratch space and the worker pool (rebuilt empty on unpickle)."""
        state = self.__dict__.copy()
        state.pop("_local", None)
        state["_pool"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def _captured(self) -> dict:
        """Per-thread scratch space for forward hooks (descriptors, per-atom terms)."""
        if not hasattr(self._local, "captured"):
            self._local.captured = {}
        return self._local.captured

    # read-only declarations -------------------------------------------------
    device = property(lambda self: self._device, doc="torch device the model runs on")
    dtype = property(lambda self: self._dtype, doc="torch dtype of the model's parameters")
    cutoff = property(lambda self: self._cutoff, doc="native graph cutoff in Å")
    elements = property(lambda self: self._elements, doc="atomic numbers the model covers")
    model_id = property(lambda self: self._model_id, doc="stable identifier of the loaded weights")

    @property
    def implemented_properties(self) -> tuple[str, ...]:
        return ("energy", "free_energy", "energies", "forces", "stress", "descriptors")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})"

    # backend hooks ----------------------------------------------------------
    @abc.abstractmethod
    def _forward(self, atoms_list: Sequence[Atoms], cutoff: float, *, stress: bool, descriptors: bool) -> Forward:
        """Energy of a batch, differentiable w.r.t. ``positions`` and ``strains``."""

    @abc.abstractmethod
    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Named groups: ``embedding``, ``interaction_0`` ... ``interaction_n``, ``readout``."""

    @abc.abstractmethod
    def reference_energies(self) -> dict[int, float]:
        """The model's own per-element reference energies (eV/atom), by atomic number."""

    # evaluation ---------------------------------------------------------------
    def check(self, atoms: Atoms, *, stress: bool = False, min_distance: float | None = MIN_DISTANCE) -> None:
        check_atoms(atoms, self.elements, self.model_id, min_distance=min_distance)
        if stress and not atoms.pbc.all():
            raise StressNotDefined(f"stress is defined only for cells periodic in all three directions; this one has pbc={atoms.pbc.tolist()}")

    def _cutoff_or_native(self, cutoff: float | None) -> float:
        if cutoff is None:
            return self.cutoff
        if not 0 < cutoff <= self.cutoff + 1e-9:
            raise ConfigurationError(f"cutoff {cutoff} Å is outside (0, {self.cutoff}] Å, the native cutoff of {self.model_id}; radii beyond it change nothing in this model")
        return float(cutoff)

    def compute(
        self,
        atoms_list: Sequence[Atoms],
        *,
        forces: bool = True,
        stress: bool = False,
        descriptors: bool = False,
        cutoff: float | None = None,
        create_graph: bool = False,
        min_distance: float | None = MIN_DISTANCE,
        node_weights: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batched evaluation returning torch tensors (differentiable with ``create_graph``).

        Keys: ``energy`` [B], ``forces`` [N, 3], ``stress`` [B, 3, 3], ``energies`` [N],
        ``descriptors`` [N, d], ``n_atoms`` [B] (long).

        ``node_weights`` ``{Z: w}``: forces and stress are the gradients of
        ``E + Σ_i (w_Z_i - 1) E_i`` (per-atom energies ``E_i``; elements not named keep w = 1).
        """
        rc = self._validate(atoms_list, stress=stress, cutoff=cutoff, min_distance=min_distance)
        return self._run(atoms_list, rc, forces=forces, stress=stress, descriptors=descriptors, create_graph=create_graph, node_weights=node_weights)

    def _validate(self, atoms_list, *, stress: bool, cutoff: float | None, min_distance: float | None) -> float:
        """Check every structure and the cutoff before any work; return the cutoff to use."""
        if len(atoms_list) == 0:
            raise ConfigurationError("no structures to evaluate")
        for atoms in atoms_list:
            self.check(atoms, stress=stress, min_distance=min_distance)
        rc = self._cutoff_or_native(cutoff)
        for atoms in atoms_list:
            check_graph_size(atoms, rc, self.model_id)
        return rc

    def _run(self, atoms_list, rc: float, *, forces: bool, stress: bool, descriptors: bool, create_graph: bool, on_descriptors=None, node_weights=None) -> dict:
        """One forward pass over validated structures; memory exhaustion becomes CalculationFailed."""
        need_grad = forces or stress or create_graph
        try:
            kw = {"node_weights": node_weights} if node_weights else {}
            out = self._compute(atoms_list, rc, forces=forces, stress=stress, descriptors=descriptors, create_graph=create_graph, need_grad=need_grad, on_descriptors=on_descriptors, **kw)
        except (MemoryError, torch.OutOfMemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not _is_out_of_memory(exc):
                raise
            n = sum(len(a) for a in atoms_list)
            raise CalculationFailed(
                f"{self.model_id} ran out of memory on {len(atoms_list)} structure(s) with {n} atoms in all on {self.device}; evaluate fewer structures per batch or a smaller cell"
            ) from exc
        self._check_finite(out, atoms_list)
        return out

    def _compute(self, atoms_list, rc, *, forces, stress, descriptors, create_graph, need_grad, on_descriptors=None, node_weights=None) -> dict:
        with torch.enable_grad() if need_grad else torch.no_grad():
            fwd = self._forward(atoms_list, rc, stress=stress, descriptors=descriptors)
            out = {"energy": fwd.energy, "n_atoms": torch.tensor([len(a) for a in atoms_list], device=self.device)}
            if on_descriptors is not None and fwd.descriptors is not None:
                # started before the backward pass below, so a layer's work on them can overlap it
                out["descriptor_jobs"] = hand_descriptors(on_descriptors, fwd.descriptors, atoms_list)
            if need_grad and (forces or stress):
                inputs = list(fwd.positions) + (list(fwd.strains) if stress else [])
                target = fwd.energy.sum() + (_weighted_excess(fwd, atoms_list, node_weights) if node_weights else 0.0)
                grads = torch.autograd.grad(target, inputs, create_graph=create_graph, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
                n_pos = len(fwd.positions)
                out["forces"] = -torch.cat(grads[:n_pos], dim=0)
                if stress:
                    out["stress"] = stress_from_strain_gradient(torch.stack(grads[n_pos:]), fwd.volumes)
                out["_positions"] = fwd.positions
        if fwd.node_energy is not None:
            out["energies"] = fwd.node_energy
        if fwd.magmoms is not None:
            out["magmoms"] = fwd.magmoms
        if descriptors and fwd.descriptors is not None:
            out["descriptors"] = fwd.descriptors
        if not create_graph:
            out = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
        return out

    def _check_finite(self, out: dict, atoms_list) -> None:
        for key in ("energy", "forces", "stress"):
            value = out.get(key)
            if value is not None and not bool(torch.isfinite(value).all()):
                formulas = ", ".join(a.get_chemical_formula() for a in atoms_list[:3])
                raise CalculationFailed(f"{self.model_id} returned non-finite {key} for {formulas}")

    def evaluate(
        self,
        atoms_list: Sequence[Atoms],
        properties: Sequence[str] = ("energy", "forces"),
        *,
        cutoff: float | None = None,
        min_distance: float | None = MIN_DISTANCE,
        workers: int | None = None,
        on_descriptors=None,
        node_weights: dict | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Evaluate many structures; one dict of float64 numpy arrays per structure.

        Stress is Voigt-6 (xx, yy, zz, yz, xz, xy) in eV/Å³, as ASE expects.

        On a GPU the structures go through one batched forward pass per chunk
        (:mod:`.batching`: sized from a memory estimate, halved on out-of-memory). On a CPU a
        big batch is memory-bound (measured: slower per structure than single
        calls), so the structures are instead spread over ``workers`` threads
        (default: torch's intra-op thread count), each running single-structure
        forward passes with one intra-op thread; results are identical to single calls.

        ``on_descriptors(descriptors, numbers, n_atoms)`` (with ``"descriptors"``
        requested) is called once per forward pass, as soon as the descriptors
        exist and before the backward pass for forces and stress; its return value
        (e.g. a Future of work done on another thread) is handed back in each
        structure's result as ``descriptor_jobs`` ``(value, index of the structure
        in that pass)``. ``node_weights``: as in :meth:`compute`.
        """
        props = set(properties)
        kwargs = dict(forces="forces" in props, stress="stress" in props, descriptors="descriptors" in props, create_graph=False, on_descriptors=on_descriptors, node_weights=node_weights)
        rc = self._validate(atoms_list, stress=kwargs["stress"], cutoff=cutoff, min_distance=min_distance)  # before any work
        workers = torch.get_num_threads() if workers is None else workers
        if self.device.type != "cpu" or workers <= 1 or len(atoms_list) <= 1:
            from .batching import evaluate_in_chunks

            return evaluate_in_chunks(self, atoms_list, rc, lambda chunk: split_results(self._run(chunk, rc, **kwargs), [len(a) for a in chunk]))
        pool = self._cpu_pool(workers)
        futures = [pool.submit(self._run, [atoms], rc, **kwargs) for atoms in atoms_list]
        return [split_results(f.result(), [len(a)])[0] for f, a in zip(futures, atoms_list)]

    def _cpu_pool(self, workers: int) -> ThreadPoolExecutor:
        """Worker threads with one intra-op thread each (OpenMP thread counts are per thread)."""
        if self._pool is None or self._pool._max_workers != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"mlff-{self.family}", initializer=torch.set_num_threads, initargs=(1,))
        return self._pool

    # Hessian ------------------------------------------------------------------
    def hessian(
        self,
        atoms: Atoms,
        rows: Sequence[int] | None = None,
        *,
        method: str = "auto",
        delta: float = 1e-3,
        cutoff: float | None = None,
        min_distance: float | None = MIN_DISTANCE,
        node_weights: dict | None = None,
    ) -> np.ndarray:
        """Rows of the energy Hessian d²E/dx_i dx_j in eV/Å², shape ``[len(rows), 3N]``.

        Sign convention: forces are -∇E, so the force Jacobian dF/dx is -H.
        ``method`` is ``"autograd"`` (double backward), ``"fd"`` (central differences
        of forces with step ``delta`` Å, all displaced copies in one batch) or
        ``"auto"`` (autograd when the backend supports it). ``node_weights``: as in :meth:`compute`.
        """
        n3 = 3 * len(atoms)
        rows = np.arange(n3) if rows is None else np.asarray(rows, dtype=int)
        if rows.size and (rows.min() < 0 or rows.max() >= n3):
            raise ConfigurationError(f"Hessian rows must lie in [0, {n3}); got {rows.min()}..{rows.max()}")
        if method == "auto":
            method = "autograd" if self.double_backward else "fd"
        if method == "autograd":
            return self._hessian_autograd(atoms, rows, cutoff, min_distance, node_weights)
        if method == "fd":
            return self._hessian_fd(atoms, rows, delta, cutoff, min_distance, node_weights)
        raise ConfigurationError(f"unknown Hessian method {method!r}; use 'auto', 'autograd' or 'fd'")

    def _hessian_autograd(self, atoms, rows, cutoff, min_distance, node_weights=None) -> np.ndarray:
        out = self.compute([atoms], forces=True, create_graph=True, cutoff=cutoff, min_distance=min_distance, node_weights=node_weights)
        flat = out["forces"].reshape(-1)
        positions = out["_positions"]
        result = np.empty((len(rows), flat.numel()))
        for k, row in enumerate(rows):
            grads = torch.autograd.grad(flat[row], positions, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, positions)]
            result[k] = -torch.cat(grads).reshape(-1).detach().cpu().double().numpy()
        return result

    def _hessian_fd(self, atoms, rows, delta, cutoff, min_distance, node_weights=None) -> np.ndarray:
        displaced = []
        for row in rows:
            for sign in (1.0, -1.0):
                a = atoms.copy()
                a.positions[row // 3, row % 3] += sign * delta
                displaced.append(a)
        result = np.empty((len(rows), 3 * len(atoms)))
        chunk = max(2, 2 * (4096 // max(len(atoms), 1)))
        forces = []
        for start in range(0, len(displaced), chunk):
            batch = self.evaluate(displaced[start : start + chunk], ("energy", "forces"), cutoff=cutoff, min_distance=min_distance, node_weights=node_weights)
            forces.extend(r["forces"].reshape(-1) for r in batch)
        for k in range(len(rows)):
            result[k] = -(forces[2 * k] - forces[2 * k + 1]) / (2.0 * delta)
        return result


def hand_descriptors(on_descriptors, descriptors: torch.Tensor, atoms_list):
    """``on_descriptors(descriptors as float32 numpy, atomic numbers, atoms per structure)``: the layer hook's call."""
    desc = np.array(descriptors.detach().cpu(), dtype=np.float32)
    return on_descriptors(desc, np.concatenate([a.numbers for a in atoms_list]), [len(a) for a in atoms_list])


def _weighted_excess(fwd: Forward, atoms_list, node_weights: dict) -> torch.Tensor:
    """``Σ_i (w_Z_i - 1) E_i`` over the batch: the per-element reweighting of :meth:`ModelAdapter.compute`."""
    if fwd.node_energy is None:
        raise ConfigurationError("per-element weights need per-atom energies, which this model does not give")
    numbers = np.concatenate([a.numbers for a in atoms_list])
    excess = np.array([float(node_weights.get(int(z), 1.0)) - 1.0 for z in numbers])
    return (torch.as_tensor(excess, dtype=fwd.node_energy.dtype, device=fwd.node_energy.device) * fwd.node_energy.reshape(-1)).sum()


def stress_from_strain_gradient(d_energy_d_strain: torch.Tensor, volumes: torch.Tensor) -> torch.Tensor:
    """Stress ``[B, 3, 3]`` (eV/Å³, positive is tensile) from dE/dε ``[B, 3, 3]`` and cell volumes ``[B]``."""
    sigma = d_energy_d_strain.reshape(-1, 3, 3) / volumes.reshape(-1, 1, 1)
    return 0.5 * (sigma + sigma.transpose(1, 2))


def _is_out_of_memory(exc: RuntimeError) -> bool:
    """torch's CPU allocator reports exhaustion as a plain RuntimeError."""
    text = str(exc).lower()
    return "can't allocate memory" in text or "out of memory" in text


def split_results(out: dict[str, torch.Tensor], n_atoms: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Split batched tensors into per-structure float64 numpy dicts (stress as Voigt-6)."""

    def np64(t):
        return t.detach().cpu().double().numpy()

    results = [dict() for _ in n_atoms]
    energy = np64(out["energy"])
    bounds = np.cumsum([0, *n_atoms])
    for b, res in enumerate(results):
        if "descriptor_jobs" in out:
            res["descriptor_jobs"] = (out["descriptor_jobs"], b)
        res["energy"] = float(energy[b])
        res["free_energy"] = float(energy[b])
        for key in ("forces", "energies", "descriptors", "magmoms"):
            if key in out:
                res[key] = np64(out[key][bounds[b] : bounds[b + 1]])
        if "stress" in out:
            s = np64(out["stress"][b])
            res["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    return results
