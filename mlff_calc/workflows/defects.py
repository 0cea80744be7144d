"""Formation energy of a point defect (vacancy, interstitial, antisite) in a supercell.

E_f = E_defect − E_host − Σ_i Δn_i μ_i, where Δn_i is the number of atoms of
element i added (+) or removed (−) and μ_i its chemical potential (eV/atom).
Charged defects and finite-size corrections are out of scope.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.geometry import get_distances

from ..errors import ConfigurationError
from . import UNITS, default_prefix, evaluate_structures, output_path
from .base import Workflow, result_dict

log = logging.getLogger(__name__)

KINDS = ("vacancy", "interstitial", "antisite")


@dataclass
class DefectResult:
    """Outcome of :meth:`PointDefect.run`. Energies in eV."""

    kind: str
    formation_energy_eV: float
    defect_energy_eV: float
    host_energy_eV: float
    delta_n: dict[str, int]
    chemical_potentials_eV: dict[str, float]
    defect: Atoms
    n_atoms_host: int
    relaxed: bool
    relax_converged: bool | None = None
    notes: list[str] = field(default_factory=list)
    host_formula: str = ""  # the host supercell, e.g. Si16 for a 2x2x2 repeat of Si2
    supercell: list | None = None

    def to_dict(self) -> dict:
        return {"formula": self.host_formula} | result_dict(self) | {"defect_formula": self.defect.get_chemical_formula()}


class PointDefect(Workflow):
    """One point defect in ``bulk_atoms`` repeated ``supercell`` times.

    Parameters
    ----------
    kind: ``"vacancy"``, ``"interstitial"`` or ``"antisite"``.
    site: index into ``bulk_atoms`` of the atom removed (vacancy) or replaced
        (antisite); its first image in the supercell is used.
    species: element inserted (interstitial; default: the element at ``site``) or put
        on ``site`` (antisite; default: the other element of a binary compound).
    position: Cartesian position (Å) of an interstitial; default: the point of the
        bulk cell farthest from every atom (e.g. the tetrahedral site of diamond).
    chemical_potentials: ``{element: eV/atom}``. Missing elements default to the
        energy per atom of the host for an elemental crystal, else of the element's
        ground-state structure from ``ase.build.bulk`` relaxed (cell and positions)
        with the same calculator; elements without one must be given here.
    relax: relax positions at fixed cell (host and defect supercells).
    """

    name = "point-defect"

    def __init__(
        self,
        bulk_atoms: Atoms,
        calc,
        *,
        supercell=(3, 3, 3),
        kind: str = "vacancy",
        site: int = 0,
        species: str | None = None,
        position=None,
        chemical_potentials: Mapping[str, float] | None = None,
        relax: bool = True,
        fmax_eV_per_A: float = 0.02,
        max_steps: int = 300,
        optimizer: str = "FIRE",
        prefix=None,
        progress: bool | None = None,
    ):
        if kind not in KINDS:
            raise ConfigurationError(f"defect kind {kind!r} is not known; choose one of {list(KINDS)}")
        if not bulk_atoms.pbc.all():
            raise ConfigurationError(f"bulk_atoms must be periodic in all directions; got pbc={bulk_atoms.pbc.tolist()}")
        if kind != "interstitial" and not 0 <= site < len(bulk_atoms):
            raise ConfigurationError(f"site {site} is not an atom index of the {len(bulk_atoms)}-atom bulk cell")
        if species is not None and species not in atomic_numbers:
            raise ConfigurationError(f"species {species!r} is not an element symbol")
        self.bulk_atoms = bulk_atoms
        self.calc = calc
        self.supercell = supercell
        self.kind = kind
        self.site = int(site)
        self.species = species
        self.position = None if position is None else np.asarray(position, dtype=float)
        self.chemical_potentials = dict(chemical_potentials or {})
        self.relax = relax
        self.fmax_eV_per_A = float(fmax_eV_per_A)
        self.max_steps = int(max_steps)
        self.optimizer = optimizer
        self.prefix = default_prefix(bulk_atoms, prefix)
        self.progress = progress
        self.result: DefectResult | None = None
        self._notes: list[str] = []

    @property
    def output_files(self) -> dict[str, Path]:
        return {"defect": output_path(self.prefix, f"{self.kind}-defect.extxyz"), "summary": output_path(self.prefix, f"{self.kind}-summary.json")}

    # building -------------------------------------------------------------------------

    def host(self) -> Atoms:
        host = self.bulk_atoms.copy()
        host.calc = None
        if np.ndim(self.supercell) == 2:
            from ase.build import make_supercell

            return make_supercell(host, np.asarray(self.supercell))
        return host.repeat(tuple(int(n) for n in self.supercell))

    def build(self) -> tuple[Atoms, Atoms, dict[str, int]]:
        """(host supercell, defect supercell, Δn per element)."""
        host = self.host()
        defect = host.copy()
        symbols = self.bulk_atoms.get_chemical_symbols()
        if self.kind == "vacancy":
            removed = symbols[self.site]
            del defect[self.site]
            return host, defect, {removed: -1}
        if self.kind == "interstitial":
            element = self.species or symbols[self.site]
            position = self.position if self.position is not None else largest_void(self.bulk_atoms)
            defect.append(element)
            defect.positions[-1] = position
            return host, defect, {element: +1}
        old = symbols[self.site]
        new = self.species or _other_element(symbols, old)
        if new == old:
            raise ConfigurationError(f"an antisite needs a species other than {old}")
        defect.symbols[self.site] = new
        return host, defect, {new: +1, old: -1}

    # running ---------------------------------------------------------------------------

    def run(self) -> DefectResult:
        self._notes = []
        host, defect, delta_n = self.build()
        references = self._reference_structures(delta_n, host)  # fails here, before any evaluation
        converged = None
        if self.relax:
            from .relax import Relax

            kw = dict(relax_cell=False, optimizer=self.optimizer, fmax_eV_per_A=self.fmax_eV_per_A, max_steps=self.max_steps, progress=self.progress)
            host_res = Relax(host, self.calc, **kw).run()
            def_res = Relax(defect, self.calc, **kw).run()
            e_host, e_def = host_res.energy, def_res.energy
            defect, converged = def_res.atoms, host_res.converged and def_res.converged
        else:
            host_e, def_e = evaluate_structures(self.calc, [host, defect], ("energy",))
            e_host, e_def = float(host_e["energy"]), float(def_e["energy"])
        mu = {}
        for element in delta_n:
            if element in self.chemical_potentials:
                mu[element] = float(self.chemical_potentials[element])
            elif references[element] is None:
                mu[element] = e_host / len(host)
                self._notes.append(f"μ({element}) = energy per atom of the host crystal")
            else:
                mu[element] = self._elemental_energy(element, references[element])
        e_f = e_def - e_host - sum(n * mu[el] for el, n in delta_n.items())
        self.result = DefectResult(
            kind=self.kind,
            formation_energy_eV=float(e_f),
            defect_energy_eV=float(e_def),
            host_energy_eV=float(e_host),
            delta_n=delta_n,
            chemical_potentials_eV=mu,
            defect=defect,
            n_atoms_host=len(host),
            relaxed=self.relax,
            relax_converged=converged,
            notes=list(self._notes),
            host_formula=host.get_chemical_formula(),
            supercell=np.asarray(self.supercell).tolist(),
        )
        log.info("%s in %s (host supercell of %s): E_f = %.4f eV", self.kind, host.get_chemical_formula(), self.bulk_atoms.get_chemical_formula(), e_f)
        return self.result

    def _reference_structures(self, delta_n: dict[str, int], host: Atoms) -> dict[str, Atoms | None]:
        """Per element without a given μ: ``None`` (the elemental host itself) or its ase.build.bulk structure."""
        from ase.build import bulk

        out = {}
        for element in delta_n:
            if element in self.chemical_potentials:
                continue
            if set(host.get_chemical_symbols()) == {element}:
                out[element] = None
                continue
            try:
                out[element] = bulk(element)
            except (ValueError, KeyError, NotImplementedError) as exc:
                raise ConfigurationError(
                    f"no ground-state crystal for {element} in ase.build.bulk ({exc}); give its chemical potential as chemical_potentials={{'{element}': ...}} in eV/atom"
                ) from exc
        return out

    def _elemental_energy(self, element: str, reference: Atoms) -> float:
        from .relax import Relax

        res = Relax(reference, self.calc, relax_cell=True, optimizer="FIRE", fmax_eV_per_A=0.01, max_steps=self.max_steps, progress=self.progress).run()
        self._notes.append(
            f"μ({element}) = relaxed {reference.get_chemical_formula()} from ase.build.bulk ({'converged' if res.converged else 'NOT converged'})",
        )
        return res.energy / len(reference)

    # writing ---------------------------------------------------------------------------

    def write_defect(self, path=None) -> Path:
        return self._write_frame(self._need_result().defect, path or self.output_files["defect"])

    def write_summary(self, path=None) -> Path:
        res = self._need_result()
        return self._write_summary(
            path or self.output_files["summary"],
            parameters={
                "kind": self.kind,
                "site": self.site,
                "species": self.species,
                "supercell": np.asarray(self.supercell).tolist(),
                "relax": self.relax,
                "fmax_eV_per_A": self.fmax_eV_per_A,
            },
            result=res.to_dict(),
            units=UNITS | {"chemical_potential": "eV/atom"},
        )


def _other_element(symbols: list[str], old: str) -> str:
    others = sorted(set(symbols) - {old}, key=lambda s: atomic_numbers[s])
    if len(others) != 1:
        raise ConfigurationError(
            f"an antisite on a {old} site needs species= when the crystal holds {len(others)} other elements ({', '.join(others) or 'none'})",
        )
    return others[0]


def largest_void(atoms: Atoms, spacing: float = 0.2) -> np.ndarray:
    """Cartesian point of ``atoms``' cell farthest from every atom (grid search, periodic)."""
    n = [max(4, int(np.ceil(length / spacing))) for length in atoms.cell.lengths()]
    grid = np.stack(np.meshgrid(*[np.arange(k) / k for k in n], indexing="ij"), axis=-1).reshape(-1, 3)
    points = grid @ atoms.cell.array
    best, best_d = None, -1.0
    for chunk in np.array_split(points, max(1, len(points) // 4000)):
        _, dist = get_distances(chunk, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        nearest = dist.min(axis=1)
        k = int(nearest.argmax())
        if nearest[k] > best_d:
            best, best_d = chunk[k], float(nearest[k])
    return np.array(best)


__all__ = ["KINDS", "DefectResult", "PointDefect", "largest_void"]
