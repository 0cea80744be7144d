"""Energy-volume curve and a third-order Birch-Murnaghan fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from ..errors import CalculationFailed, ConfigurationError
from . import UNITS, default_prefix, evaluate_structures, output_path
from .base import Workflow, result_dict

log = logging.getLogger(__name__)


def birch_murnaghan(volume, e0, v0, b0, bp):
    """Third-order Birch-Murnaghan E(V); ``b0`` in eV/Å³, volumes in Å³, energies in eV."""
    x = (v0 / np.asarray(volume, dtype=float)) ** (2.0 / 3.0)
    return e0 + 9.0 * v0 * b0 / 16.0 * ((x - 1.0) ** 3 * bp + (x - 1.0) ** 2 * (6.0 - 4.0 * x))


def fit_birch_murnaghan(volumes, energies) -> dict[str, float]:
    """Least-squares BM3 fit: ``{"e0": eV, "v0": Å³, "b0": eV/Å³, "bp": -, "rms": eV}``.

    The start values come from a parabola E(V), as in ASE's EquationOfState.
    Raises CalculationFailed when the points have no minimum or the fit fails.
    """
    from scipy.optimize import curve_fit

    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if v.shape != e.shape or v.size < 4:
        raise ConfigurationError(f"a Birch-Murnaghan fit needs at least 4 (V, E) points of equal length, got {v.size} volumes and {e.size} energies")
    a, b, c = np.polyfit(v, e, 2)
    if a <= 0:
        raise CalculationFailed(f"E(V) has no minimum over {v.min():.3f}-{v.max():.3f} Å³ (parabola curvature {a:.3g} eV/Å⁶); widen or move the volume range")
    v0 = -b / (2 * a)
    p0 = [a * v0**2 + b * v0 + c, v0, 2 * a * v0, 4.0]
    try:
        popt, _ = curve_fit(birch_murnaghan, v, e, p0=p0, maxfev=20000)
    except RuntimeError as exc:
        raise CalculationFailed(f"the Birch-Murnaghan fit did not converge: {exc}") from exc
    e0, v0, b0, bp = (float(x) for x in popt)
    rms = float(np.sqrt(np.mean((birch_murnaghan(v, *popt) - e) ** 2)))
    if not v.min() <= v0 <= v.max():
        log.warning("fitted V0 = %.4f Å³ lies outside the sampled volumes %.4f-%.4f Å³; the fit is an extrapolation", v0, v.min(), v.max())
    return {"e0": e0, "v0": v0, "b0": b0, "bp": bp, "rms": rms}


#: B' of a sound Birch-Murnaghan fit; outside it the E(V) curve is not BM3-shaped over the range
BP_RANGE = (1.0, 10.0)


@dataclass
class EOSResult:
    """E(V) points and the BM3 fit. ``bulk_modulus_GPa`` is B0; ``bulk_modulus_derivative`` is B0'.

    The volumes are centred on ``center_volume_A3``: the relaxed volume when the
    workflow relaxed first (``relaxed``), else the input's.
    """

    volumes_A3: np.ndarray
    energies_eV: np.ndarray
    v0_A3: float
    e0_eV: float
    bulk_modulus_GPa: float
    bulk_modulus_derivative: float
    fit_rms_eV: float
    n_atoms: int
    scale_to_v0: float  # linear factor that takes the centre cell to V0
    fit_max_residual_eV: float = float("nan")
    center_volume_A3: float = float("nan")
    relaxed: bool = False
    relax_converged: bool | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def v0_per_atom_A3(self) -> float:
        return self.v0_A3 / self.n_atoms

    @property
    def fit_rms_eV_per_atom(self) -> float:
        return self.fit_rms_eV / self.n_atoms

    @property
    def v0_offset_percent(self) -> float:
        """How far the fitted V0 lies from the grid's centre (the relaxed volume), in %."""
        return 100.0 * (self.v0_A3 / self.center_volume_A3 - 1.0)

    def to_dict(self) -> dict:
        extra = {k: getattr(self, k) for k in ("v0_per_atom_A3", "fit_rms_eV_per_atom", "v0_offset_percent")}
        return result_dict(self) | extra | {"e0_per_atom_eV": self.e0_eV / self.n_atoms}


