"""Cheap physical priors for test-time training, as ASE calculators.

A prior labels configurations at almost no cost; the prior head of a two-head
model learns those labels, and test-time training follows their gradient.

========== ============================ ====================================
name       calculator                    elements
========== ============================ ====================================
gfn1-xtb   tblite GFN1-xTB (``ttt`` extra) H-Rn (Z 1-86): molecules and crystals
gfn2-xtb   tblite GFN2-xTB                H-Rn; molecules (periodic cells are slow)
emt        ASE EMT                        Al Cu Ag Au Ni Pd Pt (+ H C N O, crude)
lj         ASE Lennard-Jones              any; ``sigma``, ``epsilon``, ``rc`` (Å, eV)
morse      ASE Morse                      any; ``D0``, ``alpha``/``r0``, ``rcut1/2``
========== ============================ ====================================

A prior is described by plain data, ``{"name": "emt", "params": {...}}``, which
is what checkpoints record, so test-time training uses the prior its head was
trained on.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from ase.data import chemical_symbols

from ..errors import ConfigurationError, UnsupportedElementError

#: elements each prior covers (None: any element)
_EMT = {1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79}
_XTB = set(range(1, 87))
COVERAGE: dict[str, set[int] | None] = {"gfn1-xtb": _XTB, "gfn2-xtb": _XTB, "emt": _EMT, "lj": None, "morse": None}
PRIORS = tuple(COVERAGE)


def prior_spec(prior: str | Mapping) -> dict:
    """``"emt"`` or ``{"name": "lj", "params": {...}}`` as a checked, plain-data spec."""
    spec = {"name": prior, "params": {}} if isinstance(prior, str) else {"name": prior.get("name"), "params": dict(prior.get("params") or {})}
    if spec["name"] not in COVERAGE:
        raise ConfigurationError(f"unknown prior {spec['name']!r}; choose one of {', '.join(PRIORS)}")
    return spec


def check_coverage(prior: str | Mapping, numbers: Sequence[int]) -> None:
    """Raise UnsupportedElementError naming the elements ``prior`` cannot describe."""
    spec = prior_spec(prior)
    covered = COVERAGE[spec["name"]]
    if covered is None:
        return
    missing = sorted({int(z) for z in numbers} - covered)
    if missing:
        raise UnsupportedElementError([chemical_symbols[z] for z in missing], f"prior {spec['name']}")


def prior_calculator(prior: str | Mapping):
    """A fresh ASE calculator for ``prior`` (see the module table)."""
    spec = prior_spec(prior)
    name, params = spec["name"], spec["params"]
    if name in ("gfn1-xtb", "gfn2-xtb"):
        from .._runtime import backend

        with backend("ttt", f"the {name} prior"):
            from tblite.ase import TBLite
        return TBLite(method="GFN1-xTB" if name == "gfn1-xtb" else "GFN2-xTB", verbosity=0, **params)
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**params)
    if name == "lj":
        from ase.calculators.lj import LennardJones

        return LennardJones(**{"smooth": True, **params})
    from ase.calculators.morse import MorsePotential

    return MorsePotential(**params)


def prior_labels(structures, prior: str | Mapping, *, progress: bool | None = None) -> list[tuple[float, np.ndarray]]:
    """``(energy eV, forces eV/Å [N, 3])`` of every structure under ``prior``."""
    from tqdm.auto import tqdm

    structures = list(structures)
    if not structures:
        raise ConfigurationError("no structures to label with the prior")
    check_coverage(prior, np.concatenate([a.numbers for a in structures]))
    calc = prior_calculator(prior)
    labels = []
    for atoms in tqdm(structures, desc=f"prior {prior_spec(prior)['name']}", disable=None if progress is None else not progress, leave=False):
        a = atoms.copy()
        a.calc = calc
        try:
            labels.append((float(a.get_potential_energy()), np.array(a.get_forces(), dtype=float)))
        except Exception as exc:  # each backend raises its own types (tblite: RuntimeError on SCF failure)
            from ..errors import CalculationFailed

            raise CalculationFailed(f"the prior {prior_spec(prior)['name']!r} failed on {a.get_chemical_formula()}: {type(exc).__name__}: {exc}") from exc
    return labels
