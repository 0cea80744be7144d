"""Artifact corruption and atomic writes: the softening fit (JSON) and the npz/atomic-write layer.

The distillation artifacts (sample sets, label stores, students) are covered in
test_artifacts_distill.py. For every artifact type: a truncated, bit-flipped, empty, wrongly named, wrongly
versioned or other-model file makes the loader raise ArtifactError with a clear
message, and loading never changes the file (sha256 before and after). Writes
through ``artifacts.atomic_path``/``write_json``/``write_npz`` that fail leave
either no file or the old one, and no temporary file. Every npz mlff_calc writes
loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlff_calc import artifacts
from mlff_calc.artifacts import atomic_path, read_json, read_npz, sha256_file, stamp, write_json, write_npz
from mlff_calc.errors import ArtifactError
from mlff_calc.softening import FORMAT, FORMAT_VERSION, SofteningFit


def softening_fit(model_id="mace-test", sha=None, c=1.234567) -> SofteningFit:
    return SofteningFit(
        c=c,
        mode="reference",
        model_id=model_id,
        chemical_system="Cl-Na",
        chemical_systems=["Cl-Na"],
        source="unit test",
        n_structures=3,
        n_components=144,
        s=1 / c,
        s_intercept=0.01,
        mae=0.1,
        cmae=0.05,
        mae_corrected=0.04,
        model_sha256=sha,
    )


@pytest.fixture
def fit_file(tmp_path) -> Path:
    path = tmp_path / "fit.json"
    softening_fit().save(path)
    return path


def load_fit(path):
    return SofteningFit.load(path)


def assert_refused(loader, path, *words):
    """The loader raises ArtifactError naming the file (and ``words``); the file is unchanged."""
    before = sha256_file(path) if Path(path).is_file() else None
    with pytest.raises(ArtifactError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    if before is not None:
        assert sha256_file(path) == before, "loading changed the file"
    return message


def no_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- softening fit (JSON)


def test_softening_fit_round_trip(fit_file):
    fit = load_fit(fit_file)
    assert fit == softening_fit()
    assert json.loads(fit_file.read_text())["format"] == FORMAT


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_softening_fit_truncated(fit_file, keep):
    raw = fit_file.read_bytes()
    fit_file.write_bytes(raw[: int(len(raw) * keep)])
    assert_refused(load_fit, fit_file)


def test_softening_fit_empty(fit_file):
    fit_file.write_bytes(b"")
    assert_refused(load_fit, fit_file, "not valid JSON")


def test_softening_fit_binary_garbage(fit_file):
    fit_file.write_bytes(bytes(range(256)) * 4)
    assert_refused(load_fit, fit_file)


def test_softening_fit_every_single_bit_flip_is_refused_or_harmless(fit_file):
    """No bit flip anywhere in the file may surface as anything but ArtifactError."""
    raw = fit_file.read_bytes()
    original = softening_fit()
    silent = []
    for pos in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[pos] ^= 1 << bit
            fit_file.write_bytes(bytes(flipped))
            try:
                fit = load_fit(fit_file)
            except ArtifactError as exc:
                assert str(exc).strip()
                continue
            if fit != original:
                silent.append((pos, bit, raw[pos : pos + 1], bytes(flipped[pos : pos + 1])))
    # other exception types propagate and fail the test; silent changes are counted in the next test
    assert len(silent) < 8 * len(raw)


def test_softening_fit_bit_flip_in_c_is_detected(fit_file):
    """FAILS today: a one-bit flip in a digit of c (1.234567 -> 1.234577) loads silently.

    JSON manifests carry no checksum of their own content, so a corrupted scale is
    applied to every force. Proposed fix: ``write_json`` adds ``"content_sha256"``
    (sha256 of the canonical JSON of every other field, ``sort_keys=True``) and
    ``check_manifest`` recomputes it, raising ArtifactError on a mismatch.
    """
    raw = fit_file.read_bytes()
    pos = raw.index(b"1.234567") + 6  # the digit '6' (0x36) -> '7' (0x37): one bit
    flipped = bytearray(raw)
    flipped[pos] ^= 0x01
    fit_file.write_bytes(bytes(flipped))
    assert_refused(load_fit, fit_file)


@pytest.mark.parametrize("fmt", ["mlff_calc.ltau", "", None, 3, "MLFF_CALC.SOFTENING"])
def test_softening_fit_wrong_format_name(fit_file, fmt):
    data = json.loads(fit_file.read_text())
    data["format"] = fmt
    fit_file.write_text(json.dumps(stamp(data)))  # a well-formed file with a bad field
    assert_refused(load_fit, fit_file, FORMAT)


def test_softening_fit_missing_format(fit_file):
    data = json.loads(fit_file.read_text())
    del data["format"]
    fit_file.write_text(json.dumps(stamp(data)))  # a well-formed file with a bad field
    assert_refused(load_fit, fit_file, FORMAT)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, str(FORMAT_VERSION), None, 1.5])
def test_softening_fit_wrong_version(fit_file, version):
    data = json.loads(fit_file.read_text())
    data["format_version"] = version
    fit_file.write_text(json.dumps(stamp(data)))  # a well-formed file with a bad field
    message = assert_refused(load_fit, fit_file, "version")
    assert str(list((FORMAT_VERSION,))) in message  # says which versions it reads


@pytest.mark.parametrize("document", ["[]", "null", "42", '"text"', "{}"])
def test_softening_fit_not_an_object(fit_file, document):
    fit_file.write_text(document)
    assert_refused(load_fit, fit_file)


@pytest.mark.parametrize("field,value", [("c", -1.0), ("c", "1.3"), ("c", None), ("mode", "sideways"), ("chemical_systems", [1, 2]), ("n_structures", 2.5)])
def test_softening_fit_bad_field(fit_file, field, value):
    data = json.loads(fit_file.read_text())
    data[field] = value
    fit_file.write_text(json.dumps(stamp(data)))  # a well-formed file with a bad field
    assert_refused(load_fit, fit_file, field)


def test_softening_fit_missing_file(tmp_path):
    assert_refused(load_fit, tmp_path / "absent.json", "does not exist")


def test_softening_fit_path_is_a_folder(tmp_path):
    """FAILS today: IsADirectoryError escapes read_json (it catches FileNotFoundError only).

    Proposed fix in ``artifacts.read_json``: after the FileNotFoundError clause add
    ``except OSError as exc: raise ArtifactError(f"{kind} file {path} cannot be read ({exc})") from exc``.
    """
    folder = tmp_path / "fit.json"
    folder.mkdir()
    assert_refused(load_fit, folder)


def test_softening_fit_of_another_model_is_refused(fit_file, mace_adapter):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.softening import SofteningLayer

    before = sha256_file(fit_file)
    layer = SofteningLayer.from_file(fit_file)  # made for "mace-test", not this adapter's model id
    with pytest.raises(ArtifactError, match="made for model 'mace-test'"):
        MLFFCalculator(mace_adapter, layers=[layer])
    assert sha256_file(fit_file) == before


def test_softening_fit_of_other_weights_is_refused(tmp_path, mace_adapter):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.softening import SofteningLayer

    path = tmp_path / "fit.json"
    softening_fit(model_id=mace_adapter.model_id, sha="0" * 64).save(path)
    before = sha256_file(path)
    with pytest.raises(ArtifactError, match="sha256"):
        MLFFCalculator(mace_adapter, layers=[SofteningLayer.from_file(path)])
    assert sha256_file(path) == before
    softening_fit(model_id=mace_adapter.model_id, sha=mace_adapter.sha256).save(path)  # the right weights: accepted
    MLFFCalculator(mace_adapter, layers=[SofteningLayer.from_file(path)])


# --------------------------------------------------------------------------- npz arrays


@pytest.fixture
def npz_file(tmp_path) -> Path:
    path = tmp_path / "arrays.npz"
    write_npz(path, x=np.linspace(0, 1, 2000), n=np.arange(50), s=np.array(["Na", "Cl"]))
    return path


def load_npz(path):
    return read_npz(path, kind="test")


def test_npz_round_trip_without_pickle(npz_file):
    with np.load(npz_file, allow_pickle=False) as data:
        assert sorted(data.files) == ["n", "s", "x"]
        assert data["s"].tolist() == ["Na", "Cl"]


@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 0.95])
def test_npz_truncated(npz_file, keep):
    """FAILS today for partial files: zipfile.BadZipFile is not among the errors read_npz catches.

    Proposed fix in ``artifacts.read_npz``: catch ``(ValueError, OSError, EOFError, zipfile.BadZipFile)``.
    """
    raw = npz_file.read_bytes()
    npz_file.write_bytes(raw[: int(len(raw) * keep)])
    assert_refused(load_npz, npz_file)


@pytest.mark.parametrize("where", [0.02, 0.3, 0.6, 0.97])
def test_npz_bit_flipped(npz_file, where):
    """FAILS today: a flipped bit in the data gives ``BadZipFile: Bad CRC-32`` (same fix as above)."""
    flipped = bytearray(npz_file.read_bytes())
    flipped[int(len(flipped) * where)] ^= 0x10
    npz_file.write_bytes(bytes(flipped))
    assert_refused(load_npz, npz_file)


def test_npz_empty_and_missing(npz_file, tmp_path):
    npz_file.write_bytes(b"")
    assert_refused(load_npz, npz_file)
    assert_refused(load_npz, tmp_path / "absent.npz", "do not exist")


def test_npz_pickled_content_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, o=np.array([{"a": 1}], dtype=object))  # written by someone else, with pickle
    assert_refused(load_npz, path)


def test_write_npz_refuses_object_arrays(tmp_path):
    """FAILS today: write_npz pickles object arrays silently (np.savez's default allow_pickle=True).

    Such a file cannot be read back with allow_pickle=False. Proposed fix in
    ``artifacts.write_npz``: ``np.savez(fh, allow_pickle=False, **arrays)`` (numpy >= 2.1),
    so the write fails with ValueError and, being inside ``atomic_path``, leaves no file.
    """
    path = tmp_path / "o.npz"
    with pytest.raises((ValueError, TypeError, ArtifactError)):
        write_npz(path, o=np.array([{"a": 1}], dtype=object))
    assert not path.exists()
    assert no_temp_files(tmp_path) == []


# --------------------------------------------------------------------------- atomic writes


class Crash(Exception):
    pass


def test_atomic_path_crash_inside_block_new_file(tmp_path):
    path = tmp_path / "new.json"
    with pytest.raises(Crash):
        with atomic_path(path) as tmp:
            tmp.write_text('{"half": ')
            raise Crash
    assert not path.exists()
    assert no_temp_files(tmp_path) == []


def test_atomic_path_crash_inside_block_keeps_old(tmp_path):
    path = tmp_path / "old.json"
    write_json(path, {"version": "old"})
    before = sha256_file(path)
    for exc in (Crash, KeyboardInterrupt):
        with pytest.raises(exc):
            with atomic_path(path) as tmp:
                tmp.write_text('{"version": "ne')
                raise exc
        assert sha256_file(path) == before
        assert no_temp_files(tmp_path) == []


@pytest.mark.parametrize("writer", ["json", "npz"])
@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_rename_or_fsync_keeps_old(tmp_path, monkeypatch, writer, failing):
    path = tmp_path / f"artifact.{writer}"
    write = (lambda v: write_json(path, {"v": v})) if writer == "json" else (lambda v: write_npz(path, v=np.full(100, v)))
    write(1)
    before = sha256_file(path)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts.os, failing, boom)
    with pytest.raises(OSError):
        write(2)
    monkeypatch.undo()
    assert sha256_file(path) == before
    assert no_temp_files(tmp_path) == []
    if writer == "npz":
        assert load_npz(path)["v"][0] == 1


def test_write_json_unserialisable_keeps_old(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": object()})
    assert read_json(path, kind="test") == {"v": 1}
    assert no_temp_files(tmp_path) == []


def test_hard_crash_mid_write_keeps_old(tmp_path):
    """A process killed inside the write (os._exit, no cleanup) leaves the old file intact.

    Only the hidden temporary file ``.<name>.*.tmp`` may remain after such a crash.
    """
    path = tmp_path / "a.json"
    write_json(path, {"v": "old"})
    script = textwrap.dedent(
        f"""
        import os
        from mlff_calc.artifacts import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            tmp.write_text('{{"v": "ne')
            os._exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert read_json(path, kind="test") == {"v": "old"}
    leftovers = no_temp_files(tmp_path)
    assert all(name.startswith(".a.json.") for name in leftovers), leftovers


def test_written_files_respect_umask(tmp_path):
    """FAILS today: artifacts are written with mode 0600, whatever the umask.

    ``tempfile.mkstemp`` creates the temporary file 0600 and ``os.replace`` keeps
    that mode, so a fit or label store written into a shared folder is unreadable
    by the group. Proposed fix in ``atomic_path``, before ``os.replace``:
    ``os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o666 & ~UMASK)``
    with ``UMASK`` read once at import (``os.umask`` is process-global, so not per call).
    """
    old = os.umask(0o022)
    try:
        path = tmp_path / "a.json"
        write_json(path, {"v": 1})
        mode = stat.S_IMODE(os.stat(path).st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644, oct(mode)


# --------------------------------------------------------------------------- nothing needs pickle


def test_every_npz_written_loads_without_pickle(tmp_path):
    """write_npz with the array kinds mlff_calc stores: all load with allow_pickle=False."""
    arrays = dict(
        f64=np.random.default_rng(0).normal(size=(7, 3)),
        f32=np.ones(4, np.float32),
        i64=np.arange(5),
        b=np.array([True, False]),
        u=np.array(["train", "val"]).astype("U8"),
        empty=np.zeros((0, 3)),
        scalar=np.array(1.5),
    )
    path = tmp_path / "all.npz"
    write_npz(path, **arrays)
    with np.load(path, allow_pickle=False) as data:
        for key, value in arrays.items():
            np.testing.assert_array_equal(data[key], value)
            assert data[key].dtype == value.dtype
