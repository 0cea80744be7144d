"""Model names, where their files are looked for, and which adapter loads them.

Resolving a name never downloads: it looks in the model directories
(``$MLFF_CALC_MODEL_DIR``, a ``os.pathsep``-separated list, then
``~/.cache/mlff_calc/models``) and, when nothing is there, says where it looked
and how to provide the file.
"""

from __future__ import annotations

import importlib
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
    how = f"download it from {MACE_MP0_URL}{spec.filename} on a machine with internet, then " if spec.family == "mace" else ""
    return (
        f"model '{spec.name}' needs '{spec.filename}', which is not in any model directory (searched: {searched}). "
        f"To provide it, {how}put it in one of those folders, set {MODEL_DIR_ENV} to the folder holding it, "
        "or pass its path to mlff_calc.load()."
    )


def family_of_path(path: Path) -> str:
    """Guess the family of a local model file or folder from what it contains."""
    if path.is_dir():
        if (path / "student.json").exists():
            return "ttt_student" if (path / "prior_head.json").exists() else "student"
        if (path / "finetune.json").exists():
            return "finetune"
        if (path / "model.json").exists() and (path / "state.pt").exists():
            return "m3gnet"
        raise ModelLoadError(f"{path} is a folder but holds neither an mlff_calc student (student.json) nor a matgl model (model.json + state.pt)")
    if path.suffix == ".model":
        return "mace"
    if path.name.endswith((".pth.tar", ".pth")):
        return "chgnet"
    raise ModelLoadError(
        f"cannot tell which model family {path} belongs to; pass family='mace', 'chgnet' or 'm3gnet' to mlff_calc.load()"
    )


#: family -> (module, class) of its adapter; imported lazily, each pulls in its backend
ADAPTERS = {
    "chgnet": ("mlff_calc.models.chgnet", "CHGNetAdapter"),
    "m3gnet": ("mlff_calc.models.m3gnet", "M3GNetAdapter"),
    "mace": ("mlff_calc.models.mace", "MACEAdapter"),
    "student": ("mlff_calc.models.student", "StudentAdapter"),
    "ttt_student": ("mlff_calc.ttt.head", "TwoHeadModel"),
    "finetune": ("mlff_calc.models.finetuned", "FinetunedModel"),
}


def adapter_class(family: str):
    """The adapter class of a family."""
    if family not in ADAPTERS:
        raise ConfigurationError(f"unknown model family {family!r}; known: {', '.join(ADAPTERS)}")
    module, name = ADAPTERS[family]
    return getattr(importlib.import_module(module), name)


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
        return adapter_class(family or family_of_path(path)).load(path, device=device, dtype=dtype)
    known = ", ".join(sorted(KNOWN_MODELS) + sorted(ALIASES))
    raise ModelLoadError(f"'{model}' is neither a known model name ({known}) nor an existing path")


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
