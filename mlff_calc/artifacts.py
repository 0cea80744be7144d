"""Reading and writing the plain-data artifacts of mlff_calc.

Every artifact is a JSON manifest (format name and version, mlff_calc version,
base model id and sha256, units, config) plus arrays in npz or safetensors.
Writes are atomic: a temporary file in the same folder, fsync, then rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import ArtifactError


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of every file under a folder (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a full disk: name the file being written, not the temporary
        if exc.errno is None or exc.filename not in (None, tmp, str(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


CHECKSUM_KEY = "content_sha256"


def stamp(data: dict) -> dict:
    """``data`` as plain JSON types with its ``content_sha256`` added."""
    plain = json.loads(json.dumps(data, default=_jsonable))
    plain.pop(CHECKSUM_KEY, None)
    plain[CHECKSUM_KEY] = _content_hash(plain)
    return plain


def write_json(path, data: dict) -> None:
    """Write ``data`` atomically with a ``content_sha256`` of its canonical form, checked on read."""
    plain = stamp(data)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")


def write_npz(path, **arrays) -> None:
    """Write arrays atomically; object arrays (which would need pickle) are refused."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)


def read_json(path, *, kind: str) -> dict:
    """Read a JSON artifact; a wrong ``content_sha256`` means the file was changed or corrupted."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{kind} file {path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{kind} file {path} is not valid JSON ({exc}); it may be truncated or corrupt") from exc
    except OSError as exc:
        raise ArtifactError(f"{kind} file {path} cannot be read: {exc}") from exc
    if isinstance(data, dict) and CHECKSUM_KEY in data:
        stored = data.pop(CHECKSUM_KEY)
        if stored != _content_hash(data):
            raise ArtifactError(f"{kind} file {path} does not match its content checksum: it was edited or corrupted after it was written")
    return data


def read_npz(path, *, kind: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError as exc:
        raise ArtifactError(f"{kind} arrays {path} do not exist") from exc
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ArtifactError(f"{kind} arrays {path} cannot be read ({exc}); the file may be truncated or corrupt") from exc


def _content_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_manifest(manifest: dict, *, fmt: str, versions: tuple[int, ...], path) -> None:
    """Refuse a manifest of another format or an unknown version."""
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ArtifactError(f"{path} is not a {fmt} artifact (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") not in versions:
        raise ArtifactError(
            f"{path} has {fmt} format version {manifest.get('format_version')!r}; this mlff_calc reads {list(versions)}"
        )


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
