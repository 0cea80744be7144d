"""``error_log.npz`` is bound to its run: building an LTAU index refuses another run's log.

The run is the student of tests/ltau/test_ltau.py; its trainer wrote the log with the
final weights' identity and the hash of the training structures. A log of another
model (an untrained student of the same architecture), of other structures (the same
atoms moved by 0.01 Å), of an unfinished run, or without the binding is refused with
ArtifactError naming the file; ``ltau build`` says so in one line, exit 2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_ltau import ltau_built, ltau_store  # noqa: F401  (module fixtures)

from mlff_calc.artifacts import read_npz
from mlff_calc.data.error_log import write_error_log
from mlff_calc.errors import ArtifactError
from mlff_calc.ltau import build_ltau
from mlff_calc.models.identity import model_identity

pytestmark = pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")

TINY = {"channels": 8, "num_interactions": 1, "num_bessel": 6, "radial_mlp": [16]}


def log_parts(out):
    """The run's log arrays (without the binding) and its training structures in log order."""
    arrays = read_npz(out / "error_log.npz", kind="error log")
    binding = json.loads(str(arrays.pop("binding")))
    return arrays, binding


def structures_of(store, arrays):
    by_index = {r.index: r.atoms for r in store.records()}
    return [by_index[s] for s in dict.fromkeys(arrays["structure_index"].tolist())]


def test_the_runs_own_log_is_bound_to_the_final_weights(ltau_built):  # noqa: F811
    from mlff_calc.models.identity import model_identity

    student, _, out = ltau_built
    _, binding = log_parts(out)
    assert binding["model"]["sha256"] == model_identity(student)["sha256"] and binding["format_version"] == 1


def test_log_of_another_model_is_refused(ltau_built, ltau_store, tmp_path):  # noqa: F811
    from mlff_calc.distill import StudentAdapter

    student, _, out = ltau_built
    arrays, _ = log_parts(out)
    other = StudentAdapter.create([14], device="cpu", dtype="float64", architecture=TINY, seed=1)
    log = tmp_path / "error_log.npz"
    write_error_log(log, arrays, structures=structures_of(ltau_store, arrays), identity=model_identity(other))
    with pytest.raises(ArtifactError, match=f"error log {log} was written by a run whose weights have sha256 .*it belongs to another run"):
        build_ltau(student, ltau_store, log)


def test_log_of_other_structures_is_refused(ltau_built, ltau_store, tmp_path):  # noqa: F811
    student, _, out = ltau_built
    arrays, _ = log_parts(out)
    moved = [a.copy() for a in structures_of(ltau_store, arrays)]
    moved[0].positions[0] += 0.01
    log = tmp_path / "error_log.npz"
    write_error_log(log, arrays, structures=moved, identity=model_identity(student))
    with pytest.raises(ArtifactError, match=f"error log {log} was written for other training structures"):
        build_ltau(student, ltau_store, log)


def test_log_of_an_unfinished_run_is_refused(ltau_built, ltau_store, tmp_path):  # noqa: F811
    student, _, out = ltau_built
    arrays, _ = log_parts(out)
    log = tmp_path / "error_log.npz"
    write_error_log(log, arrays, structures=structures_of(ltau_store, arrays), identity=None)
    with pytest.raises(ArtifactError, match="did not finish"):
        build_ltau(student, ltau_store, log)


def test_log_without_binding_is_refused_by_the_cli(ltau_built, tmp_path, capsys):  # noqa: F811
    from mlff_calc.artifacts import write_npz
    from mlff_calc.cli.main import main

    _, _, out = ltau_built
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("ltau"))
    arrays, _ = log_parts(out)
    write_npz(run / "error_log.npz", **arrays)
    rc = main(["ltau", "build", str(run), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "records no model or training data" in err, err
    assert not (tmp_path / "x").exists()
    assert np.array_equal(read_npz(run / "error_log.npz", kind="log")["errors"], arrays["errors"])
