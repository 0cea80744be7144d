"""Configurations for distillation, sampled around the user's structures.

Three sources, each seeded:

- teacher MD: Langevin dynamics driven by the teacher at each of
  ``temperatures_K``; after ``md_equilibration_steps`` a frame is kept every
  ``md_interval`` steps (``md_frames`` per temperature and input structure);
- rattles: Gaussian displacements of every atom (``rattle_std_A``);
- strains: random symmetric strains of magnitude ``strain`` applied with both
  signs (±), the atoms moved with the cell and then rattled lightly.

Near-duplicates are dropped (sorted minimum-image distance fingerprints that
agree within ``dedup_tol_A``), then the set is split into train/valid/test with
a seeded permutation. A :class:`SampleSet` is plain arrays (numbers, positions,
cell, pbc; no pickle) and writes itself as ``samples.npz`` plus a
``samples.json`` manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units

from .._version import __version__
from ..artifacts import check_manifest, read_json, read_npz, sha256_file, write_json, write_npz
from ..data.structures import pack_structures, structures_sha256, unpack_structures  # noqa: F401 (re-exported)
from ..errors import ArtifactError, ConfigurationError

log = logging.getLogger(__name__)

SAMPLES_FORMAT = "mlff_calc.samples"
SAMPLES_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class SampleSet:
    """Sampled structures, where each came from and which split it belongs to."""

    structures: list[Atoms]
    split: np.ndarray  # "train" / "valid" / "test" per structure
    origin: np.ndarray  # e.g. "md-300K", "rattle", "strain+", "input"
    config: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.structures)

    def subset(self, name: str) -> list[Atoms]:
        return [a for a, s in zip(self.structures, self.split) if s == name]

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.split == name)) for name in SPLITS}

    def write(self, folder) -> Path:
        """``<folder>/samples.npz`` + ``samples.json`` (written atomically)."""
        folder = Path(folder)
        arrays = pack_structures(self.structures)
        write_npz(folder / "samples.npz", **arrays, split=self.split.astype("U8"), origin=self.origin.astype("U16"))
        manifest = {
            "arrays": {"file": "samples.npz", "sha256": sha256_file(folder / "samples.npz")},
            "format": SAMPLES_FORMAT,
            "format_version": SAMPLES_VERSION,
            "mlff_calc_version": __version__,
            "n_structures": len(self),
            "counts": self.counts(),
            "structures_sha256": structures_sha256(arrays),
            "units": {"length": "Å", "temperature": "K"},
            "config": self.config,
        }
        write_json(folder / "samples.json", manifest)
        return folder

    @classmethod
    def read(cls, folder) -> "SampleSet":
        folder = Path(folder)
        manifest = read_json(folder / "samples.json", kind="sample set manifest")
        check_manifest(manifest, fmt=SAMPLES_FORMAT, versions=(SAMPLES_VERSION,), path=folder / "samples.json")
        npz = folder / "samples.npz"
        expected = manifest.get("arrays", {}).get("sha256") if isinstance(manifest.get("arrays"), dict) else None
        if not npz.is_file():
            raise ArtifactError(f"sample set arrays {npz} do not exist")
        if sha256_file(npz) != expected:
            raise ArtifactError(f"sample set arrays {npz} do not match the sha256 recorded in {folder / 'samples.json'}; the file was changed or is corrupt")
        arrays = read_npz(npz, kind="sample set")
        missing = {"numbers", "positions", "cell", "pbc", "n_atoms", "split", "origin"} - set(arrays)
        if missing:
            raise ArtifactError(f"sample set {folder / 'samples.npz'} lacks arrays {sorted(missing)}")
        if structures_sha256(arrays) != manifest.get("structures_sha256"):
            raise ArtifactError(f"{folder / 'samples.npz'} does not match the sha256 recorded in its manifest; it was changed or is corrupt")
        return cls(unpack_structures(arrays), arrays["split"].astype(str), arrays["origin"].astype(str), manifest.get("config", {}))


# sources ---------------------------------------------------------------------------------


def md_frames(
    atoms: Atoms, calc, *, temperature_K: float, frames: int, interval: int, equilibration_steps: int, timestep_fs: float, friction_per_fs: float, rng: np.random.Generator, bar=None
) -> list[Atoms]:
    """Langevin MD with ``calc``: ``frames`` snapshots, one every ``interval`` steps after equilibration."""
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    work = atoms.copy()
    work.set_constraint([*(c.copy() for c in atoms.constraints), FixCom()])  # ASE's recommended replacement for fixcm=True
    work.calc = calc
    MaxwellBoltzmannDistribution(work, temperature_K=temperature_K, rng=rng)
    Stationary(work)
    dyn = Langevin(work, timestep=timestep_fs * units.fs, temperature_K=temperature_K, friction=friction_per_fs / units.fs, rng=rng, fixcm=False)
    if equilibration_steps:
        dyn.run(equilibration_steps)
    out = []
    for _ in range(frames):
        dyn.run(interval)
        frame = work.copy()
        frame.calc = None
        frame.set_constraint([c.copy() for c in atoms.constraints])
        frame.arrays.pop("momenta", None)
        out.append(frame)
        if bar is not None:
            bar.update(1)
    return out


def rattled(atoms: Atoms, n: int, std_A: float, rng: np.random.Generator) -> list[Atoms]:
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.calc = None
        a.positions = a.positions + rng.normal(0.0, std_A, size=a.positions.shape)
        out.append(a)
    return out


def strained(atoms: Atoms, n: int, strain: float, rattle_std_A: float, rng: np.random.Generator) -> list[tuple[str, Atoms]]:
    """``n`` random symmetric strains of Frobenius size ``strain``, each applied with + and - sign."""
    if not atoms.pbc.all():
        return []
    out = []
    for _ in range(max(n // 2, 1) if n else 0):
        eps = rng.normal(size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        eps *= strain / np.linalg.norm(eps)
        for sign, tag in ((1.0, "strain+"), (-1.0, "strain-")):
            a = atoms.copy()
            a.calc = None
            a.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            a.positions = a.positions + rng.normal(0.0, rattle_std_A, size=a.positions.shape)
            out.append((tag, a))
    return out[:n]


# deduplication and split -------------------------------------------------------------------


def fingerprint(atoms: Atoms) -> np.ndarray:
    """Permutation- and translation-invariant: cell lengths/angles, then sorted MIC distances per element pair."""
    from ase.geometry import get_distances

    _, d = get_distances(atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    iu = np.triu_indices(len(atoms), k=1)
    z = atoms.numbers
    pair = np.minimum(z[iu[0]], z[iu[1]]) * 1000 + np.maximum(z[iu[0]], z[iu[1]])
    order = np.lexsort((d[iu], pair))
    return np.concatenate([atoms.cell.cellpar(), d[iu][order]])


def deduplicate(structures: Sequence[Atoms], tol_A: float) -> np.ndarray:
    """Indices of the structures kept: a structure is dropped when its fingerprint
    agrees with a kept one's within ``tol_A`` (max abs difference) and its composition matches."""
    kept: list[int] = []
    prints: dict[tuple, list[np.ndarray]] = {}
    for k, atoms in enumerate(structures):
        key = (len(atoms), tuple(sorted(atoms.numbers.tolist())))
        fp = fingerprint(atoms)
        same = prints.setdefault(key, [])
        if any(np.max(np.abs(fp - other)) < tol_A for other in same):
            continue
        same.append(fp)
        kept.append(k)
    return np.asarray(kept, dtype=np.int64)


