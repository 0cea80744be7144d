"""Softening correction (Deng et al. 2024): measure a model's softening, fit a scale, apply it as a layer.

- :mod:`.measure`: softening scale ``s``, MAE and cMAE against DFT forces.
- :mod:`.fit`: the closed-form fit of the correction scale ``c`` and its JSON artifact.
- :mod:`.layer`: :class:`SofteningLayer`, which applies a fit to a calculator.
- :mod:`.elements`: the per-element conservative correction (:class:`ElementSofteningLayer`).
- :mod:`.correct`: :func:`correct`, which chooses raw / scalar / per-element by cross-validation.
- :mod:`.sampler`: high-energy structures (hot MD, strain) proposed for DFT labelling.

The DFT datasets and their readers live in :mod:`mlff_calc.data.dft` and are re-exported here.
"""

from ..data.dft import (
    ENERGY_KEYS,
    FORCES_KEYS,
    STRESS_KEYS,
    DFTDataset,
    DFTStructure,
    chemical_system,
    dft_structure,
    read_dft_structures,
    read_phonopy_dataset,
)
from .correct import correct, load_corrected
from .elements import ElementFit, ElementSofteningLayer, fit_element_scales
from .fit import FAMILY_PACKAGES, FORMAT, FORMAT_VERSION, MODES, PAPER_WEIGHTS, UNITS, SofteningFit, composition_energy, fit_scale
from .layer import SofteningLayer
from .measure import MAX_ATOMS_PER_BATCH, ForceStats, SofteningReport, measure, softening_scale

__all__ = [
    "ElementFit",
    "ElementSofteningLayer",
    "correct",
    "fit_element_scales",
    "load_corrected",
    "ENERGY_KEYS",
    "FAMILY_PACKAGES",
    "FORCES_KEYS",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_ATOMS_PER_BATCH",
    "MODES",
    "PAPER_WEIGHTS",
    "STRESS_KEYS",
    "UNITS",
    "DFTDataset",
    "DFTStructure",
    "ForceStats",
    "SofteningFit",
    "SofteningLayer",
    "SofteningReport",
    "chemical_system",
    "composition_energy",
    "dft_structure",
    "fit_scale",
    "measure",
    "read_dft_structures",
    "read_phonopy_dataset",
    "softening_scale",
]
