"""``mlff-calc ttt adapt`` and ``--ttt`` on another verb."""

from __future__ import annotations

import json

import ase.io
import numpy as np


def test_adapt_then_singlepoint_with_ttt(ttt_folder, shifted, tmp_path):
    from mlff_calc.cli.main import main

    frames = tmp_path / "shifted.extxyz"
    ase.io.write(frames, shifted)
    adapted = tmp_path / "adapted"
    rc = main(
        ["ttt", "adapt", str(frames), "--model", str(ttt_folder[1]), "--device", "cpu", "--out", str(adapted), "--steps", "4", "--batch-size", "5", "--lr", "1e-3", "--out-dir", str(tmp_path / "run")]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "ttt-adapt-summary.json").read_text())
    assert summary["results"]["n_structures"] == len(shifted)
    assert summary["results"]["prior_loss_final"] < summary["results"]["prior_loss_initial"]
    assert (tmp_path / "run" / "ttt-prior-loss.png").stat().st_size > 1000

    one = tmp_path / "one.extxyz"
    ase.io.write(one, shifted[0])
    for name, extra in (("plain", []), ("ttt", ["--ttt", str(adapted)])):
        assert main(["singlepoint", str(one), "--model", str(ttt_folder[1]), "--device", "cpu", "--out-dir", str(tmp_path / name), *extra]) == 0
    plain = ase.io.read(next((tmp_path / "plain").glob("*.extxyz")))
    tuned = ase.io.read(next((tmp_path / "ttt").glob("*.extxyz")))
    assert np.abs(plain.get_forces() - tuned.get_forces()).max() > 1e-6


def test_prior_names_match_the_library():
    from mlff_calc.cli.ttt import PRIOR_NAMES
    from mlff_calc.ttt import PRIORS

    assert PRIOR_NAMES == PRIORS
