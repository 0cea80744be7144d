"""The model families mlff_calc can load.

Importing an adapter module declares its family (each module's last lines); the
backends themselves (chgnet, matgl, mace-torch) are imported only when a model is loaded.
"""

from . import chgnet, finetuned, m3gnet, mace, student, two_head  # noqa: F401
from .family import declared

__all__ = ["declared"]
