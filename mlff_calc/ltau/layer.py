"""LTAU-FF force uncertainty as a calculator layer, and an optimizer/MD observer.

:class:`LTAULayer` asks the adapter for per-atom descriptors in the same forward
pass as the energy and forces (no second evaluation), looks up the ``k`` nearest
training atoms in the LTAU index (:mod:`mlff_calc.ltau`) and adds, per atom:

- ``forces_uncertainty`` [N]: expected force-error norm, eV/Å (calibrated);
- ``forces_error_probability_below_tol`` [N]: P(error < ``tolerance_eV_per_A``);
- ``forces_error_interval`` [N, 2]: central interval, eV/Å, calibrated to 90 % coverage on held-out atoms
  when the index was built with calibration data (else the nominal 90 % interval);
- ``ood_score`` [N]: mean Euclidean descriptor distance to the ``k`` neighbours;

and per structure ``<name>_max`` and ``<name>_mean`` of each (for the interval:
of its upper bound, ``forces_error_interval_max``/``_mean``), plus
``forces_error_probability_below_tol_min``. With ``annotate=True`` (off by
default: the caller's Atoms are left alone) the same values are copied into
``atoms.arrays`` (per atom) and ``atoms.info`` (per structure) of the evaluated Atoms, so ``ase.io.write(..., format="extxyz")``
keeps them (extxyz writes 8 decimals). In ``calc.evaluate(atoms_list)`` those are your Atoms; with
``atoms.calc = calc`` ASE evaluates a copy (``calc.atoms``), so use
``mlff_calc.workflows.snapshot(atoms)`` or :func:`annotate` with ``calc.results``.

The k-NN lookup and averaging start on the layer's own thread as soon as the
forward pass has made the descriptors, and run while torch computes forces
and stress (the backward pass); on a machine with a free core the layer's
cost is then mostly hidden. ``overlap=False`` does the lookup after the pass.
(A compiled student runs its forward and backward pass as one graph: the
lookup follows it.)

``on_demand=True`` defers the lookup until an uncertainty is asked for: a
calculation that requests none of them (MD steps, optimizer steps: ASE asks
for forces only) keeps the descriptors of its forward pass, and the lookup runs
when ``calc.get_property("forces_uncertainty_max")`` (an
:class:`UncertaintyMonitor`), ``calc.complete_results()`` or
``mlff_calc.workflows.snapshot`` (trajectory frames) asks for the same atoms,
with no second model evaluation. MD that checks the uncertainty every ``n``
steps then pays for ``1/n`` of the lookups. Requested explicitly
(``calc.evaluate(frames, ("energy", "forces_uncertainty"))``), they are computed
with the forces as usual.

:class:`UncertaintyMonitor` is attached with ``dyn.attach(monitor, interval=n)``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigurationError, MLFFError
from ..layers.base import Layer, Request
from .estimator import LTAU

log = logging.getLogger(__name__)

PER_ATOM = ("forces_uncertainty", "forces_error_probability_below_tol", "forces_error_interval", "ood_score")
PER_STRUCTURE = (
    "forces_uncertainty_max",
    "forces_uncertainty_mean",
    "forces_error_probability_below_tol_max",
    "forces_error_probability_below_tol_mean",
    "forces_error_probability_below_tol_min",
    "forces_error_interval_max",
    "forces_error_interval_mean",
    "ood_score_max",
    "ood_score_mean",
)


def annotate(atoms, results: dict) -> None:
    """Copy the LTAU results of one structure into ``atoms.arrays`` / ``atoms.info``."""
    for key in PER_ATOM:
        if key in results:
            atoms.arrays[key] = np.array(results[key], dtype=float)
    for key in PER_STRUCTURE:
        if key in results:
            atoms.info[key] = float(results[key])


class LTAULayer(Layer):
    """Per-atom force uncertainty from an LTAU folder (see the module docstring).

    ``k``/``scale`` override the calibrated values; ``annotate=True`` also writes
    the results into the evaluated Atoms (default: results only).
    """

    name = "ltau"
    provides = PER_ATOM + PER_STRUCTURE

    def __init__(self, ltau: LTAU, *, tolerance_eV_per_A: float = 0.05, k: int | None = None, scale: float | None = None, annotate: bool = False, overlap: bool = True, on_demand: bool = False):
        if not (isinstance(tolerance_eV_per_A, (int, float, np.floating)) and np.isfinite(tolerance_eV_per_A) and tolerance_eV_per_A > 0):
            raise ConfigurationError(f"tolerance_eV_per_A must be a finite number > 0, not {tolerance_eV_per_A!r}")
        if k is not None and int(k) < 1:
            raise ConfigurationError(f"k must be at least 1, got {k}")
        if scale is not None and not float(scale) > 0:
            raise ConfigurationError(f"scale must be > 0, got {scale}")
        self.ltau = ltau
        self.tolerance = float(tolerance_eV_per_A)
        self.k = ltau.k if k is None else int(k)
        self.scale = ltau.calibration.scale if scale is None else float(scale)
        self.annotate = bool(annotate)
        self.overlap = bool(overlap)
        self.on_demand = bool(on_demand)
        self.deferrable = self.provides if self.on_demand else ()
        self._deferred = None  # (positions, cell, numbers, descriptors) of the last deferred single structure
        self._bound = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def __getstate__(self):  # a thread pool and a lock do not pickle; the copy makes its own
        return {k: v for k, v in self.__dict__.items() if k != "_pool_lock"} | {"_pool": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    @classmethod
    def from_dir(cls, path, tolerance_eV_per_A: float = 0.05, **kwargs) -> "LTAULayer":
        return cls(LTAU.load(Path(path)), tolerance_eV_per_A=tolerance_eV_per_A, **kwargs)

    @classmethod
    def from_option(cls, value: str, *, verb: str | None = None) -> "LTAULayer":
        """The layer of ``--ltau INDEX_DIR``; ``md`` looks uncertainties up on demand (for the frames it writes, not every step)."""
        return cls.from_dir(value, on_demand=verb == "md")

    def bind(self, adapter) -> None:
        if "descriptors" not in adapter.implemented_properties:
            raise ConfigurationError(f"{adapter.model_id} gives no per-atom descriptors; the LTAU layer needs them")
        self.ltau.check_adapter(adapter)
        dim = getattr(adapter, "descriptor_dim", None)
        if dim is None:  # measure it once on a tiny structure of the model's elements
            dim = _probe_dim(adapter)
        self.ltau.check_adapter(adapter, int(dim))
        self._bound = adapter.model_id

    def before(self, atoms_list, request: Request) -> Request:
        request.properties.add("descriptors")
        return request

    def _wanted(self, request: Request) -> bool:
        """Whether this call computes the uncertainties (on demand: only when the caller asked for one)."""
        return not self.on_demand or bool(request.requested & set(self.provides))

    def descriptor_hook(self, request: Request):
        return self._start if self.overlap and self._wanted(request) else None

    def _start(self, desc, numbers, n_atoms):
        """Called by the adapter between forward and backward pass: start the lookup on this layer's thread."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltau", initializer=_one_faiss_thread)
        return self._pool.submit(self._predict, desc, numbers, n_atoms)

    def _predict(self, desc, numbers, n_atoms) -> tuple:
        """``(Prediction of all atoms, row bounds per structure)`` of one forward pass."""
        if desc.shape[1] != self.ltau.index.dim:
            raise ArtifactError(f"the model gives {desc.shape[1]}-dimensional descriptors; LTAU index {self.ltau.path} holds {self.ltau.index.dim}")
        pred = self.ltau.predict(desc, numbers, tolerance=self.tolerance, k=self.k, scale=self.scale)
        return pred, np.cumsum([0, *n_atoms])

    def after(self, atoms_list, results: list[dict], request: Request) -> list[dict]:
        deferred = None
        if self._wanted(request):
            out = [self._one(atoms, res, request.descriptor_job(self, i)) for i, (atoms, res) in enumerate(zip(atoms_list, results))]
        else:  # on demand: keep what the lookup needs (single structures: the ASE calculator's case)
            out = [dict(res) for res in results]
            if len(atoms_list) == 1 and out[0].get("descriptors") is not None:
                a = atoms_list[0]
                deferred = (a.positions.copy(), a.cell.array.copy(), a.numbers.copy(), np.array(out[0]["descriptors"], dtype=np.float32))
        self._deferred = deferred  # one assignment: complete() sees a whole tuple or None
        if "descriptors" not in request.requested:  # asked for by this layer only: dropped again
            for res in out:
                res.pop("descriptors", None)
        return out

    def complete(self, atoms, result: dict) -> bool:
        d = self._deferred
        if d is None or len(atoms) != len(d[2]) or not (np.array_equal(atoms.positions, d[0]) and np.array_equal(atoms.cell.array, d[1]) and np.array_equal(atoms.numbers, d[2])):
            return False
        pred, _ = self._predict(d[3], d[2], [len(atoms)])
        self._fill(atoms, result, pred, slice(None))
        return True

    def _one(self, atoms, res: dict, job) -> dict:
        res = dict(res)
        if job is not None:
            future, b = job
            pred, bounds = future.result()
            rows = slice(bounds[b], bounds[b + 1])
        else:
            desc = res.get("descriptors")
            if desc is None:
                raise MLFFError("the LTAU layer got no descriptors from the forward pass")
            pred, _ = self._predict(desc, atoms.numbers, [len(atoms)])
            rows = slice(None)
        return self._fill(atoms, res, pred, rows)

    def _fill(self, atoms, res: dict, pred, rows) -> dict:
        """Write the per-atom and per-structure outputs of ``pred[rows]`` into ``res`` (and the Atoms)."""
        res["forces_uncertainty"] = pred.expected[rows]
        res["forces_error_probability_below_tol"] = pred.probability_below[rows]
        res["forces_error_interval"] = pred.interval[rows]
        res["ood_score"] = pred.ood_score[rows]
        for key in ("forces_uncertainty", "forces_error_probability_below_tol", "ood_score"):
            res[f"{key}_max"] = float(np.max(res[key]))
            res[f"{key}_mean"] = float(np.mean(res[key]))
        res["forces_error_probability_below_tol_min"] = float(np.min(res["forces_error_probability_below_tol"]))
        res["forces_error_interval_max"] = float(np.max(res["forces_error_interval"][:, 1]))
        res["forces_error_interval_mean"] = float(np.mean(res["forces_error_interval"][:, 1]))
        res["contributions"] = {**res.get("contributions", {}), self.name: 0.0}
        if self.annotate:
            annotate(atoms, res)
        return res

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.ltau.path) if self.ltau.path else None,
            "k": self.k,
            "scale": self.scale,
            "tolerance_eV_per_A": self.tolerance,
            "index": self.ltau.index.kind,
            "n_train_atoms": self.ltau.index.ntotal,
            "overlap": self.overlap,
            "on_demand": self.on_demand,
        }


