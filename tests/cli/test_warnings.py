"""The CLI hides e3nn/TorchScript warnings while a verb runs, without touching the filters of library users."""

from __future__ import annotations

import warnings

import pytest

from mlff_calc.cli._warnings import quiet_third_party_warnings


def build_mace():
    pytest.importorskip("mace")
    from mlff_calc.models.mace import mace_scope
    from mlff_calc.models.mace_build import build_small_mace

    with mace_scope():
        return build_small_mace()


def torchscript_warnings(caught) -> list:
    return [w for w in caught if "TorchScript" in str(w.message)]


def test_mace_build_warnings_are_hidden_inside_the_scope_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_mace()
    assert torchscript_warnings(caught), "a MACE build no longer warns: the filter may be obsolete"
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_third_party_warnings():
            build_mace()
            warnings.warn("ours stays visible", UserWarning)
    assert not torchscript_warnings(caught)
    assert [str(w.message) for w in caught if "ours" in str(w.message)] == ["ours stays visible"]
    assert warnings.filters == before


def test_main_restores_the_warning_filters(tmp_path, monkeypatch):
    import mlff_calc  # noqa: F401  importing the library adds no filter either
    from mlff_calc.cli.main import main

    before = list(warnings.filters)
    monkeypatch.chdir(tmp_path)
    assert main(["models"]) == 0
    assert warnings.filters == before
