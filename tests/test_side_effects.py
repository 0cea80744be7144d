"""No process-wide side effects: environment, default dtype and root logger stay as they were.

Run in a fresh interpreter, so the backends' first imports (where mace/e3nn and
matgl write environment variables) happen inside the check.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    import torch
    from ase import Atoms
    from ase.build import bulk
    from ase.calculators.calculator import BaseCalculator

    env0 = dict(os.environ)
    dtype0 = torch.get_default_dtype()
    root0 = list(logging.getLogger().handlers)
    props0 = list(BaseCalculator.implemented_properties)

    import mlff_calc
    from mlff_calc.errors import MLFFError

    calcs = [mlff_calc.load("chgnet", device="cpu")]
    if sys.argv[1] != "-":
        calcs.append(mlff_calc.load(sys.argv[1], device="cpu", dtype="float64"))
    if sys.argv[2] != "-":
        calcs.append(mlff_calc.load(sys.argv[2], device="cpu", dtype="float64"))
    for calc in calcs:
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.calc = calc
        atoms.get_forces(); atoms.get_stress()
        try:  # a failing call must not leak state either
            bad = Atoms("SiOg", positions=[[0, 0, 0], [2, 0, 0]], cell=[6, 6, 6], pbc=True)
            bad.calc = calc
            bad.get_potential_energy()
        except MLFFError:
            pass
        else:
            raise SystemExit("an unsupported element did not raise")

    changed = {k: os.environ.get(k) for k in set(env0) | set(os.environ) if env0.get(k) != os.environ.get(k)}
    assert not changed, f"environment changed: {changed}"
    assert torch.get_default_dtype() == dtype0, torch.get_default_dtype()
    assert logging.getLogger().handlers == root0, "root logger handlers changed"
    assert BaseCalculator.implemented_properties == props0
    print("OK", len(calcs))
    """
)


def test_no_global_side_effects(tmp_path, mace_small_path):
    from helpers import SHARED

    m3gnet = SHARED / "models" / "M3GNet-MP-2021.2.8-PES"
    args = [str(m3gnet) if m3gnet.exists() else "-", str(mace_small_path)]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK " + str(1 + sum(a != "-" for a in args)))


def test_two_calculators_different_dtypes_side_by_side(mace_small_path):
    import numpy as np
    from ase.build import bulk

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.models.mace import MACEAdapter

    c32 = MLFFCalculator(MACEAdapter.load(mace_small_path, device="cpu", dtype="float32"))
    c64 = MLFFCalculator(MACEAdapter.load(mace_small_path, device="cpu", dtype="float64"))
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=9)
    f = []
    for calc in (c32, c64, c32):
        a = atoms.copy()
        a.calc = calc
        f.append(a.get_forces())
    np.testing.assert_allclose(f[0], f[2], atol=0)  # the float64 call changed nothing for float32
    np.testing.assert_allclose(f[0], f[1], atol=1e-4)
