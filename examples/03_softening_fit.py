"""Fit the softening scale of CHGNet on one DFT supercell and apply it.

python examples/03_softening_fit.py ../shared/data/phonopy/NaCl-rd
"""

import sys
from pathlib import Path

import mlff_calc
from mlff_calc.layers.softening import SofteningLayer
from mlff_calc.softening import fit_scale, measure, read_phonopy_dataset

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/phonopy/NaCl-rd")
data = read_phonopy_dataset(folder / "phonopy_disp.yaml", folder / "FORCE_SETS")
calc = mlff_calc.load("chgnet", device="cpu")

fit = fit_scale(calc, data[:1])  # one supercell is enough for a scalar
fit.save("nacl-softening.json")
print(f"c = {fit.c:.4f}  (the model's forces are {100 * (1 - 1 / fit.c):.0f}% too soft)")

corrected = mlff_calc.load("chgnet", device="cpu", layers=[SofteningLayer.from_file("nacl-softening.json")])
held_out = data[1:]
for name, c in (("raw", calc), ("corrected", corrected)):
    report = measure(c, held_out)
    print(f"{name:>9}: force MAE on {len(held_out)} held-out supercells {1e3 * report.pooled.mae:.2f} meV/Å, s = {report.pooled.s:.3f}")