class EquationOfState(Workflow):
    """E(V) by isotropic scaling of the cell, then a third-order Birch-Murnaghan fit.

    With ``relax`` (the default) positions and cell are first relaxed with the same
    calculator (FIRE, ``fmax_eV_per_A``, needs stress), so the grid is centred on the
    model's own volume; ``relax=False`` centres it on the input. ``strain_range``:
    the volumes span ``V_c * (1 ± strain_range)`` (volumetric strain), ``n_points``
    of them evenly. Atoms keep their fractional coordinates (no internal
    relaxation). With our calculator all volumes are evaluated in one batched call;
    any other calculator is called volume by volume. A B' outside :data:`BP_RANGE`
    is logged as a warning and kept in ``result.warnings``.
    """

    name = "eos"

    def __init__(
        self,
        atoms: Atoms,
        calc,
        *,
        strain_range: float = 0.06,
        n_points: int = 9,
        relax: bool = True,
        fmax_eV_per_A: float = 1e-3,
        max_steps: int = 300,
        prefix=None,
        progress: bool | None = None,
    ):
        if not 0 < strain_range < 0.5:
            raise ConfigurationError(f"strain_range must be in (0, 0.5), got {strain_range}")
        if n_points < 5:
            raise ConfigurationError(f"n_points must be at least 5 for a 4-parameter fit, got {n_points}")
        if not atoms.pbc.all():
            raise ConfigurationError(f"an equation of state needs a cell periodic in all directions; this one has pbc={atoms.pbc.tolist()}")
        self.atoms = atoms
        self.calc = calc
        self.strain_range = float(strain_range)
        self.n_points = int(n_points)
        self.relax = bool(relax)
        self.fmax_eV_per_A = float(fmax_eV_per_A)
        self.max_steps = int(max_steps)
        self.prefix = default_prefix(atoms, prefix)
        self.progress = progress
        self.center: Atoms = atoms  # the relaxed structure once run() has relaxed
        self.relax_result = None
        self.result: EOSResult | None = None

    @property
    def output_files(self) -> dict[str, Path]:
        return {"summary": output_path(self.prefix, "eos.json"), "plot": output_path(self.prefix, "eos.png")}

    def structures(self, center: Atoms | None = None) -> list[Atoms]:
        """The scaled cells of ``center`` (default: the grid's centre), in order of increasing volume."""
        center = self.center if center is None else center
        v_c = center.get_volume()
        out = []
        for vol in v_c * (1.0 + np.linspace(-self.strain_range, self.strain_range, self.n_points)):
            scaled = center.copy()
            scaled.calc = None
            scaled.set_cell(center.cell.array * (vol / v_c) ** (1.0 / 3.0), scale_atoms=True)
            out.append(scaled)
        return out

    def _relax(self) -> Atoms:
        from .relax import Relax

        self.relax_result = Relax(self.atoms, self.calc, relax_cell=True, fmax_eV_per_A=self.fmax_eV_per_A, max_steps=self.max_steps, progress=self.progress).run()
        center = self.relax_result.atoms.copy()
        center.calc = None
        return center

    def run(self) -> EOSResult:
        self.center = self._relax() if self.relax else self.atoms
        structures = self.structures()
        volumes = np.array([s.get_volume() for s in structures])
        results = evaluate_structures(self.calc, structures, ("energy",), batch_size=len(structures), progress=self.progress, desc="eos")
        energies = np.array([float(r["energy"]) for r in results])
        fit = fit_birch_murnaghan(volumes, energies)
        residual = float(np.abs(birch_murnaghan(volumes, fit["e0"], fit["v0"], fit["b0"], fit["bp"]) - energies).max())
        formula = self.atoms.get_chemical_formula()
        notes = []
        if not BP_RANGE[0] <= fit["bp"] <= BP_RANGE[1]:
            notes.append(
                f"B' = {fit['bp']:.2f} is outside {BP_RANGE[0]:g}-{BP_RANGE[1]:g}: the model's E(V) is not Birch-Murnaghan-shaped over ±{100 * self.strain_range:g}% "
                f"(fit rms {1e3 * fit['rms'] / len(self.atoms):.3f} meV/atom); B and B' depend on the range",
            )
        if self.relax_result is not None and not self.relax_result.converged:
            notes.append(f"the relaxation did not converge in {self.max_steps} steps; the grid is centred on an unrelaxed volume")
        for note in notes:
            log.warning("EOS %s: %s", formula, note)
        self.result = EOSResult(
            volumes_A3=volumes,
            energies_eV=energies,
            v0_A3=fit["v0"],
            e0_eV=fit["e0"],
            bulk_modulus_GPa=fit["b0"] / units.GPa,
            bulk_modulus_derivative=fit["bp"],
            fit_rms_eV=fit["rms"],
            n_atoms=len(self.atoms),
            scale_to_v0=(fit["v0"] / self.center.get_volume()) ** (1.0 / 3.0),
            fit_max_residual_eV=residual,
            center_volume_A3=float(self.center.get_volume()),
            relaxed=self.relax,
            relax_converged=None if self.relax_result is None else bool(self.relax_result.converged),
            warnings=notes,
        )
        log.info("EOS %s: V0 = %.4f Å³, E0 = %.6f eV, B = %.2f GPa, B' = %.2f, rms %.3g eV", formula, fit["v0"], fit["e0"], self.result.bulk_modulus_GPa, fit["bp"], fit["rms"])
        return self.result

    def atoms_at_minimum(self) -> Atoms:
        """The grid's centre structure (the relaxed one, by default) scaled isotropically to the fitted V0."""
        res = self._need_result()
        out = self.center.copy()
        out.calc = None
        out.set_cell(self.center.cell.array * res.scale_to_v0, scale_atoms=True)
        return out

    def write_summary(self, path=None) -> Path:
        res = self._need_result()
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={"strain_range": self.strain_range, "n_points": self.n_points, "fit": "birch-murnaghan-3", "relax": self.relax, "fmax_eV_per_A": self.fmax_eV_per_A},
            result=res.to_dict(),
            units=UNITS | {"volume": "Å³", "bulk_modulus": "GPa"},
        )

    def plot(self, path=None, reference: dict | None = None) -> Path:
        """PNG of the computed E(V) points per atom and the fitted curve.

        ``reference``: ``{"v0_per_atom_A3", "bulk_modulus_GPa", "bulk_modulus_derivative"}``
        (e.g. :func:`mlff_calc.cli.eos.dcdft_reference`'s), drawn as a dashed BM3 curve.
        """
        from ..plots import eos_curves

        res = self._need_result()
        title = f"{self.atoms.get_chemical_formula()}: V0 = {res.v0_per_atom_A3:.3f} Å³/atom, B = {res.bulk_modulus_GPa:.1f} GPa"
        name = "Birch-Murnaghan fit"
        refs = {} if reference is None else {name: (reference_label(reference), *reference_curve(reference, res))}
        return eos_curves(path or self.output_files["plot"], {name: eos_curve(res)}, references=refs, title=title)


