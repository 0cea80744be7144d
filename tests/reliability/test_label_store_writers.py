"""Two processes labelling into one label store at once: no chunk lost, none labelled twice, no torn read.

The writers are real processes (``python -c`` children) started together on a
folder that does not exist yet; each labels 8 one-structure chunks with the small
float64 MACE and notes which chunks it computed (each chunk takes at least 0.2 s,
so the two interleave). Meanwhile this process reads the store over and over:
every read either says the store is incomplete or gives every record, and each
chunk it reads matches the manifest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import si8

import mlff_calc
from mlff_calc.errors import ArtifactError

ROOT = Path(mlff_calc.__file__).resolve().parents[1]
N = 8

#: a writer: load the teacher, say it is ready, wait for "go", label, note the chunks it computed
WRITER = """
import pathlib, sys, time
import torch
torch.set_num_threads(1)
import mlff_calc
from mlff_calc.distill import SampleSet, label
from mlff_calc.distill import labels as labels_module
folder, name, model = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
calc = mlff_calc.load(model, device="cpu", dtype="float64")
samples = SampleSet.read(folder / "samples")
real = labels_module._label_chunk
def noted(atoms_list, idx, *args):
    time.sleep(0.2)
    with open(folder / f"computed-{name}", "a") as fh:
        fh.write(" ".join(str(i) for i in idx) + "\\n")
    return real(atoms_list, idx, *args)
labels_module._label_chunk = noted
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
label(samples, calc, folder / "store", chunk_size=1, full_hessian_max_dof=0, n_rows=0, progress=False)
"""


def samples():
    from mlff_calc.distill import SampleSet

    frames = []
    for k in range(N):
        atoms = si8(5.43 + 0.01 * (k % 3))
        atoms.rattle(0.05, seed=70 + k)
        frames.append(atoms)
    return SampleSet(frames, np.array(["train"] * N), np.array(["input"] * N), {})


def read_while(procs, store: Path) -> int:
    """Read the store until both writers exit; return how many reads saw every record."""
    from mlff_calc.distill import LabelStore

    whole = 0
    while any(p.poll() is None for p in procs):
        try:
            reader = LabelStore(store)
        except ArtifactError as exc:
            assert "does not exist" in str(exc), exc  # before the first manifest only
            continue
        for name in reader.manifest["chunks"]:
            reader.read_chunk(name)  # a listed chunk always matches its sha256
        if reader.complete:
            assert len(reader.records()) == N
            whole += 1
        time.sleep(0.01)
    return whole


@pytest.mark.slow
def test_two_writers_of_one_label_store_lose_and_duplicate_nothing(tmp_path, mace_small_path, mace_adapter):
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.distill import LabelStore, label

    samples().write(tmp_path / "samples")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(k), str(mace_small_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    deadline = time.time() + 240
    while not all((tmp_path / f"ready-{k}").exists() for k in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    read_while(procs, tmp_path / "store")
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]

    computed = [[int(line) for line in (tmp_path / f"computed-{k}").read_text().split()] if (tmp_path / f"computed-{k}").exists() else [] for k in range(2)]
    assert sorted(computed[0] + computed[1]) == list(range(N)), computed  # each chunk labelled once
    assert computed[0] and computed[1], computed  # both writers worked
    store = LabelStore(tmp_path / "store")
    assert store.complete and len(store.manifest["chunks"]) == N
    # the labels are those of one serial writer
    serial = label(samples(), MLFFCalculator(mace_adapter), tmp_path / "serial", chunk_size=1, full_hessian_max_dof=0, n_rows=0, progress=False)
    for got, want in zip(store.records(), serial.records()):
        assert got.index == want.index and got.energy == pytest.approx(want.energy, rel=1e-12)
        np.testing.assert_allclose(got.forces, want.forces, atol=1e-12)
