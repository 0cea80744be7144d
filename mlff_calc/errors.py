"""The one exception hierarchy of mlff_calc.

Every error a user can trigger derives from :class:`MLFFError`. Where ASE has a
matching class we inherit from it too, so ``except`` clauses written for ASE
calculators keep working.
"""

from __future__ import annotations

from ase.calculators.calculator import (
    CalculationFailed as _AseCalculationFailed,
)
from ase.calculators.calculator import (
    CalculatorSetupError,
    PropertyNotImplementedError,
)


class MLFFError(Exception):
    """Root of every error raised by mlff_calc."""


class ConfigurationError(MLFFError, ValueError):
    """A parameter or a combination of parameters is invalid."""


class InvalidStructureError(MLFFError, ValueError):
    """The Atoms object cannot be evaluated (empty, NaN, overlapping atoms, ...)."""


class UnsupportedElementError(InvalidStructureError):
    """The structure holds elements the model was not trained on."""

    def __init__(self, elements, model_id: str):
        self.elements = sorted(set(elements))
        self.model_id = model_id
        super().__init__(f"elements {', '.join(self.elements)} are not covered by model '{model_id}'; choose a model that covers them or remove those atoms")


class ModelLoadError(MLFFError, CalculatorSetupError):
    """A model could not be found, read or trusted."""


class ArtifactError(MLFFError, CalculatorSetupError):
    """A file written by mlff_calc is missing, corrupt, of another version or of another model."""


class CalculationFailed(MLFFError, _AseCalculationFailed):
    """A calculation started but broke (NaN output, out of memory)."""


class NotImplementedProperty(MLFFError, PropertyNotImplementedError):
    """The requested property is not produced by this calculator."""


class StressNotDefined(NotImplementedProperty, InvalidStructureError):
    """Stress was asked for a cell that is not periodic in all three directions.

    An ASE ``PropertyNotImplementedError`` (what ASE clients catch for a property a
    system does not have) and, as before, an :class:`InvalidStructureError`.
    """