def eos_curve(res: EOSResult, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(volumes, energies, fit_volumes, fit_energies)`` per atom, as :func:`mlff_calc.plots.eos_curves` takes them."""
    v = np.linspace(res.volumes_A3.min(), res.volumes_A3.max(), n)
    e = birch_murnaghan(v, res.e0_eV, res.v0_A3, res.bulk_modulus_GPa * units.GPa, res.bulk_modulus_derivative)
    return res.volumes_A3 / res.n_atoms, res.energies_eV / res.n_atoms, v / res.n_atoms, e / res.n_atoms


def reference_curve(reference: dict, res: EOSResult, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A reference BM3 curve per atom (``v0_per_atom_A3``, ``bulk_modulus_GPa``, ``bulk_modulus_derivative``) over the span of ``res``."""
    v0 = float(reference["v0_per_atom_A3"])
    half = np.sqrt(res.volumes_A3.max() / res.volumes_A3.min())
    v = np.linspace(v0 / half, v0 * half, n)
    return v, birch_murnaghan(v, 0.0, v0, float(reference["bulk_modulus_GPa"]) * units.GPa, float(reference["bulk_modulus_derivative"]))


def reference_label(reference: dict) -> str:
    return f"{reference.get('label', 'reference')}: B = {float(reference['bulk_modulus_GPa']):.1f} GPa"
