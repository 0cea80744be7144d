"""Structures read from files, with one clear error for every way a file can be unusable.

Any ASE-readable format; a file that does not exist, does not parse, holds no
structure, or has partially occupied sites (a disordered CIF, which the models
would evaluate as if ordered) raises ConfigurationError naming the file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigurationError


def read_structure(path, index="-1"):
    """One Atoms from ``path`` (:func:`read_frames` with ``index`` selecting exactly one non-empty frame)."""
    frames = read_frames(path, str(index))
    if len(frames) != 1:
        raise ConfigurationError(f"--index {index} selects {len(frames)} frames of {path}; give a single frame")
    if len(frames[0]) == 0:
        raise ConfigurationError(f"{path} holds an empty structure")
    return frames[0]


def read_frames(path, index=":") -> list:
    """Every frame of ``path`` selected by ``index`` (ASE slice syntax); unreadable or empty raises ConfigurationError."""
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"structure file {path} does not exist")
    try:
        frames = ase.io.read(path, index=index)
    except (OSError, ValueError, KeyError, IndexError, StopIteration, UnknownFileTypeError) as exc:
        raise ConfigurationError(f"cannot read structures from {path} (index {index}): {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ConfigurationError(f"{path} (index {index}) holds no structures")
    for atoms in frames:
        partial = {site: occ for site, occ in (atoms.info.get("occupancy") or {}).items() if any(abs(x - 1.0) > 1e-6 for x in occ.values())}
        if partial:
            site, occ = next(iter(partial.items()))
            mix = ", ".join(f"{el} {x:g}" for el, x in occ.items())
            raise ConfigurationError(f"{path} has partially occupied sites ({len(partial)}, e.g. site {site}: {mix}); the models need an ordered cell: build one (e.g. an ordered supercell) first")
    return frames
