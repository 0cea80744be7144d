"""Propose high-energy structures worth a DFT calculation (Deng et al. 2024, data for fine-tuning).

A softened universal potential is fixed best with DFT data *away* from equilibrium.
:func:`sample_high_energy` generates such structures the way the paper did: Langevin
molecular dynamics with the model at a high temperature (default 1000 K), snapshots
taken every ``interval`` steps after an ``equilibration``, and, for each snapshot,
``n_strained`` copies under a random symmetric strain whose components are drawn
uniformly in ``[-max_strain, +max_strain]`` (default ±3 %), atoms moved with the cell.

The returned Atoms carry NO energies or forces (the model's would be mistaken for DFT
labels): only ``info`` entries ``sampler_source`` (``"md"`` or ``"md+strain"``),
``md_step``, ``temperature_K``, ``strain`` (the 3x3 strain, flattened) and
``model_id``. With ``out`` the list is also written as extxyz (atomically).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ase import Atoms, units

from ..artifacts import atomic_path
from ..errors import ConfigurationError

log = logging.getLogger(__name__)


def random_strain(rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """A symmetric 3x3 strain with components uniform in ``[-max_strain, max_strain]``."""
    e = rng.uniform(-max_strain, max_strain, size=(3, 3))
    return np.triu(e) + np.triu(e, 1).T


def strained(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """A copy of ``atoms`` with cell (and positions) deformed by ``(1 + strain)``."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return out


def sample_high_energy(
    atoms: Atoms,
    calc,
    *,
    temperature_K: float = 1000.0,
    n_frames: int = 10,
    interval: int = 20,
    equilibration: int = 50,
    timestep_fs: float = 1.0,
    friction_per_fs: float = 0.02,
    max_strain: float = 0.03,
    n_strained: int = 1,
    include_unstrained: bool = True,
    seed: int = 0,
    out=None,
) -> list[Atoms]:
    """High-temperature MD snapshots (and strained copies) of ``atoms`` with ``calc``; see the module docstring.

    Returns ``n_frames * (include_unstrained + n_strained)`` structures.
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    if not atoms.pbc.all() and n_strained:
        raise ConfigurationError("strained copies need a cell periodic in all directions; pass n_strained=0 for molecules")
    if n_frames < 1 or interval < 1 or equilibration < 0 or n_strained < 0:
        raise ConfigurationError(f"need n_frames >= 1, interval >= 1, equilibration >= 0, n_strained >= 0; got {n_frames}, {interval}, {equilibration}, {n_strained}")
    if not (0 <= max_strain < 0.5) or not temperature_K > 0 or not timestep_fs > 0:
        raise ConfigurationError(f"need 0 <= max_strain < 0.5, temperature_K > 0 and timestep_fs > 0; got {max_strain}, {temperature_K}, {timestep_fs}")
    if not (include_unstrained or n_strained):
        raise ConfigurationError("include_unstrained=False with n_strained=0 proposes nothing")
    rng = np.random.default_rng(seed)
    md_atoms = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if atoms.has("masses"):
        md_atoms.set_masses(atoms.get_masses())
    md_atoms.set_constraint(FixCom())
    md_atoms.calc = calc
    MaxwellBoltzmannDistribution(md_atoms, temperature_K=temperature_K, rng=rng)
    Stationary(md_atoms)
    dyn = Langevin(md_atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K, friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    model_id = getattr(getattr(calc, "adapter", None), "model_id", None) or type(calc).__name__
    if equilibration:
        dyn.run(equilibration)
    proposals: list[Atoms] = []
    step = equilibration
    for _ in range(n_frames):
        dyn.run(interval)
        step += interval
        frame = Atoms(md_atoms.numbers, positions=md_atoms.positions, cell=md_atoms.cell, pbc=md_atoms.pbc)
        frame.info.update(sampler_source="md", md_step=step, temperature_K=float(temperature_K), T_inst_K=float(md_atoms.get_temperature()), strain=np.zeros(9), model_id=str(model_id))
        if include_unstrained:
            proposals.append(frame)
        for _k in range(n_strained):
            eps = random_strain(rng, max_strain)
            copy = strained(frame, eps)
            copy.info.update(frame.info, sampler_source="md+strain", strain=eps.reshape(-1))
            proposals.append(copy)
    log.info("proposed %d high-energy structures of %s (%g K MD, ±%g strain)", len(proposals), atoms.get_chemical_formula(), temperature_K, max_strain)
    if out is not None:
        write_proposals(proposals, out)
    return proposals


def write_proposals(proposals: list[Atoms], path) -> Path:
    """Write the proposals as extxyz, atomically."""
    import ase.io

    path = Path(path)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, proposals, format="extxyz")
    return path
