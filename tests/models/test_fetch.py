"""``mlff-calc models fetch`` against an HTTP server on 127.0.0.1 that mirrors the published paths."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import SHARED, require_backend

import mlff_calc
from mlff_calc.cli.main import main
from mlff_calc.errors import ModelLoadError

fetching = importlib.import_module("mlff_calc.models.fetch")  # the module; mlff_calc.models.fetch is the function

MACE_SMALL = "mace-mp-0-small"
MP2021 = "m3gnet-mp-2021.2.8"


class Server:
    """Serves ``routes`` (URL path -> bytes); ``truncate`` paths promise twice their length and hang up."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        routes, truncate, requests = self.routes, self.truncate, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # the name http.server calls
                requests.append(self.path)
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(2 * len(body) if self.path in truncate else len(body)))
                self.end_headers()
                self.wfile.write(body)
                if self.path in truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, name: str, files: dict[str, bytes], layout: str | None = None) -> None:
        """Serve ``files`` where the sources of model ``name`` (of ``layout``, default the first) publish them."""
        source = next(s for s in fetching.sources(name) if layout in (None, s.layout))
        for file, data in files.items():
            self.routes[urlsplit(source.url + file).path] = data

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_one_file_model_needs_a_known_hash_then_lands_atomically(server, mace_small_path, tmp_path, monkeypatch, capsys):
    data = mace_small_path.read_bytes()
    server.publish(MACE_SMALL, {"2023-12-10-mace-128-L0_energy_epoch-249.model": data})
    models = tmp_path / "models"
    with pytest.raises(ModelLoadError, match="no known sha256"):  # we know no published MACE hash
        fetching.fetch(MACE_SMALL, model_dir=models, base_url=server.url)
    assert entries(models) == [] and server.requests == []  # refused before any byte is fetched
    path = fetching.fetch(MACE_SMALL, model_dir=models, base_url=server.url, sha256=sha256(data), progress=True)
    assert path == models / "2023-12-10-mace-128-L0_energy_epoch-249.model"
    assert path.read_bytes() == data and entries(models) == [path.name]  # no temporary folder left
    assert "B/s]" in capsys.readouterr().err  # the tqdm bar, in bytes
    # load() finds it there (and never downloads); a second fetch keeps it without a request
    monkeypatch.setenv("MLFF_CALC_MODEL_DIR", str(models))
    assert mlff_calc.load(MACE_SMALL, device="cpu").adapter.sha256 is not None
    before = len(server.requests)
    assert fetching.fetch(MACE_SMALL, base_url=server.url) == path and len(server.requests) == before
    assert fetching.fetch(MACE_SMALL, base_url=server.url, sha256=sha256(data), force=True) == path
    assert len(server.requests) == before + 1 and entries(models) == [path.name] and path.read_bytes() == data


def test_sha_mismatch_is_refused_and_leaves_nothing(server, tmp_path):
    good = b"published weights"
    server.publish(MACE_SMALL, {"2023-12-10-mace-128-L0_energy_epoch-249.model": b"tampered weights!"})
    with pytest.raises(ModelLoadError, match=f"has sha256 {sha256(b'tampered weights!')}, not the published {sha256(good)}"):
        fetching.fetch(MACE_SMALL, model_dir=tmp_path, base_url=server.url, sha256=sha256(good))
    assert entries(tmp_path) == []


def test_interrupted_download_leaves_no_partial_file(server, tmp_path):
    body = b"x" * 4096
    server.publish(MACE_SMALL, {"2023-12-10-mace-128-L0_energy_epoch-249.model": body})
    server.truncate.update(server.routes)
    with pytest.raises(ModelLoadError, match="could not download|ended after 4096 of 8192 bytes"):
        fetching.fetch(MACE_SMALL, model_dir=tmp_path, base_url=server.url, sha256=sha256(body + body))
    assert entries(tmp_path) == []


def test_cli_network_error_is_exit_2_and_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(fetching.BASE_URL_ENV, f"http://127.0.0.1:{port}")
    rc = main(["models", "fetch", MP2021, "--model-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("mlff-calc models: error: could not download http://127.0.0.1:") and "Traceback" not in err
    assert entries(tmp_path / "m") == []


def test_cli_unknown_and_bundled_names(capsys):
    assert main(["models", "fetch", "no-such-model"]) == 2
    assert main(["models", "fetch", "chgnet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "unknown model 'no-such-model'" in err[0] and "needs no download" in err[1]


def test_missing_weights_error_names_the_fetch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFF_CALC_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cache/mlff_calc/models too
    for name in (MACE_SMALL, MP2021):
        with pytest.raises(ModelLoadError, match=f"`mlff-calc models fetch {name}`"):
            mlff_calc.load(name, device="cpu")
    assert main(["models"]) == 0
    assert f"(mlff-calc models fetch {MP2021})" in capsys.readouterr().out


def _shared_folder(*parts) -> Path:
    folder = SHARED.joinpath("models", *parts)
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the published files are served from there)")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in fetching.MATGL_FILES}


def test_m3gnet_matgl4_files_match_the_hash_table(server, tmp_path):
    require_backend("matgl", "m3gnet")
    folder = _shared_folder("M3GNet-MP-2021.2.8-PES")
    server.publish(MP2021, _files(folder), layout="matgl4")
    path = fetching.fetch(MP2021, model_dir=tmp_path, base_url=server.url)
    assert entries(tmp_path) == ["M3GNet-MP-2021.2.8-PES"]
    assert _files(path) == _files(folder)


def test_m3gnet_legacy_only_is_converted_and_energy_checked(server, tmp_path):
    """Only the matgl-2 files are published (the matgl-4 URL gives 404): converted, then the known-good energy."""
    require_backend("matgl", "m3gnet")
    legacy = _shared_folder("legacy-matgl2", "M3GNet-MP-2021.2.8-PES")
    server.publish(MP2021, _files(legacy), layout="matgl2")
    path = fetching.fetch(MP2021, model_dir=tmp_path, base_url=server.url)
    assert any("/resolve/main/" in r for r in server.requests)  # the matgl-4 source was tried first
    from mlff_calc.models.m3gnet import legacy_signs

    assert legacy_signs(path) == [] and entries(tmp_path) == ["M3GNet-MP-2021.2.8-PES"]
    adapter = mlff_calc.load(path, device="cpu").adapter
    from mlff_calc.models.fingerprints import FINGERPRINT_STRUCTURES

    energy = adapter.evaluate([FINGERPRINT_STRUCTURES["MoS-CsCl-4.0"]()], ("energy",))[0]["energy"]
    assert energy == pytest.approx(-10.824362, abs=2e-4)  # the legacy folder as matgl 4 reads it gives -7.4539
