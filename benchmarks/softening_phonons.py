"""Phonons of Si and NaCl (with BORN): raw CHGNet vs CHGNet with the softening layer vs VASP-PBE.

- Si (../shared/data/phonopy/Si): c is fitted on the Si phonopy dataset's OWN displaced
  supercell (its single 16-atom displacement, residual forces) — the same forces the
  phonons are built from, so this is an in-sample fit (no other Si DFT data is here).
- NaCl (../shared/data/phonopy/NaCl, with BORN): c is fitted on the 10 NaCl-rd random-
  displacement supercells (../shared/data/phonopy/NaCl-rd), independent of the phonon set.

Prints the highest phonon branch at Γ / X / L (THz; at Γ without the non-analytical
term) for raw, corrected and VASP, checks the √c relation (corrected / raw frequency
vs √c: exact for Si; for NaCl the BORN non-analytical term is not scaled by c, so the
ratio deviates where it matters), and writes one PNG band plot per system with all
three to --out-dir.

    python benchmarks/softening_phonons.py --out-dir softening_phonons
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PHONOPY = SHARED / "data" / "phonopy"


def fit_for(system: str, calc):
    from mlff_calc.softening import fit_scale, read_phonopy_dataset

    if system == "Si":
        data = read_phonopy_dataset(PHONOPY / "Si" / "phonopy_params_Si.yaml")
        note = "Si phonopy dataset's own displaced supercell (in-sample)"
    else:
        data = read_phonopy_dataset(PHONOPY / "NaCl-rd" / "phonopy_disp.yaml", PHONOPY / "NaCl-rd" / "FORCE_SETS")
        note = "NaCl-rd, 10 random-displacement supercells"
    return fit_scale(calc, data), note


def plot(path: Path, system: str, raw_wf, cor_wf, c: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mlff_calc.workflows.phonons import _band_ticks, _reference_bands

    res_r, res_c = raw_wf.result, cor_wf.result
    vasp = _reference_bands(raw_wf.reference, raw_wf.phonon, res_r)
    fig = Figure(figsize=(6.4, 4.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for series, color, ls, label in (
        (res_r.band_frequencies_THz, "C0", "-", "CHGNet raw"),
        (res_c.band_frequencies_THz, "C2", "-", f"CHGNet × softening (c = {c:.3f})"),
        (vasp, "k", "--", "VASP-PBE"),
    ):
        for k, (d, f) in enumerate(zip(res_r.band_distances, series)):
            lines = ax.plot(d, f, color=color, ls=ls, lw=1.1)
            if k == 0:
                lines[0].set_label(label)
    ticks, names = _band_ticks(res_r)
    for x in ticks:
        ax.axvline(x, color="0.75", lw=0.6)
    ax.axhline(0.0, color="0.75", lw=0.6)
    ax.set_xticks(ticks, names)
    ax.set_xlim(res_r.band_distances[0][0], res_r.band_distances[-1][-1])
    ax.set_ylabel("frequency (THz)")
    ax.set_title(f"{system}: raw vs softening-corrected CHGNet vs VASP-PBE")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def run_system(system: str, folder: str, adapter, out_dir: Path) -> dict:
    import numpy as np

    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.softening import SofteningLayer
    from mlff_calc.workflows.phonons import FCC_POINTS, Phonons

    raw_calc = MLFFCalculator(adapter)
    fit, note = fit_for(system, raw_calc)
    cor_calc = MLFFCalculator(adapter, layers=[SofteningLayer(fit.c, fit=fit)])
    kw = dict(progress=False, mesh=(8, 8, 8), band_npoints=41, prefix=str(out_dir / f"{system}"))
    raw_wf = Phonons.from_reference(PHONOPY / folder, raw_calc, **kw)
    raw_wf.run()
    cor_wf = Phonons.from_reference(PHONOPY / folder, cor_calc, **kw)
    cor_wf.run()
    raw, cor = raw_wf.highest_branch_at(FCC_POINTS), cor_wf.highest_branch_at(FCC_POINTS)
    raw_wf.reference.run_qpoints(np.array(list(FCC_POINTS.values())))
    vasp = dict(zip(FCC_POINTS, raw_wf.reference.qpoints.frequencies.max(axis=1).tolist()))
    # the √c relation on the whole band path
    fr = np.concatenate([np.ravel(f) for f in raw_wf.result.band_frequencies_THz])
    fc = np.concatenate([np.ravel(f) for f in cor_wf.result.band_frequencies_THz])
    mask = fr > 0.5
    ratios = fc[mask] / fr[mask]
    png = out_dir / f"{system}-bands-raw-corrected-vasp.png"
    plot(png, system, raw_wf, cor_wf, fit.c)
    return {
        "system": system,
        "c": fit.c,
        "sqrt_c": float(np.sqrt(fit.c)),
        "fit_source": note,
        "fit_n_components": fit.n_components,
        "nac": raw_wf.phonon.nac_params is not None,
        "raw": raw,
        "corrected": cor,
        "vasp": vasp,
        "ratio_at_points": {k: cor[k] / raw[k] for k in raw},
        "band_ratio_min": float(ratios.min()),
        "band_ratio_max": float(ratios.max()),
        "png": str(png),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("softening_phonons"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not PHONOPY.exists():
        print(f"{PHONOPY} is absent (set MLFF_CALC_SHARED)", file=sys.stderr)
        return 2
    import torch

    from mlff_calc.artifacts import write_json
    from mlff_calc.models.chgnet import CHGNetAdapter

    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    adapter = CHGNetAdapter.load(device="cpu")
    rows = [run_system("Si", "Si", adapter, args.out_dir), run_system("NaCl", "NaCl", adapter, args.out_dir)]
    print("Highest phonon branch (THz) at Γ / X / L, CHGNet 0.3.0; Γ without the non-analytical term\n")
    print("| system | c (fit on) | raw Γ/X/L | corrected Γ/X/L | VASP-PBE Γ/X/L | corrected/raw at Γ/X/L | √c | corrected/raw over band path (f > 0.5 THz) |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda d: " / ".join(f"{d[k]:.2f}" for k in ("G", "X", "L"))  # noqa: E731
    for r in rows:
        ratio = " / ".join(f"{r['ratio_at_points'][k]:.4f}" for k in ("G", "X", "L"))
        print(
            f"| {r['system']}{' (BORN)' if r['nac'] else ''} | {r['c']:.4f} ({r['fit_source']}) | {fmt(r['raw'])} | {fmt(r['corrected'])} | {fmt(r['vasp'])} | {ratio} | {r['sqrt_c']:.4f} | {r['band_ratio_min']:.4f} – {r['band_ratio_max']:.4f} |"
        )
    print()
    for r in rows:
        print(f"{r['system']}: band plot {r['png']}")
    write_json(args.out_dir / "softening_phonons.json", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
