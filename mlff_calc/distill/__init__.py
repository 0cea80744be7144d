"""Hessian distillation (Amin et al., ICLR 2025, arXiv 2501.09009).

A small, fast, conservative student (a ScaleShiftMACE) is trained on a chemical
subset against a teacher's energies, forces and sampled energy-Hessian rows::

    import mlff_calc
    from mlff_calc import distill

    teacher = mlff_calc.load("chgnet")
    samples = distill.sample([si64], teacher, temperatures_K=(300, 600, 900))
    store = distill.label(samples, teacher, "labels/")           # resumable
    result = distill.train_student(store, epochs=30, out_dir="student/")
    calc = mlff_calc.load("student/")                           # an ASE calculator

Steps: :func:`sample` (teacher MD, rattles, ±strain, dedup, split),
:func:`label` (label store folder of npz chunks + manifest),
:func:`train_student` (loss in :mod:`mlff_calc.distill.loss`, generic trainer in
:mod:`mlff_calc.training`) and :func:`save_student` (``student.json`` + state_dict).
"""

from ..models.student import DEFAULT_ARCHITECTURE, FAST_ARCHITECTURE, StudentAdapter, save_student
from .labels import LabelRecord, LabelStore, label
from .loss import DistillationLoss, LossWeights
from .sample import SampleSet, sample
from .train import DistillResult, train_student


def load_student(path, *, device="auto", dtype=None) -> StudentAdapter:
    """The student adapter in ``path`` (``mlff_calc.load(path)`` gives it as an ASE calculator)."""
    return StudentAdapter.load(path, device=device, dtype=dtype)


__all__ = [
    "DEFAULT_ARCHITECTURE",
    "FAST_ARCHITECTURE",
    "DistillResult",
    "DistillationLoss",
    "LabelRecord",
    "LabelStore",
    "LossWeights",
    "SampleSet",
    "StudentAdapter",
    "label",
    "load_student",
    "sample",
    "save_student",
    "train_student",
]
