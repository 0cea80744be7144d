"""``mlff-calc phonons``: harmonic phonons with phonopy as the engine.

    mlff-calc phonons si-prim.cif --supercell 3 3 3
    mlff-calc phonons --reference ../shared/data/phonopy/NaCl          # the reference's own displacements
    mlff-calc phonons nacl.cif --supercell 2 2 2 --reference DIR       # our cell, reference bands overlaid

``--reference`` is a folder (``phonopy_params*.yaml``, or ``phonopy_disp.yaml`` with
``FORCE_SETS``; a ``BORN`` beside them adds the non-analytical correction) or a
yaml file with those files beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

from .types import (
    INT,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    Checked,
    Number,
    supercell_repeats,
)

HELP = "phonon bands, DOS and thermal properties (phonopy), optionally against a DFT reference"


def add_arguments(p) -> None:
    from .options import add_model_options, add_output_options, add_structure_argument

    add_structure_argument(p, nargs="?", default=None, help="unit cell (any ASE-readable file); optional with --reference, which then supplies cell and displacements")
    p.add_argument(
        "--supercell",
        type=INT,
        action=Checked,
        check=supercell_repeats,
        nargs="+",
        default=[2, 2, 2],
        metavar="N",
        help="3 integers or a 3x3 matrix (9 integers, row by row) in the basis of the input cell; default: 2 2 2",
    )
    p.add_argument("--displacement", type=POSITIVE, default=0.01, help="finite-displacement amplitude, in Å; default: 0.01")
    p.add_argument("--primitive-matrix", default="auto", help="phonopy primitive matrix: auto, P, F, I, ... ; default: auto")
    p.add_argument("--born", type=Path, default=None, help="phonopy BORN file: non-analytical correction for polar crystals")
    p.add_argument("--reference", type=Path, default=None, help="DFT phonopy reference (folder or yaml): its bands and DOS are drawn dashed")
    p.add_argument("--mesh", type=POSITIVE_INT, nargs=3, default=[20, 20, 20], metavar="N", help="q-mesh for DOS and thermal properties; default: 20 20 20")
    p.add_argument("--band-npoints", type=Number(int, 2), default=51, help="q-points per band segment; default: 51")
    p.add_argument("--t-max-K", type=NON_NEGATIVE, default=1000.0, help="highest temperature of the thermal properties, in K; default: 1000")
    p.add_argument("--t-step-K", type=POSITIVE, default=10.0, help="temperature step of the thermal properties, in K; default: 10")
    p.add_argument("--subtract-residual-forces", action="store_true", help="subtract the forces on the undisplaced supercell (when the input is not the model's equilibrium)")
    p.add_argument("--symmetrize-fc", action="store_true", help="symmetrise the force constants")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="displaced supercells per forward pass; default: 32")
    add_model_options(p)
    add_output_options(p, "phonons")


def supercell_matrix(values):
    import numpy as np

    from ..errors import ConfigurationError

    if len(values) == 3:
        return [int(v) for v in values]
    if len(values) == 9:
        return np.asarray(values, dtype=int).reshape(3, 3).tolist()
    raise ConfigurationError(f"--supercell takes 3 or 9 integers, got {len(values)}: {values}")


def bands_dos_plot(wf, path, reference=None, *, title: str | None = None, label: str = "model", reference_label: str = "reference") -> Path:
    """Bands and DOS of a run Phonons workflow, with an optional reference overlay (see ``Phonons.plot_bands``)."""
    return wf.plot_bands(path, reference, label=label, reference_label=reference_label, title=title, dos=True)


def phonon_results(wf, res) -> dict:
    """Plain numbers of a PhononResult for a summary (thermal properties at 300 K when computed)."""
    return {"formula": wf.atoms.get_chemical_formula(), "n_atoms_unit_cell": len(wf.atoms)} | res.to_dict()


def run(args) -> int:
    import numpy as np

    from ..errors import ConfigurationError
    from ..workflows import UNITS
    from ..workflows.phonons import Phonons, load_phonopy_reference
    from .options import load_calculator, read_structure, show_outputs, write_summary

    started = time.time()
    if args.structure is None and args.reference is None:
        raise ConfigurationError("give a structure file, or --reference with a phonopy dataset to reuse")
    atoms = read_structure(args.structure, args.index) if args.structure is not None else None
    reference = load_phonopy_reference(args.reference) if args.reference is not None else None
    if atoms is not None:
        n_supercell = len(atoms) * abs(round(float(np.linalg.det(np.diag(args.supercell) if len(args.supercell) == 3 else np.reshape(args.supercell, (3, 3))))))
    else:
        n_supercell = len(reference.supercell)
    calc = load_calculator(args, n_atoms=n_supercell)
    kwargs = dict(
        displacement=args.displacement,
        batch_size=args.batch_size,
        subtract_residual_forces=args.subtract_residual_forces,
        symmetrize_fc=args.symmetrize_fc,
        mesh=args.mesh,
        band_npoints=args.band_npoints,
        t_max_K=args.t_max_K,
        t_step_K=args.t_step_K,
    )
    if args.born is not None:
        kwargs["born_file"] = args.born
    if atoms is None:
        stem = args.out_dir / (args.reference.stem if args.reference.is_file() else args.reference.name)
        kwargs.pop("displacement")
        wf = Phonons.from_phonopy_dataset(reference, calc, prefix=stem, **kwargs)
    else:
        stem = args.out_dir / args.structure.stem
        primitive = args.primitive_matrix if args.primitive_matrix in ("auto", "P", "F", "I", "A", "C", "R") else _matrix(args.primitive_matrix)
        wf = Phonons(atoms, calc, supercell_matrix=supercell_matrix(args.supercell), primitive_matrix=primitive, prefix=stem, **kwargs)
    res = wf.run()
    files = wf.output_files
    outputs = {"phonopy": wf.write_yaml(), "bands": wf.write_band_yaml(), "thermal": wf.write_thermal_yaml()}
    outputs["plot"] = bands_dos_plot(wf, files["band_plot"], reference, label=calc.adapter.model_id if hasattr(calc, "adapter") else "model", reference_label="DFT reference")
    results = phonon_results(wf, res)
    if reference is not None:
        wf_ref = _reference_special_points(wf, reference)
        results["reference"] = {"source": str(args.reference), "highest_branch_THz": wf_ref}
    summary = write_summary(args, calc, name="phonons", started=started, outputs=outputs, results=results, units=UNITS | {"free_energy": "kJ/mol", "entropy": "J/K/mol", "heat_capacity": "J/K/mol"})
    print(f"{results['formula']}: {res.n_displacements} displaced supercells of {results['n_atoms_supercell']} atoms{', with NAC' if results['nac'] else ''}")
    print(f"  frequencies {res.min_frequency_THz:.3f} to {res.max_frequency_THz:.3f} THz{'  (imaginary modes!)' if res.has_imaginary_modes else ''}")
    ref_points = results.get("reference", {}).get("highest_branch_THz", {})
    print(f"  {'point':<8} {'highest branch (THz)':>20}" + (f" {'reference (THz)':>16}" if ref_points else ""))
    for name, f in results["highest_branch_THz"].items():
        print(f"  {name:<8} {f:>20.3f}" + (f" {ref_points.get(name, float('nan')):>16.3f}" if ref_points else ""))
    if "thermal_300K" in results:
        th = results["thermal_300K"]
        print(f"  300 K: F = {th['free_energy_kJ_per_mol']:.3f} kJ/mol, S = {th['entropy_J_per_K_per_mol']:.3f} J/K/mol, Cv = {th['heat_capacity_J_per_K_per_mol']:.3f} J/K/mol")
    show_outputs(outputs, summary)
    return 0


def _matrix(text: str):
    from ..errors import ConfigurationError

    try:
        values = [float(eval_fraction(v)) for v in text.replace(",", " ").split()]
    except ValueError as exc:
        raise ConfigurationError(f"--primitive-matrix {text!r}: give auto, a centring letter or 9 numbers ({exc})") from exc
    if len(values) != 9:
        raise ConfigurationError(f"--primitive-matrix {text!r}: give auto, a centring letter or 9 numbers, got {len(values)}")
    return [values[0:3], values[3:6], values[6:9]]


def eval_fraction(text: str) -> float:
    """'1/2' -> 0.5, '0.5' -> 0.5."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _reference_special_points(wf, reference) -> dict[str, float]:
    """The reference's highest branch at our band path's labelled points."""
    from ..workflows.phonons import _reference_bands, special_point_frequencies

    res = wf.result
    return special_point_frequencies(res.band_labels, _reference_bands(reference, wf.phonon, res), res.band_path_connections)
