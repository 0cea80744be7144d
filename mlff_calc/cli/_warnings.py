"""Warnings of third-party libraries that say nothing to a user of the command line.

Filtered only while a verb runs (:func:`quiet_third_party_warnings` in ``main``);
importing or using the library changes no warning filter.
"""

from __future__ import annotations

import contextlib
import warnings

#: (message regex, category, module regex): each is emitted by code we do not control, about that code
NOISE = (
    # e3nn/mace class definitions, on every build of a MACE-family model (students included)
    (r"The TorchScript type system doesn't support instance-level annotations", UserWarning, ""),
    # e3nn's own constants file, loaded with torch.load without weights_only
    (r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", UserWarning, r"e3nn"),
)


@contextlib.contextmanager
def quiet_third_party_warnings():
    with warnings.catch_warnings():
        for message, category, module in NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield
