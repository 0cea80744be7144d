"""Test-time training with a cheap physical prior (Kreiman & Krishnapriyan 2025, arXiv 2503.08674).

::

    from mlff_calc import ttt
    from mlff_calc.layers.ttt import TTTLayer

    result = ttt.train_ttt_student("labels/", prior="emt", out_dir="ttt-student/")
    calc = mlff_calc.load("ttt-student/", layers=[TTTLayer(steps=500)])
    calc.adapt(test_structures)     # prior labels, SGD on the prior loss
    calc.reset_layers()             # pristine weights

Pieces: :mod:`~mlff_calc.ttt.priors` (GFN1-xTB via tblite, EMT, LJ, Morse),
:mod:`~mlff_calc.models.two_head` (prior head, two-head model, its artifact),
:mod:`~mlff_calc.ttt.train` (two-phase training; experimental heads on
foundation models), :mod:`~mlff_calc.ttt.adapt` (the adaptation loop) and the
layer :class:`mlff_calc.ttt.layer.TTTLayer` (also ``mlff_calc.layers.ttt.TTTLayer``).
"""

from ..models.two_head import PriorHead, TwoHeadModel, load_head, save_head
from .adapt import AdaptConfig, adapt
from .layer import TTTLayer
from .priors import PRIORS, check_coverage, prior_calculator, prior_labels
from .train import TTTResult, fit_prior_head, save_ttt_student, train_ttt_student

__all__ = [
    "PRIORS",
    "AdaptConfig",
    "PriorHead",
    "TTTLayer",
    "TTTResult",
    "TwoHeadModel",
    "adapt",
    "check_coverage",
    "fit_prior_head",
    "load_head",
    "prior_calculator",
    "prior_labels",
    "save_head",
    "save_ttt_student",
    "train_ttt_student",
]
