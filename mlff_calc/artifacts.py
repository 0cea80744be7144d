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
import socket
import tempfile
import uuid
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
    return verify(data, kind=kind, path=path)


def verify(data, *, kind: str, path) -> dict:
    """``data`` without its ``content_sha256``, which must be there and match (a missing or renamed key is refused)."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{kind} file {path} holds a JSON {type(data).__name__}, not an object; it is not an mlff_calc artifact")
    if CHECKSUM_KEY not in data:
        raise ArtifactError(f"{kind} file {path} has no {CHECKSUM_KEY}: it was edited or is not an mlff_calc artifact; write it again with mlff_calc")
    data = dict(data)
    if data.pop(CHECKSUM_KEY) != _content_hash(data):
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
        raise ArtifactError(f"{path} has {fmt} format version {manifest.get('format_version')!r}; this mlff_calc reads {list(versions)}")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# concurrent writers -------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock on ``path`` (created if needed) for the block; the OS drops it if the process dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def new_owner() -> str:
    """A writer's name for claims: host, process id and a random token (one per writer)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """False when ``owner`` ran on this host in a process that is gone; True otherwise (other hosts: a lease decides)."""
    host, _, rest = str(owner).partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


class FolderClaims:
    """Which writer works on which part of a folder artifact (``.claims.json`` beside it, changed under ``.lock``).

    Claims only save work: what is finished is decided by the artifact's own
    manifest, which writers update under the same lock. A claim lapses when its
    process is gone (same host) or after ``lease_s`` without a write by its owner.
    """

    def __init__(self, folder, *, lease_s: float = 3600.0):
        self.folder = Path(folder)
        self.owner = new_owner()
        self.lease_s = float(lease_s)

    def lock(self):
        return file_lock(self.folder / ".lock")

    def _read(self) -> dict:
        try:
            data = json.loads((self.folder / ".claims.json").read_text())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, claims: dict) -> None:
        with atomic_path(self.folder / ".claims.json") as tmp:
            tmp.write_text(json.dumps(claims))

    def take(self, names, done, n: int) -> list[str]:
        """Under :meth:`lock`: claim up to ``n`` of ``names`` not in ``done`` and not held by a live writer."""
        import time

        now, claims, got = time.time(), self._read(), []
        for name in names:
            if len(got) >= n:
                break
            held = claims.get(name)
            if name in done or (isinstance(held, list) and len(held) == 2 and held[0] != self.owner and held[1] > now and owner_alive(held[0])):
                continue
            claims[name] = [self.owner, now + self.lease_s]
            got.append(name)
        for name, held in claims.items():  # a write is a sign of life: renew the rest of this writer's claims
            if isinstance(held, list) and held and held[0] == self.owner:
                claims[name] = [self.owner, now + self.lease_s]
        if got:
            self._write(claims)
        return got

    def release(self) -> None:
        """Drop this writer's claims."""
        with self.lock():
            claims = self._read()
            kept = {k: v for k, v in claims.items() if not (isinstance(v, list) and v and v[0] == self.owner)}
            if kept != claims:
                self._write(kept)
