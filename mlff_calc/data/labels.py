"""The label store: teacher energies, forces, stress and energy-Hessian rows of many structures.

A label store is a folder::

    labels.json          manifest (format "mlff_calc.labels", version 1)
    labels-00000.npz     structures 0 .. chunk_size-1 and their labels
    labels-00001.npz     ...

Sign convention (stored in the manifest's ``units``): forces are ``F = -∇E`` and
the stored rows are rows of the energy Hessian ``H = d²E/dx_i dx_j`` (eV/Å²),
so the force Jacobian is ``dF/dx = -H`` and ``F(x + h e_i) - F(x - h e_i) ≈ -2h H[i]``.
DOF ``i`` is ``3 * atom + cartesian component``.

Labelling and resuming: :mod:`mlff_calc.distill.labels`.

Each chunk holds plain arrays (no pickle): ``numbers``, ``positions``, ``cell``,
``pbc``, ``n_atoms``, ``fixed``, ``index`` (global structure index), ``split``,
``energy`` [B], ``forces`` [N, 3], ``stress`` [B, 6] (NaN where not periodic),
``hessian_n_rows`` [B], ``hessian_rows`` [R] (DOF indices) and ``hessian``
(the rows flattened structure after structure, each row of length 3N).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ..artifacts import check_manifest, read_json, read_npz, sha256_file
from ..errors import ArtifactError
from .structures import unpack_structures

LABELS_FORMAT = "mlff_calc.labels"
LABELS_VERSION = 1
MANIFEST = "labels.json"
UNITS = {
    "energy": "eV",
    "forces": "eV/Å (F = -dE/dx)",
    "stress": "eV/Å³, Voigt-6 (xx, yy, zz, yz, xz, xy), positive is tensile",
    "hessian": "eV/Å², rows of H = d²E/dx_i dx_j; dF/dx = -H",
    "length": "Å",
}


def chunk_name(k: int) -> str:
    return f"labels-{k:05d}.npz"


# the store ----------------------------------------------------------------------------------


@dataclass
class LabelRecord:
    """One labelled structure. ``hessian`` is ``[len(hessian_rows), 3N]`` (may be empty)."""

    index: int
    split: str
    atoms: Atoms
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    hessian_rows: np.ndarray
    hessian: np.ndarray
    fixed: np.ndarray


class LabelStore:
    """Read access to a label store folder (checks format, chunk hashes and completeness)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = read_json(self.folder / MANIFEST, kind="label store manifest")
        check_manifest(self.manifest, fmt=LABELS_FORMAT, versions=(LABELS_VERSION,), path=self.folder / MANIFEST)
        check_label_manifest(self.manifest, self.folder / MANIFEST)

    @property
    def complete(self) -> bool:
        return len(self.manifest.get("chunks", {})) == self.manifest["n_chunks"]

    @property
    def teacher(self) -> dict:
        return self.manifest["teacher"]

    def content_sha256(self) -> str:
        """Hash of the labelled data (chunk hashes in order): the student's training-data hash."""
        digest = hashlib.sha256(self.manifest["structures_sha256"].encode())
        for name in sorted(self.manifest.get("chunks", {})):
            digest.update(self.manifest["chunks"][name].encode())
        return digest.hexdigest()

    def read_chunk(self, name: str) -> dict[str, np.ndarray]:
        path = self.folder / name
        expected = self.manifest.get("chunks", {}).get(name)
        if expected is None:
            raise ArtifactError(f"{path} is not a finished chunk of the label store {self.folder}; run labelling again to complete it")
        if not path.is_file():
            raise ArtifactError(f"label chunk {path} is listed in {self.folder / MANIFEST} but does not exist")
        if sha256_file(path) != expected:
            raise ArtifactError(f"label chunk {path} does not match the sha256 recorded in {self.folder / MANIFEST}; it was changed or is corrupt. Delete it and run labelling again to recompute it")
        return read_npz(path, kind="label chunk")

    def records(self, split: str | Sequence[str] | None = None) -> list[LabelRecord]:
        """Every labelled structure (optionally of some splits), in index order."""
        if not self.complete:
            done = len(self.manifest.get("chunks", {}))
            raise ArtifactError(f"label store {self.folder} is incomplete ({done} of {self.manifest['n_chunks']} chunks); run labelling again to finish it")
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        out = []
        for k in range(self.manifest["n_chunks"]):
            out.extend(r for r in records_of_chunk(self.read_chunk(chunk_name(k))) if splits is None or r.split in splits)
        return out


#: entries every label manifest holds, with their JSON types
_MANIFEST_TYPES = {"teacher": dict, "units": dict, "n_structures": int, "n_chunks": int, "structures_sha256": str, "config": dict, "chunks": dict}


def check_label_manifest(manifest: dict, path) -> None:
    """Refuse a label manifest with missing or mistyped entries (e.g. a corrupted key name)."""
    bad = [k for k, t in _MANIFEST_TYPES.items() if not isinstance(manifest.get(k), t) or isinstance(manifest.get(k), bool)]
    chunks = manifest.get("chunks")
    if isinstance(chunks, dict) and not all(isinstance(k, str) and isinstance(v, str) for k, v in chunks.items()):
        bad.append("chunks")
    if bad:
        raise ArtifactError(f"label store manifest {path} has missing or invalid entries {sorted(set(bad))}; it is corrupt. Label into a new folder")


def records_of_chunk(arrays: dict[str, np.ndarray]) -> list[LabelRecord]:
    atoms_list = unpack_structures(arrays)
    bounds = np.cumsum([0, *arrays["n_atoms"].tolist()])
    row_bounds = np.cumsum([0, *arrays["hessian_n_rows"].tolist()])
    h_bounds = np.cumsum([0, *(arrays["hessian_n_rows"] * 3 * arrays["n_atoms"]).tolist()])
    out = []
    for b, atoms in enumerate(atoms_list):
        n3 = 3 * len(atoms)
        stress = arrays["stress"][b]
        rows = arrays["hessian_rows"][row_bounds[b] : row_bounds[b + 1]]
        out.append(
            LabelRecord(
                index=int(arrays["index"][b]),
                split=str(arrays["split"][b]),
                atoms=atoms,
                energy=float(arrays["energy"][b]),
                forces=arrays["forces"][bounds[b] : bounds[b + 1]],
                stress=None if np.isnan(stress).any() else stress,
                hessian_rows=rows,
                hessian=arrays["hessian"][h_bounds[b] : h_bounds[b + 1]].reshape(len(rows), n3),
                fixed=arrays["fixed"][bounds[b] : bounds[b + 1]],
            )
        )
    return out
