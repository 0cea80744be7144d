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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from ..artifacts import atomic_path
from ..data.phonopy import _beside, _displacements_only, _load_reference_yaml, _read_yaml, load_phonopy_reference, to_ase_atoms, to_phonopy_atoms  # noqa: F401 (re-exported)
from ..errors import ArtifactError, ConfigurationError
from . import UNITS, default_prefix, evaluate_structures, output_path
from .base import Workflow, result_dict
from .phonopy_io import _AUTO_WARNING, _band_ticks, _pretty, _reference_bands, cell_widths, special_point_frequencies  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

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
    n_atoms_supercell: int = 0
    supercell_matrix: list | None = None
    nac: bool = False
    min_supercell_width_A: float = float("nan")  # shortest distance between opposite faces of the supercell
    warnings: list[str] = field(default_factory=list)

    @property
    def has_imaginary_modes(self) -> bool:
        """Any mode below -0.05 THz on the band path (small negative values near Γ are numerical noise)."""
        return self.min_frequency_THz < -0.05

    @property
    def highest_branch_THz(self) -> dict[str, float]:
        """The highest frequency at each labelled end of the band path (first occurrence)."""
        return special_point_frequencies(self.band_labels, self.band_frequencies_THz, self.band_path_connections)

    def thermal_at(self, temperature_K: float) -> dict[str, float] | None:
        """F, S and Cv at one of the computed temperatures, else None."""
        at = np.flatnonzero(np.isclose(self.temperatures_K, temperature_K))
        if not at.size:
            return None
        i = int(at[0])
        return {
            "free_energy_kJ_per_mol": float(self.free_energy_kJ_per_mol[i]),
            "entropy_J_per_K_per_mol": float(self.entropy_J_per_K_per_mol[i]),
            "heat_capacity_J_per_K_per_mol": float(self.heat_capacity_J_per_K_per_mol[i]),
        }

    def to_dict(self) -> dict:
        """Scalars and labels (the arrays are in the phonopy yaml files)."""
        arrays = ("force_constants", "band_qpoints", "band_distances", "band_frequencies_THz", "dos_frequencies_THz", "dos_states_per_THz")
        thermal = ("temperatures_K", "free_energy_kJ_per_mol", "entropy_J_per_K_per_mol", "heat_capacity_J_per_K_per_mol")
        out = result_dict(self, skip=arrays + thermal) | {"has_imaginary_modes": self.has_imaginary_modes, "highest_branch_THz": self.highest_branch_THz}
        if self.thermal_at(300.0) is not None:
            out["thermal_300K"] = self.thermal_at(300.0)
        return out


#: supercells narrower than this (Å) in some direction may miss force constants of longer range
MIN_SUPERCELL_WIDTH_A = 10.0


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
    exclude_gamma_acoustic: leave the three acoustic modes at Γ (zero up to numerical
        noise) out of the thermal-property sums.

    A supercell narrower than :data:`MIN_SUPERCELL_WIDTH_A` in some direction is
    logged as a warning and kept in ``result.warnings``.
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
        exclude_gamma_acoustic: bool = True,
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
        self.exclude_gamma_acoustic = bool(exclude_gamma_acoustic)
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
        self.notes: list[str] = []
        width = float(cell_widths(self.phonon.supercell.cell).min())
        if width < MIN_SUPERCELL_WIDTH_A:
            self.notes.append(
                f"the supercell is {width:.2f} Å wide in its narrowest direction (< {MIN_SUPERCELL_WIDTH_A:g} Å): force constants of longer range are folded back; use a larger supercell",
            )
            log.warning("phonons %s: %s", atoms.get_chemical_formula(), self.notes[-1])

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
        t_min, t_max, t_step = self.temperatures
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ph.run_mesh(self.mesh, is_gamma_center=True)
            ph.run_total_dos()
            ph.run_thermal_properties(t_min=t_min, t_max=t_max, t_step=t_step, exclude_gamma_acoustic=self.exclude_gamma_acoustic)
        dos = ph.get_total_dos_dict()
        notes = list(self.notes) + self._own_words(caught)
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
            n_atoms_supercell=len(ph.supercell),
            supercell_matrix=np.asarray(ph.supercell_matrix).tolist(),
            nac=ph.nac_params is not None,
            min_supercell_width_A=float(cell_widths(ph.supercell.cell).min()),
            warnings=notes,
        )
        if self.result.has_imaginary_modes:
            log.warning("phonons %s: imaginary modes down to %.3f THz on the band path", self.atoms.get_chemical_formula(), self.result.min_frequency_THz)
        return self.result

    def _own_words(self, caught) -> list[str]:
        """phonopy's warnings advise its own flags; say what they mean in this workflow's terms (others pass on)."""
        notes = []
        for w in caught:
            text = str(w.message)
            if "far from zero" in text:
                notes.append("the acoustic frequencies at Γ are far from zero (the force constants break translational invariance); use symmetrize_fc=True (--symmetrize-fc)")
            elif "incompatible with the primitive-cell point group" in text or "not preserved by the primitive-cell point group" in text:
                notes.append(
                    f"mesh {list(self.mesh)} breaks the point-group symmetry of the primitive cell (slower DOS and thermal sums); give equal numbers, e.g. --mesh {max(self.mesh)} {max(self.mesh)} {max(self.mesh)}"
                )
            elif "acoustic mode" in text and "entered the thermal-property sums" in text:
                continue  # only with exclude_gamma_acoustic=False, which asked for them
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            log.warning("phonons %s: %s", self.atoms.get_chemical_formula(), notes[-1])
        return notes

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
        result = res.to_dict()
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

    def plot_bands(self, path=None, reference=None, *, label: str = "model", reference_label: str = "reference", title: str | None = None, dos: bool = False) -> Path:
        """PNG of the band structure (and, with ``dos``, the DOS); ``reference`` is drawn dashed on the same q-path.

        ``reference``: a Phonopy object with force constants, or a folder/yaml that
        :func:`load_phonopy_reference` reads (e.g. ``self.reference`` after :meth:`from_reference`).
        It must share the primitive cell's orientation (true when the workflow was built from it).
        """
        from ..plots import phonon_bands_dos

        res = self._need_result()
        ref_bands = ref_dos = None
        if isinstance(reference, (str, Path)):
            reference = load_phonopy_reference(reference)
        if reference is not None:
            ref_bands = _reference_bands(reference, self.phonon, res)
            if dos:
                reference.run_mesh(list(self.mesh), is_gamma_center=True)
                reference.run_total_dos()
                ref = reference.get_total_dos_dict()
                ref_dos = (ref["frequency_points"], ref["total_dos"])
        ticks, tick_labels = _band_ticks(res)
        return phonon_bands_dos(
            path or self.output_files["band_plot"],
            band_distances=res.band_distances,
            band_frequencies_THz=res.band_frequencies_THz,
            ticks=ticks,
            tick_labels=tick_labels,
            dos_frequencies_THz=res.dos_frequencies_THz if dos else None,
            dos_states_per_THz=res.dos_states_per_THz if dos else None,
            reference_band_frequencies_THz=ref_bands,
            reference_dos=ref_dos,
            label=label,
            reference_label=reference_label,
            title=title or self.atoms.get_chemical_formula(mode="metal", empirical=True),
        )
