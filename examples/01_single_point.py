"""Energy, forces and stress of a rattled Si cell with CHGNet, as a drop-in ASE calculator."""

from ase.build import bulk

import mlff_calc

calc = mlff_calc.load("chgnet", device="cpu")  # weights ship in the chgnet wheel
atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
atoms.rattle(0.05, seed=0)
atoms.calc = calc

print(calc)
print(f"energy  {atoms.get_potential_energy():.4f} eV")
print(f"|F|max  {abs(atoms.get_forces()).max():.4f} eV/Å")
print(f"stress  {atoms.get_stress()} eV/Å³ (Voigt: xx yy zz yz xz xy)")
print(f"per-atom energies sum to {atoms.get_potential_energies().sum():.4f} eV")
