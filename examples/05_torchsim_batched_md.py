"""Batched MD and relaxation of many systems at once with torch-sim (``pip install 'mlff_calc[torchsim]'``).

Eight rattled Si cells of different sizes are relaxed together with FIRE, then run
together in Langevin NVT at 600 K; every step is one batched CHGNet forward pass.
On a GPU, pass ``device="cuda"``: the neighbour lists are then searched there (vesin).
"""

import torch
import torch_sim as ts
from ase.build import bulk

import mlff_calc
from mlff_calc.torchsim import TorchSimModel, state_to_atoms

device = "cuda" if torch.cuda.is_available() else "cpu"
adapter = mlff_calc.load("chgnet", device=device).adapter
model = TorchSimModel(adapter)

systems = []
for k in range(8):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (1 + k % 2, 1, 1)
    atoms.rattle(0.1, seed=k)
    systems.append(atoms)

relaxed = ts.optimize(system=systems, model=model, optimizer=ts.optimizers.fire, convergence_fn=ts.generate_force_convergence_fn(force_tol=0.02, include_cell_forces=False), max_steps=300)
forces = model(relaxed)["forces"]
print(f"relaxed {relaxed.n_systems} systems ({relaxed.n_atoms} atoms): max |F| {forces.abs().max():.4f} eV/Å")

final = ts.integrate(system=relaxed, model=model, integrator=ts.nvt_langevin, n_steps=20, temperature=600, timestep=0.001)  # timestep in ps
kinetic = ts.calc_kinetic_energy(momenta=final.momenta, masses=final.masses, system_idx=final.system_idx)
print("energy per system (eV):", [round(float(e), 3) for e in model(final)["energy"]])
print("kinetic energy per system (eV):", [round(float(e), 3) for e in kinetic])
print("back in ASE:", state_to_atoms(final)[0])