def split_indices(n: int, fractions: Sequence[float], seed: int) -> np.ndarray:
    """A split label per index, from a seeded permutation; valid and test get at least one each when n >= 3."""
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ConfigurationError(f"split fractions must be three non-negative numbers (train, valid, test) summing to 1; got {fractions.tolist()}")
    n_valid = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_valid = max(n_valid, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    labels = np.array(["train"] * n, dtype="U8")
    perm = np.random.default_rng(seed).permutation(n)
    labels[perm[:n_valid]] = "valid"
    labels[perm[n_valid : n_valid + n_test]] = "test"
    return labels


# the sampler ------------------------------------------------------------------------------


def sample(
    structures: Atoms | Sequence[Atoms],
    teacher=None,
    *,
    temperatures_K: Sequence[float] = (300.0, 600.0, 900.0),
    md_frames_per_T: int = 20,
    md_interval: int = 5,
    md_equilibration_steps: int = 20,
    timestep_fs: float = 2.0,
    friction_per_fs: float = 0.02,
    n_rattle: int = 20,
    rattle_std_A: float = 0.05,
    n_strain: int = 20,
    strain: float = 0.02,
    strain_rattle_std_A: float = 0.02,
    include_inputs: bool = True,
    dedup_tol_A: float = 1e-3,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool | None = None,
) -> SampleSet:
    """Sample distillation configurations around ``structures``.

    ``teacher`` is the ASE calculator driving the MD (needed when
    ``temperatures_K`` and ``md_frames_per_T`` are non-empty/non-zero). Counts are
    per input structure. Returns a :class:`SampleSet` with splits assigned.
    """
    from .._runtime import progress_bar

    structures = [structures] if isinstance(structures, Atoms) else list(structures)
    if not structures:
        raise ConfigurationError("no input structures to sample around")
    temperatures_K = [float(t) for t in temperatures_K]
    if any(t <= 0 for t in temperatures_K):
        raise ConfigurationError(f"MD temperatures must be > 0 K; got {temperatures_K}")
    if temperatures_K and md_frames_per_T > 0 and teacher is None:
        raise ConfigurationError("teacher MD needs a teacher calculator; pass teacher=... or md_frames_per_T=0")
    if md_interval < 1 or md_frames_per_T < 0 or n_rattle < 0 or n_strain < 0:
        raise ConfigurationError("md_interval must be >= 1 and the counts >= 0")
    config = {k: v for k, v in locals().items() if k not in ("structures", "teacher", "progress_bar", "progress")}
    config["teacher"] = getattr(getattr(teacher, "adapter", None), "model_id", type(teacher).__name__ if teacher is not None else None)
    rng = np.random.default_rng(seed)
    tagged: list[tuple[str, Atoms]] = []
    n_md = len(structures) * len(temperatures_K) * md_frames_per_T
    with progress_bar(total=n_md, desc="sample: teacher MD", enabled=progress) as bar:
        for atoms in structures:
            if include_inputs:
                base = atoms.copy()
                base.calc = None
                tagged.append(("input", base))
            for t in temperatures_K:
                if md_frames_per_T:
                    frames = md_frames(
                        atoms,
                        teacher,
                        temperature_K=t,
                        frames=md_frames_per_T,
                        interval=md_interval,
                        equilibration_steps=md_equilibration_steps,
                        timestep_fs=timestep_fs,
                        friction_per_fs=friction_per_fs,
                        rng=rng,
                        bar=bar,
                    )
                    tagged.extend((f"md-{t:g}K", f) for f in frames)
            tagged.extend(("rattle", a) for a in rattled(atoms, n_rattle, rattle_std_A, rng))
            tagged.extend(strained(atoms, n_strain, strain, strain_rattle_std_A, rng))
    keep = deduplicate([a for _, a in tagged], dedup_tol_A)
    if len(keep) < len(tagged):
        log.info("dropped %d near-duplicate configurations of %d", len(tagged) - len(keep), len(tagged))
    kept = [tagged[k] for k in keep]
    labels = split_indices(len(kept), split, seed)
    result = SampleSet([a for _, a in kept], labels, np.array([o for o, _ in kept], dtype="U16"), config)
    log.info("sampled %d configurations: %s", len(result), result.counts())
    return result
