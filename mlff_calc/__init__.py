"""mlff_calc: ASE calculators for machine-learning force fields, with correction and uncertainty layers."""

from __future__ import annotations

import logging

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())


def load(model="chgnet", device="auto", dtype=None, *, layers=(), family=None, min_distance=0.5, verify=True):
    """Build an ASE calculator from a model name or a local path.

    ``model``: a name (``"chgnet"``, ``"m3gnet-mp-2021.2.8"``, ``"mace-mp-0-medium"``, ...;
    ``mlff-calc models`` lists them) or a path to a model file or folder. Names are
    resolved in ``$MLFF_CALC_MODEL_DIR`` then ``~/.cache/mlff_calc/models``; nothing
    is downloaded. ``device``: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``. ``dtype``:
    ``None`` (the family default), ``"float32"`` or ``"float64"``. ``layers``: layer
    objects, applied in order.
    """
    from .calculator import MLFFCalculator
    from .models.registry import load_adapter

    adapter = load_adapter(model, device=device, dtype=dtype, family=family, verify=verify)
    return MLFFCalculator(adapter, layers=list(layers), min_distance=min_distance)


__all__ = ["load", "__version__"]
