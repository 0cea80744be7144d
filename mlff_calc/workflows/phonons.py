"""Harmonic phonons with phonopy as the engine and any ASE calculator for the forces.

phonopy generates the displaced supercells; we evaluate their forces (in batches
through ``calc.evaluate`` when the calculator offers it), hand them back as plain
arrays and let phonopy build force constants, bands, DOS and thermal properties.

To compare with a DFT dataset, build the workflow with
:meth:`Phonons.from_phonopy_dataset` (or :meth:`Phonons.from_reference`): the model
is then evaluated on exactly the reference's displaced supercells, with the same
supercell and primitive matrices and the same non-analytical correction.

q-points are fractional coordinates in the reciprocal basis of phonopy's
*primitive* cell. For fcc crystals (diamond Si, rocksalt NaCl) whose primitive
vectors are (0,½,½)a, (½,0,½)a, (½,½,0)a, :data:`FCC_POINTS` gives Γ, X and L.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from ..artifacts import atomic_path
from ..data.phonopy import _beside, _displacements_only, _load_reference_yaml, _read_yaml, load_phonopy_reference, to_ase_atoms, to_phonopy_atoms  # noqa: F401 (re-exported)
from ..errors import ArtifactError, ConfigurationError
from .base import Workflow
from . import UNITS, default_prefix, evaluate_structures, output_path

log = logging.getLogger(__name__)

try:
    from phonopy.structure.cells import PrimitiveMatrixAutoDefaultWarning as _AUTO_WARNING
except ImportError:  # phonopy < 4
    _AUTO_WARNING = None

#: Γ, X, L of an fcc lattice in the reciprocal basis of the primitive vectors (0,½,½)a, (½,0,½)a, (½,½,0)a
FCC_POINTS = {"G": (0.0, 0.0, 0.0), "X": (0.5, 0.0, 0.5), "L": (0.5, 0.5, 0.5)}


@dataclass
class PhononResult:
    """Outcome of :meth:`Phonons.run`. Frequencies in THz (negative means imaginary)."""

    n_displacements: int
    force_constants: np.ndarray  # eV/Å²
    band_qpoints: list[np.ndarray]
    band_distances: list[np.ndarray]
    band_frequencies_THz: list[np.ndarray]
    band_labels: list[str]
    band_path_connections: list[bool]
    dos_frequencies_THz: np.ndarray
    dos_states_per_THz: np.ndarray
    temperatures_K: np.ndarray
    free_energy_kJ_per_mol: np.ndarray
    entropy_J_per_K_per_mol: np.ndarray
    heat_capacity_J_per_K_per_mol: np.ndarray
    min_frequency_THz: float
    max_frequency_THz: float
    max_residual_force_eV_per_A: float | None = None

    @property
    def has_imaginary_modes(self) -> bool:
        """Any mode below -0.05 THz on the band path (small negative values near Γ are numerical noise)."""
        return self.min_frequency_THz < -0.05


class Phonons(Workflow):
    """Harmonic phonons of ``atoms`` (the unit cell) with any ASE calculator.

    Parameters
    ----------
    supercell_matrix: 3 integers or a 3x3 integer matrix, in the basis of ``atoms.cell``.
    displacement: finite-displacement amplitude in Å.
    primitive_matrix: phonopy's primitive matrix (``"auto"``, ``"F"``, ..., or 3x3).
    born_file: a phonopy ``BORN`` file for the non-analytical correction (polar crystals);
        ``nac_params`` gives the same as a phonopy dict.
    dataset: a phonopy displacement dataset to reuse instead of generating one
        (forces in it are ignored).
    batch_size: displaced supercells per call of ``calc.evaluate``.
    subtract_residual_forces: subtract the forces on the undisplaced supercell from every
        displaced one (useful when ``atoms`` is not the model's equilibrium).
    symmetrize_fc: symmetrise the force constants after phonopy builds them.
    fc_calculator: phonopy's force-constants solver (``None``: finite differences;
        ``"symfc"`` for random-displacement datasets).
    mesh: Γ-centred q-point mesh for DOS and thermal properties; ``band_npoints`` per band segment.
    t_min_K, t_max_K, t_step_K: temperatures of the thermal properties.
    """

    name = "phonons"

    def __init__(
        self,
        atoms: Atoms,
        calc,
        *,
        supercell_matrix,
        displacement: float = 0.01,
        primitive_matrix="auto",
        born_file=None,
        nac_params: dict | None = None,
        dataset: dict | None = None,
        batch_size: int = 32,
        symprec: float = 1e-5,
        is_plusminus="auto",
        subtract_residual_forces: bool = False,
        symmetrize_fc: bool = False,
        fc_calculator: str | None = None,
        mesh: Sequence[int] = (20, 20, 20),
        band_npoints: int = 51,
        t_min_K: float = 0.0,
        t_max_K: float = 1000.0,
        t_step_K: float = 10.0,
        prefix=None,
        progress: bool | None = None,
    ):
        from phonopy import Phonopy
        from phonopy.file_IO import parse_BORN

        if not atoms.pbc.all():
            raise ConfigurationError(f"phonons need a cell periodic in all directions; this one has pbc={atoms.pbc.tolist()}")
        if not displacement > 0:
            raise ConfigurationError(f"displacement must be positive (Å), got {displacement}")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
        if born_file is not None and nac_params is not None:
            raise ConfigurationError("give either born_file or nac_params, not both")
        self.atoms = atoms
        self.calc = calc
        self.displacement = float(displacement)
        self.batch_size = int(batch_size)
        self.subtract_residual_forces = subtract_residual_forces
        self.symmetrize_fc = symmetrize_fc
        self.fc_calculator = fc_calculator
        self.mesh = tuple(int(m) for m in mesh)
        self.band_npoints = int(band_npoints)
        self.temperatures = (float(t_min_K), float(t_max_K), float(t_step_K))
        self.born_file = Path(born_file) if born_file is not None else None
        self.prefix = default_prefix(atoms, prefix)
        self.progress = progress
        self.reference = None  # set by from_reference
        self.result: PhononResult | None = None

        with warnings.catch_warnings():
            # phonopy 4 warns whenever "auto" resolves to a non-identity matrix (its v3 default was
            # the identity); here "auto" is this class's documented default and the result is logged.
            if _AUTO_WARNING is not None:
                warnings.simplefilter("ignore", _AUTO_WARNING)
            self.phonon = Phonopy(to_phonopy_atoms(atoms), supercell_matrix=supercell_matrix, primitive_matrix=primitive_matrix, symprec=symprec)
        if dataset is not None:
            self.phonon.dataset = _displacements_only(dataset)
        else:
            self.phonon.generate_displacements(distance=self.displacement, is_plusminus=is_plusminus)
        if self.born_file is not None:
            if not self.born_file.is_file():
                raise ArtifactError(f"BORN file {self.born_file} does not exist")
            self.phonon.nac_params = parse_BORN(self.phonon.primitive, symprec=symprec, filename=self.born_file)
        elif nac_params is not None:
            self.phonon.nac_params = nac_params
        log.info(
            "phonons %s: supercell matrix %s, primitive matrix %s, %d displaced supercells of %d atoms%s",
            atoms.get_chemical_formula(),
            self.phonon.supercell_matrix.tolist(),
            None if self.phonon.primitive_matrix is None else np.round(self.phonon.primitive_matrix, 6).tolist(),
            self.n_displacements,
            len(self.phonon.supercell),
            ", with NAC" if self.phonon.nac_params else "",
        )

    # construction from reference data ---------------------------------------------

    @classmethod
    def from_phonopy_dataset(cls, source, calc, **kwargs) -> "Phonons":
        """The same unit cell, supercell/primitive matrices, displacements and NAC as ``source``.

        ``source``: a Phonopy object or a phonopy yaml file (``phonopy_disp.yaml``,
        ``phonopy_params.yaml``; a ``BORN`` beside it is read). Keyword arguments are
        passed to the constructor (``born_file`` overrides the source's NAC).
        """
        symprec = kwargs.pop("symprec", None)
        for key in ("supercell_matrix", "primitive_matrix", "dataset"):
            if key in kwargs:
                raise ConfigurationError(f"{key} comes from the phonopy dataset; do not pass it to from_phonopy_dataset")
        if isinstance(source, (str, Path)):
            path = Path(source)
            ph_yaml = _read_yaml(path)
            unitcell, smat, pmat, dataset, nac = ph_yaml.unitcell, ph_yaml.supercell_matrix, ph_yaml.primitive_matrix, ph_yaml.dataset, ph_yaml.nac_params
            symprec = symprec or 1e-5  # phonopy's default; the yaml does not expose its own
            if nac is None and "born_file" not in kwargs and "nac_params" not in kwargs and _beside(path, "BORN"):
                kwargs["born_file"] = _beside(path, "BORN")
        else:
            unitcell, smat, pmat, dataset, nac = source.unitcell, source.supercell_matrix, source.primitive_matrix, source.dataset, source.nac_params
            symprec = symprec or source.symmetry.tolerance
        if "born_file" not in kwargs and "nac_params" not in kwargs and nac is not None:
            kwargs["nac_params"] = copy.deepcopy(nac)
        obj = cls(
            to_ase_atoms(unitcell),
            calc,
            supercell_matrix=np.eye(3, dtype=int) if smat is None else smat,
            primitive_matrix="auto" if pmat is None else pmat,
            symprec=symprec,
            dataset=dataset,
            **kwargs,
        )
        dataset = obj.phonon.dataset
        amplitudes = [np.linalg.norm(d["displacement"]) for d in dataset.get("first_atoms", [])]
        if amplitudes:
            obj.displacement = float(np.mean(amplitudes))
        return obj

    @classmethod
    def from_reference(cls, path, calc, **kwargs) -> "Phonons":
        """Load a DFT reference (see :func:`load_phonopy_reference`) and evaluate the model on its displacements.

        The reference Phonopy object, with its own force constants, is kept as ``.reference``.
        """
        reference = load_phonopy_reference(path)
        obj = cls.from_phonopy_dataset(reference, calc, **kwargs)
        obj.reference = reference
        return obj

    # running ---------------------------------------------------------------------

    @property
    def n_displacements(self) -> int:
        return len(self.phonon.supercells_with_displacements)

    @property
    def output_files(self) -> dict[str, Path]:
        return {
            "params": output_path(self.prefix, "phonopy.yaml"),
            "bands": output_path(self.prefix, "band.yaml"),
            "thermal": output_path(self.prefix, "thermal.yaml"),
            "summary": output_path(self.prefix, "phonons-summary.json"),
            "band_plot": output_path(self.prefix, "bands.png"),
        }

    def displaced_supercells(self) -> list[Atoms]:
        """The displaced supercells as ASE Atoms, in phonopy's order."""
        return [to_ase_atoms(cell) for cell in self.phonon.supercells_with_displacements]

    def compute_forces(self) -> tuple[np.ndarray, float | None]:
        """Forces on every displaced supercell, ``[n_disp, n_atoms, 3]`` eV/Å, and the largest residual force."""
        structures = self.displaced_supercells()
        if self.subtract_residual_forces:
            structures = [to_ase_atoms(self.phonon.supercell)] + structures
        results = evaluate_structures(self.calc, structures, ("forces",), batch_size=self.batch_size, progress=self.progress, desc="phonon forces")
        forces = np.array([r["forces"] for r in results], dtype=float)
        residual = None
        if self.subtract_residual_forces:
            residual = float(np.abs(forces[0]).max())
            forces = forces[1:] - forces[0]
        return forces, residual

    def run(self) -> PhononResult:
        forces, residual = self.compute_forces()
        ph = self.phonon
        ph.forces = forces
        ph.produce_force_constants(fc_calculator=self.fc_calculator, show_drift=False)
        if self.symmetrize_fc:
            ph.symmetrize_force_constants()
        ph.auto_band_structure(npoints=self.band_npoints)
        bands = ph.get_band_structure_dict()
        ph.run_mesh(self.mesh, is_gamma_center=True)
        ph.run_total_dos()
        dos = ph.get_total_dos_dict()
        t_min, t_max, t_step = self.temperatures
        ph.run_thermal_properties(t_min=t_min, t_max=t_max, t_step=t_step)
        thermal = ph.get_thermal_properties_dict()
        all_freqs = np.concatenate([np.ravel(f) for f in bands["frequencies"]])
        self.result = PhononResult(
            n_displacements=len(forces),
            force_constants=np.array(ph.force_constants),
            band_qpoints=[np.array(q) for q in bands["qpoints"]],
            band_distances=[np.array(d) for d in bands["distances"]],
            band_frequencies_THz=[np.array(f) for f in bands["frequencies"]],
            band_labels=list(ph.band_structure.labels or []),
            band_path_connections=list(ph.band_structure.path_connections),
            dos_frequencies_THz=np.array(dos["frequency_points"]),
            dos_states_per_THz=np.array(dos["total_dos"]),
            temperatures_K=np.array(thermal["temperatures"]),
            free_energy_kJ_per_mol=np.array(thermal["free_energy"]),
            entropy_J_per_K_per_mol=np.array(thermal["entropy"]),
            heat_capacity_J_per_K_per_mol=np.array(thermal["heat_capacity"]),
            min_frequency_THz=float(all_freqs.min()),
            max_frequency_THz=float(all_freqs.max()),
            max_residual_force_eV_per_A=residual,
        )
        if self.result.has_imaginary_modes:
            log.warning("phonons %s: imaginary modes down to %.3f THz on the band path", self.atoms.get_chemical_formula(), self.result.min_frequency_THz)
        return self.result

    # queries -----------------------------------------------------------------------

    def _need_fc(self):
        if self.phonon.force_constants is None:
            raise ConfigurationError("Phonons.run() has to be called first (no force constants yet)")

    def frequencies_at(self, qpoints, *, nac_q_direction=None) -> np.ndarray:
        """Frequencies (THz), ``[n_q, n_bands]``, at q-points in the primitive reciprocal basis.

        At exactly Γ the non-analytical term is left out unless ``nac_q_direction`` is given.
        """
        self._need_fc()
        q = np.atleast_2d(np.asarray(qpoints, dtype=float))
        self.phonon.run_qpoints(q, nac_q_direction=nac_q_direction)
        return np.array(self.phonon.qpoints.frequencies)

    def highest_branch_at(self, points: Mapping[str, Sequence[float]] = FCC_POINTS) -> dict[str, float]:
        """The highest frequency (THz) at each named q-point, e.g. ``{"G": ..., "X": ..., "L": ...}``."""
        freqs = self.frequencies_at(list(points.values()))
        return {name: float(freqs[k].max()) for k, name in enumerate(points)}

    # writing ------------------------------------------------------------------------

    def write_yaml(self, path=None, *, force_constants: bool = True) -> Path:
        """phonopy's ``phonopy_params.yaml`` (structure, displacements, our forces, NAC, force constants)."""
        self._need_fc()
        path = Path(path or self.output_files["params"])
        with atomic_path(path) as tmp:
            self.phonon.save(filename=tmp, settings={"force_constants": force_constants})
        return path

    def write_band_yaml(self, path=None) -> Path:
        self._need_result()
        path = Path(path or self.output_files["bands"])
        with atomic_path(path) as tmp:
            self.phonon.write_yaml_band_structure(filename=tmp)
        return path

    def write_thermal_yaml(self, path=None) -> Path:
        self._need_result()
        path = Path(path or self.output_files["thermal"])
        with atomic_path(path) as tmp:
            self.phonon.write_yaml_thermal_properties(filename=tmp)
        return path

    def write_summary(self, path=None, points: Mapping[str, Sequence[float]] | None = None) -> Path:
        res = self._need_result()
        result = {
            "min_frequency_THz": res.min_frequency_THz,
            "max_frequency_THz": res.max_frequency_THz,
            "max_residual_force_eV_per_A": res.max_residual_force_eV_per_A,
        }
        if points is not None:
            result["highest_branch_THz"] = self.highest_branch_at(points)
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={
                "supercell_matrix": self.phonon.supercell_matrix,
                "primitive_matrix": self.phonon.primitive_matrix,
                "displacement_A": self.displacement,
                "n_displacements": res.n_displacements,
                "nac": self.phonon.nac_params is not None,
                "mesh": self.mesh,
                "subtract_residual_forces": self.subtract_residual_forces,
                "symmetrize_fc": self.symmetrize_fc,
            },
            result=result,
            units=UNITS | {"force_constants": "eV/Å²", "free_energy": "kJ/mol", "entropy": "J/K/mol", "heat_capacity": "J/K/mol"},
        )

    def plot_bands(self, path=None, reference=None, *, label: str = "model", reference_label: str = "reference", title: str | None = None) -> Path:
        """PNG of the band structure; ``reference`` is drawn dashed on the same q-path.

        ``reference``: a Phonopy object with force constants, or a folder/yaml that
        :func:`load_phonopy_reference` reads (e.g. ``self.reference`` after :meth:`from_reference`).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        res = self._need_result()
        path = Path(path or self.output_files["band_plot"])
        fig = Figure(figsize=(6, 4.5), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for k, (d, f) in enumerate(zip(res.band_distances, res.band_frequencies_THz)):
            lines = ax.plot(d, f, color="C0", lw=1.2)
            if k == 0:
                lines[0].set_label(label)
        if isinstance(reference, (str, Path)):
            reference = load_phonopy_reference(reference)
        if reference is not None:
            for k, (d, f) in enumerate(zip(res.band_distances, _reference_bands(reference, self.phonon, res))):
                lines = ax.plot(d, f, color="C3", lw=1.0, ls="--")
                if k == 0:
                    lines[0].set_label(reference_label)
        ticks, tick_labels = _band_ticks(res)
        for x in ticks:
            ax.axvline(x, color="0.7", lw=0.6)
        ax.axhline(0.0, color="0.7", lw=0.6)
        ax.set_xticks(ticks, tick_labels)
        ax.set_xlim(res.band_distances[0][0], res.band_distances[-1][-1])
        ax.set_ylabel("frequency (THz)")
        ax.set_title(title or self.atoms.get_chemical_formula(empirical=True))
        ax.legend(loc="best")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return path


def _reference_bands(reference, phonon, res: PhononResult) -> list[np.ndarray]:
    """The reference's frequencies on our band path (same primitive reciprocal basis required)."""
    ours, theirs = np.asarray(phonon.primitive.cell), np.asarray(reference.primitive.cell)
    shape = lambda c: c / abs(np.linalg.det(c)) ** (1 / 3)  # noqa: E731
    if ours.shape != theirs.shape or not np.allclose(shape(ours), shape(theirs), atol=2e-2):
        raise ConfigurationError(
            "the reference's primitive cell is not oriented like ours, so q-points cannot be shared; build the workflow with Phonons.from_phonopy_dataset(reference, calc)",
        )
    if reference.force_constants is None:
        raise ConfigurationError("the reference Phonopy object has no force constants (load it with forces, e.g. load_phonopy_reference)")
    reference.run_band_structure(res.band_qpoints, path_connections=res.band_path_connections, labels=res.band_labels or None)
    return [np.array(f) for f in reference.get_band_structure_dict()["frequencies"]]


def _band_ticks(res: PhononResult) -> tuple[list[float], list[str]]:
    """Tick positions and labels at the ends of the band segments (``A|B`` at a jump)."""
    labels = [_pretty(label) for label in res.band_labels]
    ticks = [float(res.band_distances[0][0])]
    names = [labels[0] if labels else ""]
    k = 1
    n = len(res.band_distances)
    for i, d in enumerate(res.band_distances):
        ticks.append(float(d[-1]))
        if not labels:
            names.append("")
        elif res.band_path_connections[i] or i == n - 1:
            names.append(labels[k] if k < len(labels) else "")
            k += 1
        else:
            names.append(f"{labels[k]}|{labels[k + 1]}" if k + 1 < len(labels) else labels[k])
            k += 2
    return ticks, names


def _pretty(label: str) -> str:
    return label.replace("$\\mathrm{", "").replace("}$", "").replace("$\\Gamma$", "Γ").replace("$", "").replace("\\Gamma", "Γ").replace("\\Sigma", "Σ").replace("\\Delta", "Δ").replace("\\Lambda", "Λ")
