"""Model names, where their files are looked for, and which adapter loads them.

Resolving a name never downloads: it looks in the model directories
(``$MLFF_CALC_MODEL_DIR``, a ``os.pathsep``-separated list, then
``~/.cache/mlff_calc/models``) and, when nothing is there, says where it looked
and how to provide the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError, ModelLoadError

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "MLFF_CALC_MODEL_DIR"


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its family, the file or folder name, and a known-good check.

    ``check`` is ``(name of a structure in FINGERPRINT_STRUCTURES, energy in eV)``:
    the energy that a correct load of these weights gives, re-checked on every load.
    """

    name: str
    family: str
    filename: str | None
    description: str
    check: tuple[str, float] | None = None
    bundled: bool = False


MACE_MP0_URL = "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/"

KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("chgnet-0.3.0", "chgnet", None, "CHGNet 0.3.0, weights ship in the chgnet wheel", bundled=True),
        ModelSpec("m3gnet-mp-2021.2.8", "m3gnet", "M3GNet-MP-2021.2.8-PES", "M3GNet trained on MPF 2021.2.8 (matgl 4 format)", check=("MoS-CsCl-4.0", -10.824362)),
        ModelSpec("m3gnet-matpes-pbe-v2025.1", "m3gnet", "M3GNet-MatPES-PBE-v2025.1-PES", "M3GNet trained on MatPES-PBE (matgl 4 format)"),
        ModelSpec("mace-mp-0-small", "mace", "2023-12-10-mace-128-L0_energy_epoch-249.model", "MACE-MP-0 small"),
        ModelSpec("mace-mp-0-medium", "mace", "2023-12-03-mace-128-L1_epoch-199.model", "MACE-MP-0 medium"),
        ModelSpec("mace-mp-0-large", "mace", "MACE_MPtrj_2022.9.model", "MACE-MP-0 large"),
    )
}
ALIASES = {"chgnet": "chgnet-0.3.0", "m3gnet": "m3gnet-mp-2021.2.8", "mace-mp-0": "mace-mp-0-medium"}


def model_dirs() -> list[Path]:
    """Folders searched for model files, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(MODEL_DIR_ENV, "").split(os.pathsep) if p]
    dirs.append(Path("~/.cache/mlff_calc/models").expanduser())
    return dirs


def canonical_name(name: str) -> str:
    key = name.lower()
    return ALIASES.get(key, key)


def locate(spec: ModelSpec) -> Path | None:
    """The first model directory that holds ``spec``'s file, else ``None``."""
    for folder in model_dirs():
        candidate = folder / spec.filename
        if candidate.exists():
            return candidate
    return None


def missing_message(spec: ModelSpec) -> str:
    searched = ", ".join(str(d) for d in model_dirs())
    return (
        f"model '{spec.name}' needs '{spec.filename}', which is not in any model directory (searched: {searched}). "
        f"Download it with `mlff-calc models fetch {spec.name}` (or mlff_calc.models.fetch('{spec.name}')), "
        f"or put a copy in one of those folders, set {MODEL_DIR_ENV} to the folder holding it, or pass its path to mlff_calc.load()."
    )


def families() -> dict:
    """The declared model families (:mod:`mlff_calc.models.family`), in the order they are asked."""
    from .families import declared

    return declared()


def family_of_path(path: Path) -> str:
    """The family that recognises a local model file or folder (each family declares what its files look like)."""
    known = families()
    for family in known.values():
        if family.recognises(path):
            return family.name
    if path.is_dir():
        holds = " nor ".join(f.files for f in known.values() if f.folder)
        raise ModelLoadError(f"{path} is a folder but holds neither {holds}")
    raise ModelLoadError(f"cannot tell which model family {path} belongs to; pass family= one of {', '.join(map(repr, known))} to mlff_calc.load()")


def adapter_class(family: str):
    """The adapter class of a family."""
    known = families()
    if family not in known:
        raise ConfigurationError(f"unknown model family {family!r}; known: {', '.join(known)}")
    return known[family].adapter


def _load(family: str, path, **kwargs):
    """``adapter.load(path, **kwargs)`` of ``family``; families that wrap a base model get this registry's loader too."""
    cls = adapter_class(family)
    if families()[family].wraps_base:
        kwargs["load_base"] = load_base_model
    return cls.load(path, **kwargs)


def load_adapter(model: str | os.PathLike = "chgnet", *, device="auto", dtype=None, family: str | None = None, verify: bool = True):
    """Resolve a model name or path to a loaded adapter, without any download."""
    path = Path(model).expanduser()
    name = canonical_name(str(model))
    if name in KNOWN_MODELS:
        spec = KNOWN_MODELS[name]
        if spec.bundled:
            adapter = adapter_class(spec.family).load(device=device, dtype=dtype)
        else:
            found = locate(spec)
            if found is None:
                raise ModelLoadError(missing_message(spec))
            adapter = adapter_class(spec.family).load(found, device=device, dtype=dtype, model_id=spec.name)
        if verify and spec.check is not None:
            verify_fingerprint(adapter, spec)
        return adapter
    if path.exists():
        return _load(family or family_of_path(path), path, device=device, dtype=dtype)
    known = ", ".join(sorted(KNOWN_MODELS) + sorted(ALIASES))
    raise ModelLoadError(f"'{model}' is neither a known model name ({known}) nor an existing path")


def load_base_model(model_id: str, source: str | None, family: str | None, *, device="auto", dtype=None):
    """The base model an artifact records: by its id when that is a known name, else from its recorded source path."""
    if canonical_name(model_id) in KNOWN_MODELS:
        return load_adapter(model_id, device=device, dtype=dtype)
    if source and Path(source).exists():
        return load_adapter(source, device=device, dtype=dtype, family=family)
    raise ModelLoadError(f"the base model '{model_id}' is neither a known model name nor at its recorded source {source!r}")


def compile_student(adapter, option: str = "compile") -> None:
    """``adapter.compile()`` for a distilled student; ConfigurationError naming ``option`` for any other model."""
    if not hasattr(adapter, "compile"):
        raise ConfigurationError(f"{option} applies to distilled students only, not to {adapter.model_id} ({adapter.family})")
    adapter.compile()


def verify_fingerprint(adapter, spec: ModelSpec, tol: float = 2e-3) -> None:
    """Refuse weights that load but evaluate wrongly (e.g. a renamed legacy checkpoint)."""
    from .fingerprints import FINGERPRINT_STRUCTURES

    structure, expected = spec.check
    got = adapter.evaluate([FINGERPRINT_STRUCTURES[structure]()], ("energy",))[0]["energy"]
    if abs(got - expected) > tol:
        raise ModelLoadError(
            f"'{spec.name}' loaded from {adapter.source} gives {got:.6f} eV on the check structure {structure}, "
            f"but correct weights give {expected:.6f} eV: the file is of another version or evaluated wrongly by this "
            "backend version; refusing to return wrong numbers"
        )
