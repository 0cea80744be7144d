"""Distilled students: small ScaleShiftMACE models trained by :mod:`mlff_calc.distill`.

A student folder holds ``student.json`` (format ``"mlff_calc.student"`` v1: the
architecture kwargs of :func:`~mlff_calc.models.mace_build.build_scaleshift_mace`,
elements, cutoff, dtype, teacher id/sha256, training-data hash, mlff_calc version,
metrics and one check structure with its energy) and the weights as a
``state_dict`` (``student.pt``, read with ``torch.load(weights_only=True)``; a
``.safetensors`` file is read too when the ``safetensors`` package is installed).
Nothing is unpickled. On load the weights' sha256 and the check energy are
re-verified, so a folder that loads but would evaluate wrongly is refused.

The student is conservative: forces are -∇E and stress the strain derivative,
computed by :class:`~mlff_calc.models.mace.MACEAdapter`; double backward works
(Hessian rows by autograd).

Default size (:data:`DEFAULT_ARCHITECTURE`): 16 channels, max_L 0, max_ell 2,
correlation 2, one interaction, r_max 4.5 Å (the first two neighbour shells of
diamond Si lie inside; the third, at 4.50 Å, is cut off). It was chosen by
measuring cost and accuracy of the candidates (``benchmarks/student_sizes.py``;
figures in BENCHMARKS.md §6.1). Per-op overhead dominates a call at this size, so
fusing ops helps more than shrinking the network: :meth:`StudentAdapter.compile`
(inference only) runs the whole call, backward pass included, as one compiled graph.
:data:`FAST_ARCHITECTURE` (8 channels, max_ell 1, 6 Bessel functions, radial MLP
[16]) is cheaper and less accurate; the default stays the more accurate one.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from ..errors import ArtifactError, ConfigurationError
from .base import hand_descriptors, stress_from_strain_gradient
from .family import Family, folder_with, register
from .mace import MACEAdapter, strained

log = logging.getLogger(__name__)

STUDENT_FORMAT = "mlff_calc.student"
STUDENT_VERSION = 1
MANIFEST = "student.json"
WEIGHTS = "student.pt"

#: architecture of a default student (kwargs of build_scaleshift_mace without the elements)
DEFAULT_ARCHITECTURE = {
    "r_max": 4.5,
    "channels": 16,
    "max_L": 0,
    "max_ell": 2,
    "correlation": 2,
    "num_interactions": 1,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "radial_mlp": [32, 32],
    "mlp_irreps": "16x0e",
}
#: the cheapest candidate size: faster, less accurate than the default (BENCHMARKS.md §6.1)
FAST_ARCHITECTURE = {**DEFAULT_ARCHITECTURE, "channels": 8, "max_ell": 1, "num_bessel": 6, "radial_mlp": [16], "mlp_irreps": "8x0e"}
_ARCH_KEYS = set(DEFAULT_ARCHITECTURE) | {"atomic_numbers", "atomic_energies", "avg_num_neighbors", "scale", "shift", "seed"}


def build_student(
    elements: Sequence[int],
    *,
    architecture: Mapping | None = None,
    atomic_energies: Mapping[int, float] | None = None,
    avg_num_neighbors: float = 16.0,
    scale: float = 1.0,
    shift: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A fresh student module and the complete kwargs that rebuild it (for ``student.json``)."""
    zs = sorted({int(z) for z in elements})
    arch = {**DEFAULT_ARCHITECTURE, **dict(architecture or {})}
    unknown = set(arch) - _ARCH_KEYS
    if unknown:
        raise ConfigurationError(f"unknown student architecture keys {sorted(unknown)}; known: {sorted(DEFAULT_ARCHITECTURE)}")
    e0 = {z: float((atomic_energies or {}).get(z, 0.0)) for z in zs}
    kwargs = {**arch, "atomic_numbers": zs, "atomic_energies": [e0[z] for z in zs], "avg_num_neighbors": float(avg_num_neighbors), "scale": float(scale), "shift": float(shift), "seed": int(seed)}
    kwargs["radial_mlp"] = [int(x) for x in kwargs["radial_mlp"]]
    return _build(kwargs, dtype), kwargs


def _build(kwargs: Mapping, dtype: torch.dtype):
    from .mace_build import build_scaleshift_mace

    return build_scaleshift_mace(**{**kwargs, "radial_mlp": tuple(kwargs["radial_mlp"])}, dtype=dtype)


#: torch.compile can trace ``torch.autograd.grad`` into one graph (torch._dynamo's trace_autograd_ops)
_TRACES_AUTOGRAD = hasattr(torch._dynamo.config, "trace_autograd_ops")


