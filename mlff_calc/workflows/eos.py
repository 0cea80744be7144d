"""Energy-volume curve and a third-order Birch-Murnaghan fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units

from ..artifacts import atomic_path
from ..errors import CalculationFailed, ConfigurationError
from . import UNITS, default_prefix, evaluate_structures, output_path
from .base import Workflow

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


@dataclass
class EOSResult:
    """E(V) points and the BM3 fit. ``bulk_modulus_GPa`` is B0; ``bulk_modulus_derivative`` is B0'."""

    volumes_A3: np.ndarray
    energies_eV: np.ndarray
    v0_A3: float
    e0_eV: float
    bulk_modulus_GPa: float
    bulk_modulus_derivative: float
    fit_rms_eV: float
    n_atoms: int
    scale_to_v0: float  # linear factor that takes the input cell to V0

    @property
    def v0_per_atom_A3(self) -> float:
        return self.v0_A3 / self.n_atoms


class EquationOfState(Workflow):
    """E(V) by isotropic scaling of the cell, then a third-order Birch-Murnaghan fit.

    ``strain_range``: the volumes span ``V_in * (1 ± strain_range)`` (volumetric
    strain), ``n_points`` of them evenly. Atoms keep their fractional coordinates
    (no internal relaxation). With our calculator all volumes are evaluated in one
    batched call; any other calculator is called volume by volume.
    """

    name = "eos"

    def __init__(self, atoms: Atoms, calc, *, strain_range: float = 0.06, n_points: int = 9, prefix=None, progress: bool | None = None):
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
        self.prefix = default_prefix(atoms, prefix)
        self.progress = progress
        self.result: EOSResult | None = None

    @property
    def output_files(self) -> dict[str, Path]:
        return {"summary": output_path(self.prefix, "eos.json"), "plot": output_path(self.prefix, "eos.png")}

    def structures(self) -> list[Atoms]:
        """The scaled cells, in order of increasing volume."""
        v_in = self.atoms.get_volume()
        out = []
        for vol in v_in * (1.0 + np.linspace(-self.strain_range, self.strain_range, self.n_points)):
            scaled = self.atoms.copy()
            scaled.calc = None
            scaled.set_cell(self.atoms.cell.array * (vol / v_in) ** (1.0 / 3.0), scale_atoms=True)
            out.append(scaled)
        return out

    def run(self) -> EOSResult:
        structures = self.structures()
        volumes = np.array([s.get_volume() for s in structures])
        results = evaluate_structures(self.calc, structures, ("energy",), batch_size=len(structures), progress=self.progress, desc="eos")
        energies = np.array([float(r["energy"]) for r in results])
        fit = fit_birch_murnaghan(volumes, energies)
        self.result = EOSResult(
            volumes_A3=volumes,
            energies_eV=energies,
            v0_A3=fit["v0"],
            e0_eV=fit["e0"],
            bulk_modulus_GPa=fit["b0"] / units.GPa,
            bulk_modulus_derivative=fit["bp"],
            fit_rms_eV=fit["rms"],
            n_atoms=len(self.atoms),
            scale_to_v0=(fit["v0"] / self.atoms.get_volume()) ** (1.0 / 3.0),
        )
        log.info(
            "EOS %s: V0 = %.4f Å³, E0 = %.6f eV, B = %.2f GPa, B' = %.2f",
            self.atoms.get_chemical_formula(),
            fit["v0"],
            fit["e0"],
            self.result.bulk_modulus_GPa,
            fit["bp"],
        )
        return self.result

    def atoms_at_minimum(self) -> Atoms:
        """The input structure scaled isotropically to the fitted V0."""
        res = self._need_result()
        out = self.atoms.copy()
        out.calc = None
        out.set_cell(self.atoms.cell.array * res.scale_to_v0, scale_atoms=True)
        return out

    def write_summary(self, path=None) -> Path:
        res = self._need_result()
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={"strain_range": self.strain_range, "n_points": self.n_points, "fit": "birch-murnaghan-3"},
            result={
                "volumes_A3": res.volumes_A3,
                "energies_eV": res.energies_eV,
                "v0_A3": res.v0_A3,
                "e0_eV": res.e0_eV,
                "bulk_modulus_GPa": res.bulk_modulus_GPa,
                "bulk_modulus_derivative": res.bulk_modulus_derivative,
                "fit_rms_eV": res.fit_rms_eV,
                "n_atoms": res.n_atoms,
            },
            units=UNITS | {"volume": "Å³", "bulk_modulus": "GPa"},
        )

    def plot(self, path=None) -> Path:
        """PNG of the computed E(V) points and the fitted curve."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        res = self._need_result()
        path = Path(path or self.output_files["plot"])
        fig = Figure(figsize=(5, 4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        v = np.linspace(res.volumes_A3.min(), res.volumes_A3.max(), 200)
        ax.plot(v, birch_murnaghan(v, res.e0_eV, res.v0_A3, res.bulk_modulus_GPa * units.GPa, res.bulk_modulus_derivative), "-", label="Birch-Murnaghan fit")
        ax.plot(res.volumes_A3, res.energies_eV, "o", label="computed")
        ax.axvline(res.v0_A3, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("volume (Å³)")
        ax.set_ylabel("energy (eV)")
        ax.set_title(f"{self.atoms.get_chemical_formula()}: V0 = {res.v0_A3:.3f} Å³, B = {res.bulk_modulus_GPa:.1f} GPa")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return path
