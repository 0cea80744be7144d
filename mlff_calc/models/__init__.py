"""Model adapters, the registry of known names, and the explicit weight download :func:`fetch`."""

from .fetch import fetch

__all__ = ["fetch"]