def _autograd_traced():
    """Per-thread dynamo setting for the compiled graph (patches are thread-local in torch)."""
    if _TRACES_AUTOGRAD:
        return torch._dynamo.config.patch(trace_autograd_ops=True)
    return contextlib.nullcontext()


class _EnergyForcesStress(torch.nn.Module):
    """One student call as a single graph: energy, -∇E, the strain derivative, descriptors."""

    def __init__(self, module, invariant: torch.Tensor):
        super().__init__()
        self.module = module
        self.register_buffer("invariant", invariant.clone(), persistent=False)

    def forward(self, graph: dict, strain: torch.Tensor | None, descriptors: bool) -> dict:
        out = self.module(strained(graph, strain), compute_force=False, compute_stress=False, training=False)
        energy = out["energy"]
        wrt = [graph["positions"]] if strain is None else [graph["positions"], strain]
        grads = torch.autograd.grad(energy.sum(), wrt)
        result = {"energy": energy.detach(), "forces": -grads[0], "energies": out["node_energy"].detach()}
        if strain is not None:
            result["stress"] = stress_from_strain_gradient(grads[1], torch.linalg.det(graph["cell"]).abs())
        if descriptors:
            result["descriptors"] = out["node_feats"][:, self.invariant].detach()
        return result


class StudentAdapter(MACEAdapter):
    """A distilled ScaleShiftMACE; ``architecture`` holds the kwargs that rebuild it."""

    family = "student"

    def __init__(self, module, *, architecture: Mapping, model_id="student", device="auto", dtype=None, source=None, sha256=None, manifest: dict | None = None):
        super().__init__(module, model_id=model_id, device=device, dtype=dtype, source=source, sha256=sha256)
        self.architecture = dict(architecture)
        self.manifest = dict(manifest or {})

    def __getstate__(self) -> dict:
        """A compiled graph does not pickle: the copy compiles its own (same options, on its first call)."""
        state = super().__getstate__()
        for key in ("_compiled", "_watched", "_compiled_versions"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if state.get("_compile_options") is not None:
            self.compile(**state["_compile_options"])

    def compile(self, *, dynamic: bool = True) -> "StudentAdapter":
        """Run energy+forces+stress calls through one ``torch.compile``'d graph.

        The graph holds the whole call: the strain, mace's forward pass and the
        backward pass for forces and stress (``torch.autograd.grad`` traced into
        it), so inductor fuses all three and no Python autograd runs per call.
        Inference only: calls that need double backward (``create_graph=True``:
        training, Hessian rows), energy-only calls and calls below the native
        cutoff (the rewiring switch) keep the eager module. The compiled copy is
        built as mace-torch prepares models for compilation (``mace.tools.compile``:
        e3nn code generation off, symbolic tracing of the registered blocks) and
        holds a snapshot of the current weights; if the eager weights change
        afterwards (training), calls fall back to the eager module. The first call
        compiles (tens of seconds on a CPU; inductor caches it on disk for later
        processes); results agree with the eager module to float round-off (about
        1e-7 relative in float32), not bitwise. Returns ``self``.
        """
        from .mace import mace_scope

        with mace_scope():
            from mace.tools.compile import disable_e3nn_codegen, simplify

            # prepare() would also change torch._dynamo's process-wide config; the
            # setting it needs (tracing autograd.grad) is patched per call instead
            with disable_e3nn_codegen():
                copy = _build(self.architecture, self.dtype)
            copy = simplify(copy)
        # the eager module may hold extra constant buffers that the prepared one lacks
        missing, _extra = copy.load_state_dict(self.module.state_dict(), strict=False)
        if missing:
            raise ConfigurationError(f"cannot compile this student: the prepared module lacks {missing}")
        whole = _EnergyForcesStress(copy, self._invariant).to(device=self.device, dtype=self.dtype).eval()
        for p in whole.parameters():
            p.requires_grad_(False)
        self._compiled = torch.compile(whole, dynamic=dynamic, fullgraph=_TRACES_AUTOGRAD)
        self._compile_options = {"dynamic": dynamic}
        self._watched = list(self.module.parameters())  # walked once: module traversal costs time on every call
        self._compiled_versions = self._weight_versions()
        return self

    def _weight_versions(self) -> list[int]:
        watched = getattr(self, "_watched", None)
        return [p._version for p in (watched if watched is not None else self.module.parameters())]

    def _compiled_for(self, rc: float, *, create_graph: bool, gradients: bool):
        """The compiled graph if it may serve this call, else None (eager)."""
        compiled = getattr(self, "_compiled", None)
        if compiled is None or create_graph or not gradients or self.module.training or self._switch_window(rc) is not None:
            return None
        if self._weight_versions() != self._compiled_versions:
            log.warning("student weights changed after compile(); using the eager module (call compile() again)")
            self._compiled = self._compile_options = None
            return None
        return compiled

    def _compute(self, atoms_list, rc, *, forces, stress, descriptors, create_graph, need_grad, on_descriptors=None, node_weights=None) -> dict:
        compiled = None if node_weights else self._compiled_for(rc, create_graph=create_graph, gradients=forces or stress)
        if compiled is None:
            return super()._compute(
                atoms_list, rc, forces=forces, stress=stress, descriptors=descriptors, create_graph=create_graph, need_grad=need_grad, on_descriptors=on_descriptors, node_weights=node_weights
            )
        graph = self.graph(atoms_list, rc)
        graph["positions"].requires_grad_(True)
        strain = torch.zeros(len(atoms_list), 3, 3, dtype=self.dtype, device=self.device, requires_grad=True) if stress else None
        with _autograd_traced():
            out = compiled(graph, strain, descriptors)
        out["n_atoms"] = torch.tensor([len(a) for a in atoms_list], device=self.device)
        if on_descriptors is not None and descriptors:  # no backward pass left to overlap: called after it
            out["descriptor_jobs"] = hand_descriptors(on_descriptors, out["descriptors"], atoms_list)
        return out

    @classmethod
    def create(cls, elements: Sequence[int], *, device="cpu", dtype="float32", **kwargs) -> "StudentAdapter":
        """A new, untrained student (see :func:`build_student` for ``kwargs``)."""
        from .base import resolve_dtype

        torch_dtype = resolve_dtype(dtype, cls.supported_dtypes, cls.family)
        module, arch = build_student(elements, dtype=torch_dtype, **kwargs)
        return cls(module, architecture=arch, device=device, dtype=torch_dtype)

    @classmethod
    def load(cls, path, *, device="auto", dtype=None, model_id: str | None = None) -> "StudentAdapter":
        """A student folder written by :func:`save_student`; ``dtype=None`` keeps the trained dtype.

        Everything in the folder is checked before it is used: the manifest's format,
        version and entries, the weights' sha256, that the weights fit the recorded
        architecture, and the recorded energy of the check structure. Any mismatch
        raises ArtifactError naming the folder; nothing in it is modified.
        """
        from ..artifacts import check_manifest, read_json
        from .weights_file import read_weights

        folder = Path(path).expanduser()
        manifest = read_json(folder / MANIFEST, kind="student manifest")
        check_manifest(manifest, fmt=STUDENT_FORMAT, versions=(STUDENT_VERSION,), path=folder / MANIFEST)
        arch, weights, trained = _checked_entries(manifest, folder / MANIFEST, cls)
        file = folder / weights["file"]
        state = read_weights(folder, weights, kind="student", manifest_path=folder / MANIFEST)
        digest = weights["sha256"]
        try:
            module = _build(arch, trained)
        except (TypeError, ValueError, KeyError, IndexError, AssertionError, RuntimeError, ZeroDivisionError) as exc:
            raise ArtifactError(f"the architecture in {folder / MANIFEST} cannot be built ({type(exc).__name__}: {exc}); the manifest is corrupt") from exc
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"student weights {file} do not fit the architecture in {folder / MANIFEST}: {exc}") from exc
        adapter = cls(module, architecture=arch, model_id=model_id or f"student:{digest[:16]}", device=device, dtype=dtype or trained, source=str(folder), sha256=digest, manifest=manifest)
        _verify_check(adapter, manifest["check"], folder, same_dtype=adapter.dtype == trained)
        teacher = manifest.get("teacher")
        log.info("loaded student %s (teacher %s)", folder, teacher.get("model_id") if isinstance(teacher, dict) else None)
        return adapter


