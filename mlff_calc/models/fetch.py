"""Explicit download of published weights: ``mlff-calc models fetch NAME`` / :func:`fetch`.

:func:`mlff_calc.load` never downloads; this is the one place that does. Each
known model has the source its own library uses: MACE-MP-0 the mace-mp release
files (the URLs of mace-torch's ``mace_mp``), M3GNet the matgl checkpoints that
``matgl.load_model`` fetches (Hugging Face ``materialyze/<name>``), then the
matgl-2 copy in matgl's GitHub repository, which is converted to the matgl-4
layout and must pass the model's known-good energy check.

Every file is checked against :data:`SHA256` before anything is written to the
model directory; a file with no known hash is refused (``sha256=`` names one you
trust). Files are downloaded into a temporary folder beside the target and
renamed into place only when complete and verified, so an interrupted or refused
download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError, ModelLoadError
from .registry import KNOWN_MODELS, MACE_MP0_URL, canonical_name, model_dirs

log = logging.getLogger(__name__)

#: replaces the scheme and host of every source URL (a mirror, or the tests' local server)
BASE_URL_ENV = "MLFF_CALC_FETCH_URL"
MATGL_FILES = ("model.json", "model.pt", "state.pt")
_HF = "https://huggingface.co/materialyze/{name}/resolve/main/"
_MATGL_GITHUB = "https://github.com/materialsvirtuallab/matgl/raw/main/pretrained_models/{name}/"


@dataclass(frozen=True)
class Source:
    """Where one layout of a model is published: ``url`` + each file name."""

    url: str
    files: tuple[str, ...]
    layout: str  # "file" (one MACE .model), "matgl4" or "matgl2" (converted after download)


#: sha256 of every file we accept, by URL. The M3GNet hashes are those of the copies in the
#: project's shared folder (matgl 4.1.2 layout, and the matgl-2 layout as published for matgl 2);
#: we could not compare them with the bytes served today, so a re-published file is refused
#: (with both hashes in the message) rather than trusted. No sha256 of the MACE-MP-0 release
#: files was available to us: those entries are None and fetch refuses them unless the caller
#: names the hash (``sha256=`` / ``--sha256``) from a source they trust.
SHA256: dict[str, str | None] = {
    _HF.format(name="M3GNet-MP-2021.2.8-PES") + "model.json": "20995b29272f18e4007f238b2f173950e4b4d7e19190f94d1bb5d9c3b4f562ef",
    _HF.format(name="M3GNet-MP-2021.2.8-PES") + "model.pt": "e5544e8f39cbfdbae62edd981bea09b6dbea8cb52faa2243550c4bdc3dbd8180",
    _HF.format(name="M3GNet-MP-2021.2.8-PES") + "state.pt": "17838d04d05418af0b30fc87244004233b45309c0dea0e3da78e587cac77d8d9",
    _MATGL_GITHUB.format(name="M3GNet-MP-2021.2.8-PES") + "model.json": "05e7db8676ceb37eb07848aff49c556b188699e1035f3df0cbbf1a2c4959148f",
    _MATGL_GITHUB.format(name="M3GNet-MP-2021.2.8-PES") + "model.pt": "62678f76fbc5d8997ea1d7f3c4bf086df200102125c802b32b08ce14fbcde25b",
    _MATGL_GITHUB.format(name="M3GNet-MP-2021.2.8-PES") + "state.pt": "a9aa723705bd1a242ec8749332f137811c4a94e17995a564f8f94a9aca68061b",
    _HF.format(name="M3GNet-MatPES-PBE-v2025.1-PES") + "model.json": "de3b98776de503a5681c2cdd8f7690413f2e3788783f95755caa83176fd25f61",
    _HF.format(name="M3GNet-MatPES-PBE-v2025.1-PES") + "model.pt": "878c7b7f110dff4fa5f41abbcfe3bd6aca98b27e303bfb070da904e1acde29e9",
    _HF.format(name="M3GNet-MatPES-PBE-v2025.1-PES") + "state.pt": "a9418f5fd698bbfd8f60a302bcb57b743330a839694305209bafbbc0320fe3c9",
}


def sources(name: str) -> list[Source]:
    """The published sources of a known model, tried in order (the next only when a file is not found there)."""
    spec = KNOWN_MODELS[name]
    if spec.family == "mace":
        return [Source(MACE_MP0_URL, (spec.filename,), "file")]
    out = [Source(_HF.format(name=spec.filename), MATGL_FILES, "matgl4")]
    if _MATGL_GITHUB.format(name=spec.filename) + MATGL_FILES[0] in SHA256:
        out.append(Source(_MATGL_GITHUB.format(name=spec.filename), MATGL_FILES, "matgl2"))
    return out


def _rebase(url: str, base: str | None) -> str:
    if not base:
        return url
    rest = url.split("://", 1)[1].split("/", 1)[1]
    return base.rstrip("/") + "/" + rest


def _download(url: str, dest: Path, expected: str, progress: bool | None, timeout: float) -> None:
    """Stream ``url`` into ``dest``, refusing it unless complete and of sha256 ``expected``."""
    from .._runtime import progress_bar

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, desc=dest.name, enabled=progress) as bar:
                bar.unit, bar.unit_scale = "B", True
                bar.refresh()
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts, IncompleteRead, refused
        raise ModelLoadError(f"could not download {url}: {getattr(exc, 'reason', None) or exc}") from exc
    if total is not None and done != total:
        raise ModelLoadError(f"download of {url} ended after {done} of {total} bytes")
    got = digest.hexdigest()
    if got != expected:
        raise ModelLoadError(f"{url} has sha256 {got}, not the published {expected}: refused, nothing was written")


def fetch(name: str, *, model_dir=None, base_url: str | None = None, sha256: str | None = None, force: bool = False, progress: bool | None = None, timeout: float = 60.0) -> Path:
    """Download the published weights of model ``name`` into the model directory; returns their path.

    ``model_dir``: default the first of :func:`~mlff_calc.models.registry.model_dirs`
    (``$MLFF_CALC_MODEL_DIR``, else ``~/.cache/mlff_calc/models``). ``base_url``
    (or ``$MLFF_CALC_FETCH_URL``) replaces the scheme and host of the source URLs.
    ``sha256``: the expected hash of a one-file model whose hash is not in :data:`SHA256`.
    Weights already present are kept unless ``force``. ``progress``: a progress bar
    (default: when stderr is a terminal).
    """
    key = canonical_name(str(name))
    if key not in KNOWN_MODELS:
        raise ConfigurationError(f"unknown model '{name}'; known: {', '.join(sorted(KNOWN_MODELS))}")
    spec = KNOWN_MODELS[key]
    if spec.bundled:
        raise ConfigurationError(f"'{key}' needs no download: its weights ship with the {spec.family} package")
    folder = Path(model_dir).expanduser() if model_dir is not None else model_dirs()[0]
    target = folder / spec.filename
    if target.exists() and not force:
        log.info("%s is already at %s", key, target)
        return target
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{spec.filename}.", suffix=".partial", dir=folder))
    except OSError as exc:
        raise ModelLoadError(f"cannot write to the model directory {folder}: {exc}") from exc
    try:
        missing = []
        for source in sources(key):
            try:
                fetched = _fetch_source(source, work, base, sha256, progress, timeout)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise ModelLoadError(f"could not download {exc.url}: HTTP {exc.code} {exc.reason}") from exc
                missing.append(f"{exc.url} (HTTP 404)")
                continue
            ready = _to_matgl4(fetched, work, spec) if source.layout != "file" else fetched
            _check(ready, spec)
            _install(ready, target)
            log.info("fetched %s into %s", key, target)
            return target
        raise ModelLoadError(f"'{key}' is not published at any known source: {'; '.join(missing)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_source(source: Source, work: Path, base, sha256, progress, timeout) -> Path:
    """The source's files, downloaded and verified, in a fresh folder under ``work``."""
    into = Path(tempfile.mkdtemp(dir=work))
    for file in source.files:
        url = source.url + file
        expected = SHA256.get(url) or (sha256 if source.layout == "file" else None)
        if expected is None:
            raise ModelLoadError(
                f"no known sha256 for {url}; refusing an unverified download. Pass the hash you trust "
                "(mlff-calc models fetch NAME --sha256 HEX), or download the file yourself and give its path to mlff_calc.load()"
            )
        _download(_rebase(url, base), into / file, expected.lower(), progress, timeout)
    return into / source.files[0] if source.layout == "file" else into