def _one_faiss_thread() -> None:
    """The lookup runs beside torch's backward pass: one faiss thread, not all cores."""
    from .index import _faiss

    _faiss().omp_set_num_threads(1)


def _probe_dim(adapter) -> int:
    from ase import Atoms

    z = min(adapter.elements)
    atoms = Atoms(numbers=[z, z], positions=[[0, 0, 0], [0, 0, 2.2]], cell=[8, 8, 8], pbc=False)
    res = adapter.evaluate([atoms], ("energy", "descriptors"), min_distance=None)[0]
    if "descriptors" not in res:
        raise ConfigurationError(f"{adapter.model_id} gives no per-atom descriptors; the LTAU layer needs them")
    return int(res["descriptors"].shape[1])


# monitor ---------------------------------------------------------------------------


class UncertaintyThresholdExceeded(MLFFError, RuntimeError):
    """Raised by :class:`UncertaintyMonitor` (``action="raise"``) when the threshold is crossed."""

    def __init__(self, message: str, *, step: int, value: float, frame=None):
        super().__init__(message)
        self.step = step
        self.value = value
        self.frame = frame


class UncertaintyMonitor:
    """Observer for ASE optimizers and MD: ``dyn.attach(monitor, interval=n)``.

    Each call reads ``key`` (default ``forces_uncertainty_max``, eV/Å) from the
    atoms' calculator results (computing them if needed; with the LTAU layer they
    come from the same forward pass as the forces) and appends it to ``history``
    (``(step, value)``). When ``value > threshold``:

    - ``action="raise"`` (default): raise :class:`UncertaintyThresholdExceeded`,
      which stops ``dyn.run()``;
    - ``action="stop"``: set ``stopped`` and, when ``dyn`` (the optimizer or MD
      object) was given, set its ``max_steps`` to the current step so ``run()``
      returns normally after this step;
    - ``action="save"``: keep going; the frame is kept.

    With ``save_frames`` (a path) every frame over the threshold is appended to
    that extxyz file, with the uncertainty arrays; ``frames`` keeps them in memory.
    """

    ACTIONS = ("raise", "stop", "save")

    def __init__(self, atoms, threshold: float, *, key: str = "forces_uncertainty_max", action: str = "raise", dyn=None, save_frames=None, log_every: int = 0):
        if action not in self.ACTIONS:
            raise ConfigurationError(f"action {action!r} is not one of {self.ACTIONS}")
        if not float(threshold) > 0:
            raise ConfigurationError(f"threshold must be > 0, got {threshold}")
        self.atoms = atoms
        self.threshold = float(threshold)
        self.key = key
        self.action = action
        self.dyn = dyn
        self.save_frames = Path(save_frames) if save_frames is not None else None
        self.log_every = int(log_every)
        self.history: list[tuple[int, float]] = []
        self.frames: list = []
        self.stopped = False
        self.nsteps = 0

    @property
    def max_value(self) -> float:
        return max((v for _, v in self.history), default=float("nan"))

    def _value(self) -> float:
        calc = self.atoms.calc
        if calc is None:
            raise ConfigurationError("the monitored atoms have no calculator")
        return float(calc.get_property(self.key, self.atoms))

    def __call__(self) -> None:
        step = self.nsteps
        self.nsteps += 1
        value = self._value()
        self.history.append((step, value))
        if self.log_every and step % self.log_every == 0:
            log.info("step %d: %s = %.4g", step, self.key, value)
        if value <= self.threshold:
            return
        from .._runtime import snapshot

        frame = snapshot(self.atoms)
        frame.info["ltau_step"] = step
        self.frames.append(frame)
        if self.save_frames is not None:
            import ase.io

            self.save_frames.parent.mkdir(parents=True, exist_ok=True)
            ase.io.write(self.save_frames, frame, format="extxyz", append=True)
        message = f"{self.key} = {value:.4g} exceeds the threshold {self.threshold:.4g} at observer call {step}"
        log.warning(message)
        if self.action == "raise":
            self.stopped = True
            raise UncertaintyThresholdExceeded(message, step=step, value=value, frame=frame)
        if self.action == "stop":
            self.stopped = True
            if self.dyn is not None:
                _stop_dynamics(self.dyn)


def _stop_dynamics(dyn) -> None:
    """End an ASE optimizer's or MD's ``run()`` after the current step (its loop checks ``nsteps < max_steps``)."""
    dyn.max_steps = dyn.nsteps
