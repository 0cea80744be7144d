"""Batched evaluation, Hessian rows and per-atom descriptors through the model adapter."""

import time

from ase.build import bulk

from mlff_calc.models.registry import load_adapter

adapter = load_adapter("chgnet", device="cpu")
cells = []
for seed in range(8):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=seed)
    cells.append(atoms)

t = time.perf_counter()
results = adapter.evaluate(cells, ("energy", "forces", "stress", "descriptors"))  # one forward pass
print(f"8 cells in one batch: {time.perf_counter() - t:.2f} s; descriptors {results[0]['descriptors'].shape}")

# Rows of the energy Hessian d2E/dx_i dx_j (eV/Å²). Forces are -grad E, so dF/dx = -H.
h = adapter.hessian(cells[0], rows=[0, 1, 2], method="autograd")
h_fd = adapter.hessian(cells[0], rows=[0, 1, 2], method="fd", delta=1e-3)
print(f"Hessian rows {h.shape}; autograd vs finite differences: max |diff| = {abs(h - h_fd).max():.3f} eV/Å²")

# The graph can be built with a smaller cutoff than the native one (used by test-time rewiring).
e_native = adapter.evaluate([cells[0]])[0]["energy"]
e_short = adapter.evaluate([cells[0]], cutoff=4.5)[0]["energy"]
print(f"cutoff {adapter.cutoff} Å: {e_native:.3f} eV; cutoff 4.5 Å: {e_short:.3f} eV")