def _to_matgl4(folder: Path, work: Path, spec) -> Path:
    """A matgl folder in the matgl-4 layout: as downloaded, or converted from matgl 2."""
    from .m3gnet import legacy_signs

    if not legacy_signs(folder):
        return folder
    out = Path(tempfile.mkdtemp(dir=work)) / spec.filename
    convert_legacy(folder, out)
    return out


def _check(path: Path, spec) -> None:
    """Load the downloaded weights and run the model's known-good energy check (if it has one)."""
    from .registry import adapter_class, verify_fingerprint

    adapter = adapter_class(spec.family).load(path, device="cpu", model_id=spec.name)
    if spec.check is not None:
        verify_fingerprint(adapter, spec)


def _install(ready: Path, target: Path) -> None:
    """Move a verified file or folder to ``target`` in one rename (same file system)."""
    try:
        if target.exists():  # force: the old copy goes only once the new one is complete
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old")) / target.name
            os.replace(target, old)
            os.replace(ready, target)
            shutil.rmtree(old.parent, ignore_errors=True)
        else:
            os.replace(ready, target)
    except OSError as exc:
        raise ModelLoadError(f"could not move the verified download into {target}: {exc}") from exc


def convert_legacy(src: Path, dst: Path) -> None:
    """Write the matgl-2 M3GNet folder ``src`` in the matgl-4 layout at ``dst``.

    matgl 4 feeds ``(v_src, v_dst, edge)`` to the first layer of each graph
    convolution's edge and node updates, weights matgl 2 trained for ``(v_dst,
    v_src, edge)``; the first two column blocks of those weights are swapped.
    matgl 4 itself then writes the folder (its current model.json and buffers).
    """
    import torch

    from .._runtime import backend, isolated

    with isolated(), backend("m3gnet", "converting a matgl-2 M3GNet checkpoint"):
        import matgl

        module = matgl.load_model(src)
    state = module.state_dict()
    swapped = 0
    for key, w in state.items():
        if ".conv." in key and key.endswith(("_update_func.layers.0.weight", "_update_func.gates.0.weight")):
            d = w.shape[1] // 3
            if w.ndim != 2 or w.shape[1] != 3 * d:
                raise ModelLoadError(f"{src}: {key} has shape {tuple(w.shape)}, not [out, 3 x features]; cannot convert it")
            state[key] = torch.cat([w[:, d : 2 * d], w[:, :d], w[:, 2 * d :]], dim=1)
            swapped += 1
    if swapped == 0:
        raise ModelLoadError(f"{src} holds no M3GNet graph convolution weights to convert")
    module.load_state_dict(state)
    module.save(dst)
