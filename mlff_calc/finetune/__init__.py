"""Few-shot fine-tuning of a model adapter on DFT data (Deng et al. 2024); the method is described in :mod:`.train`.

The fine-tuned model artifact (``finetune.json`` + ``weights.pt``) is written and
read by :mod:`mlff_calc.models.finetuned`, re-exported here.
"""

from ..models import finetuned as _artifact
from ..models.finetuned import FORMAT, FORMAT_VERSION, MANIFEST, UNITS, WEIGHTS, FinetunedModel, read_manifest, save_finetuned
from .train import ERROR_LOG, PAPER_WEIGHTS, FinetuneLoss, FinetuneResult, dataset_sha256, evaluate_dataset, finetune, resolve_trainable


def load_finetuned(folder, *, device="auto", dtype=None, base_adapter=None):
    """A fine-tuned adapter from ``folder`` (see :func:`mlff_calc.models.finetuned.load_finetuned`); the base is loaded by its recorded id or source."""
    from ..models.registry import load_base_model

    return _artifact.load_finetuned(folder, device=device, dtype=dtype, base_adapter=base_adapter, load_base=load_base_model)


__all__ = [
    "ERROR_LOG",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PAPER_WEIGHTS",
    "UNITS",
    "WEIGHTS",
    "FinetuneLoss",
    "FinetuneResult",
    "FinetunedModel",
    "dataset_sha256",
    "evaluate_dataset",
    "finetune",
    "load_finetuned",
    "read_manifest",
    "resolve_trainable",
    "save_finetuned",
]
