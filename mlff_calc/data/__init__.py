"""Data shared by every method: DFT datasets and readers, label stores, training error logs, structures as arrays.

- :mod:`.dft`: :class:`DFTDataset` / :class:`DFTStructure` and their readers (ASE files, phonopy).
- :mod:`.labels`: the label store (teacher energies, forces, stress, Hessian rows).
- :mod:`.error_log`: per-epoch force errors of every training atom (LTAU's input).
- :mod:`.structures`: structures packed as plain arrays and their content hash.
"""