def _checked_entries(manifest: dict, path: Path, cls) -> tuple[dict, dict, torch.dtype]:
    """``(architecture, weights, trained dtype)`` of a manifest, or ArtifactError naming what is wrong."""
    from .base import resolve_dtype

    problems = [k for k in ("architecture", "weights", "check") if not isinstance(manifest.get(k), dict)]
    if problems:
        raise ArtifactError(f"student manifest {path} has missing or invalid entries {problems}; it is incomplete or corrupt")
    arch, weights, check = manifest["architecture"], manifest["weights"], manifest["check"]
    unknown = set(arch) - _ARCH_KEYS
    if unknown:
        raise ArtifactError(f"student manifest {path} has unknown architecture keys {sorted(unknown)}; it is corrupt")
    if not all(isinstance(weights.get(k), str) for k in ("file", "sha256")) or Path(weights["file"]).name != weights["file"]:
        raise ArtifactError(f"student manifest {path} has an invalid 'weights' entry {weights!r}; it is corrupt")
    if not all(k in check for k in ("numbers", "positions", "cell", "pbc", "energy_eV")):
        raise ArtifactError(f"student manifest {path} has an incomplete 'check' entry; it is corrupt")
    try:
        trained = resolve_dtype(manifest.get("dtype"), cls.supported_dtypes, cls.family)
    except ConfigurationError as exc:
        raise ArtifactError(f"student manifest {path} names an invalid dtype {manifest.get('dtype')!r}; it is corrupt") from exc
    return arch, weights, trained


