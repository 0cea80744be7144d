"""Test-time training of a two-head Cu student on surface slabs, with the EMT prior.

A small, quick version of benchmarks/ttt_shift.py (a few minutes on one CPU core):
CHGNet labels bulk Cu, a two-head student learns EMT on its backbone and CHGNet on
its reference head, then adapts to slabs using EMT labels only.

    python examples/04_test_time_training.py
"""

import numpy as np
from ase.build import bulk, fcc111

import mlff_calc
from mlff_calc import distill, ttt
from mlff_calc.layers.ttt import TTTLayer

teacher = mlff_calc.load("chgnet", device="cpu")
cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
samples = distill.sample([cu], teacher, temperatures_K=(300.0, 600.0), md_frames_per_T=10, n_rattle=10, n_strain=10)
store = distill.label(samples, teacher, "cu-labels/", n_rows=0, full_hessian_max_dof=0)
ttt.train_ttt_student(store, "emt", prior_epochs=10, reference_epochs=10, out_dir="cu-ttt-student/")

slabs = []
for k in range(6):
    slab = fcc111("Cu", size=(2, 2, 4), a=3.61, vacuum=6.0, periodic=True)
    slab.rattle(0.05, seed=k)
    slabs.append(slab)
reference = [r["forces"] for r in teacher.evaluate(slabs)]

calc = mlff_calc.load("cu-ttt-student/", device="cpu", layers=[TTTLayer(lr=1e-4, steps=100, batch_size=6)])


def force_mae():
    return np.mean([np.abs(r["forces"] - f).mean() for r, f in zip(calc.evaluate(slabs), reference)])


before = force_mae()
history = calc.adapt(slabs)["ttt"]  # EMT labels only; no CHGNet call
print(
    f"force MAE vs CHGNet on slabs: {1e3 * before:.1f} -> {1e3 * force_mae():.1f} meV/Å; "
    f"prior loss {history['prior_loss_initial']:.3g} -> {history['prior_loss_final']:.3g} in {history['wall_time_s']:.0f} s"
)
calc.layers[0].save("cu-slab-adapted/")  # reuse with: mlff-calc md slab.xyz --model cu-ttt-student/ --ttt cu-slab-adapted/
calc.reset_layers()  # back to the pristine weights