def _check_structure(atoms: Atoms) -> dict:
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}


def _verify_check(adapter: StudentAdapter, check: dict, folder: Path, *, same_dtype: bool) -> None:
    from ..errors import MLFFError

    try:
        atoms = Atoms(numbers=check["numbers"], positions=check["positions"], cell=check["cell"], pbc=check["pbc"])
        expected = float(check["energy_eV"])
        got = adapter.evaluate([atoms], ("energy",), min_distance=None)[0]["energy"]
    except (MLFFError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise ArtifactError(f"the check structure in {folder / MANIFEST} cannot be evaluated ({type(exc).__name__}: {exc}); the manifest is corrupt") from exc
    tol = (1e-6 if same_dtype else 1e-4) * max(1.0, abs(expected))
    if not abs(got - expected) <= tol:  # also refuses a NaN
        raise ArtifactError(
            f"student {folder} gives {got:.8f} eV on its check structure but was saved giving {expected:.8f} eV; "
            "the weights or this mlff_calc/mace version evaluate it differently; refusing to return wrong numbers"
        )


def save_student(
    student, folder, *, teacher: dict | None = None, training_data_sha256: str | None = None, metrics: dict | None = None, config: dict | None = None, check_atoms: Atoms | None = None
) -> Path:
    """Write ``student.json`` + ``student.pt`` (a state_dict) into ``folder`` atomically.

    ``student``: a :class:`StudentAdapter` (or anything with ``.adapter`` holding one,
    such as the result of :func:`mlff_calc.distill.train_student`, whose teacher,
    data hash, metrics and config are used unless given here).
    """
    from .._version import __version__
    from ..artifacts import write_json
    from .weights_file import write_weights

    if not isinstance(student, StudentAdapter) and hasattr(student, "adapter"):
        teacher = teacher if teacher is not None else getattr(student, "teacher", None)
        training_data_sha256 = training_data_sha256 or getattr(student, "training_data_sha256", None)
        metrics = metrics if metrics is not None else getattr(student, "metrics", None)
        config = config if config is not None else getattr(student, "config", None)
        check_atoms = check_atoms if check_atoms is not None else getattr(student, "check_atoms", None)
        student = student.adapter
    if not isinstance(student, StudentAdapter):
        raise ConfigurationError(f"save_student needs a StudentAdapter, not {type(student).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if check_atoms is None:
        check_atoms = _default_check(student)
    weights = write_weights(folder, WEIGHTS, student.module.state_dict())
    energy = student.evaluate([check_atoms], ("energy",), min_distance=None)[0]["energy"]
    zs = sorted(student.elements)
    manifest = {
        "format": STUDENT_FORMAT,
        "format_version": STUDENT_VERSION,
        "mlff_calc_version": __version__,
        "family": "mace",
        "architecture": student.architecture,
        "elements": {"numbers": zs, "symbols": [chemical_symbols[z] for z in zs]},
        "cutoff_A": student.cutoff,
        "dtype": str(student.dtype).removeprefix("torch."),
        "n_parameters": int(sum(p.numel() for p in student.module.parameters())),
        "teacher": teacher or {},
        "training_data_sha256": training_data_sha256,
        "metrics": metrics or {},
        "config": config or {},
        "units": {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "length": "Å"},
        "weights": {**weights, "kind": "state_dict (torch.save; load with weights_only=True)"},
        "check": {**_check_structure(check_atoms), "energy_eV": energy},
    }
    write_json(folder / MANIFEST, manifest)
    return folder


def _default_check(student: StudentAdapter) -> Atoms:
    """A small, fixed structure of the student's elements: a rattled simple-cubic cell."""
    zs = sorted(student.elements)
    n = max(len(zs), 2)
    rng = np.random.default_rng(0)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=float)[: max(n, 8)] * 2.4
    numbers = [zs[k % len(zs)] for k in range(len(grid))]
    return Atoms(numbers=numbers, positions=grid + rng.normal(0, 0.05, grid.shape), cell=np.eye(3) * 4.8, pbc=True)


register(Family("student", StudentAdapter, folder_with(MANIFEST), "an mlff_calc student (student.json)", folder=True))
