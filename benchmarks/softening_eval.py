"""Softening corrections chosen by ``correct()`` against the raw model, on data they were not fitted on.

Each method (raw, scalar, per-element, auto) is fitted through the public
``mlff_calc.softening.correct`` on ONE DFT structure (unless stated) and
tested on the others:

- NaCl-rd: fit on supercell 0, test on 1-9 (residual forces, 64 atoms each).
- UiO-66 (CHGNet): fit on train frame 0, test on the other 19 frames (train/valid/test);
  ``--full`` adds the fit on the 18 train frames (test on valid + test) and M3GNet-MP
  and M3GNet-MatPES.
- Si and NaCl phonons (NaCl with BORN) vs VASP, highest branch at Γ / X / L: Si fitted on
  its one phonopy supercell, NaCl on NaCl-rd supercell 0 (``--full`` adds NaCl fitted on
  its phonopy supercell disp-001).
- held-out atoms of every one-structure fit: the CV table of ``correct`` (slabs of atoms).

The highest branch at Γ / X / L comes from the force constants at those q-points, so the
coarser DOS mesh and band sampling of ``--quick`` do not change it.

    python benchmarks/softening_eval.py --quick --out-dir softening_eval

Prints markdown tables; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PHONOPY = SHARED / "data" / "phonopy"
MOF = SHARED / "data" / "mof"
VASP = {"Si": {"G": 15.11, "X": 13.43, "L": 14.33}, "NaCl": {"G": 4.62, "X": 5.26, "L": 6.24}}


def corrected_set(calc, fit_data, out_dir: Path, tag: str) -> tuple[dict, dict]:
    """(method -> corrected calculator for raw / scalar / elements, the summary of auto's choice).

    auto's calculator is the one of the method it chose (the same fit on the same data),
    so its test figures are that method's.
    """
    from mlff_calc.softening.correct import correct

    out = {"raw": calc}
    for method in ("scalar", "elements"):
        out[method] = correct(calc, fit_data, method=method, out=out_dir / f"{tag}-{method}")
    auto = correct(calc, fit_data, method="auto", out=out_dir / f"{tag}-auto")
    return out, auto.parameters["softening_correction"]


def describe(calc) -> str:
    if not calc.layers:
        return "raw"
    d = calc.layers[0].describe()
    if "scales" in d:
        return "per-element " + ", ".join(f"{k} {v:.3f}" for k, v in d["scales"].items())
    return f"scalar c = {d['c']:.3f}"


def force_task(name: str, calc, fit_data, test_data, out_dir: Path) -> dict:
    from mlff_calc.softening import measure

    row = {"task": name, "fit": fit_data.source, "n_fit": len(fit_data), "n_test": len(test_data), "test_mae": {}, "chosen": {}}
    calcs, info = corrected_set(calc, fit_data, out_dir, name)
    for method, c in calcs.items():
        row["test_mae"][method] = measure(c, test_data).pooled.mae
        row["chosen"][method] = describe(c)
    _auto(row, info, ("test_mae", "chosen"))
    row["auto_not_worse_than_raw"] = row["test_mae"]["auto"] <= row["test_mae"]["raw"] * (1 + 1e-9)
    return row


def phonon_task(name: str, system: str, calc, fit_data, out_dir: Path, quick: bool = False) -> dict:
    import numpy as np

    from mlff_calc.workflows.phonons import FCC_POINTS, Phonons

    row = {"task": name, "fit": fit_data.source, "highest_branch_THz": {}, "rel_err": {}, "chosen": {}, "vasp_here": None}
    wfs = {}
    calcs, info = corrected_set(calc, fit_data, out_dir, name)
    for method, c in calcs.items():
        wf = Phonons.from_reference(PHONOPY / system, c, progress=False, mesh=(4, 4, 4) if quick else (8, 8, 8), band_npoints=21 if quick else 41, prefix=str(out_dir / f"{name}-{method}"))
        wf.run()
        wfs[method] = wf
        freqs = wf.highest_branch_at(FCC_POINTS)
        row["highest_branch_THz"][method] = freqs
        row["rel_err"][method] = {k: freqs[k] / VASP[system][k] - 1 for k in freqs}
        row["chosen"][method] = describe(c)
    _auto(row, info, ("highest_branch_THz", "rel_err", "chosen"))
    ref = wfs["raw"].reference
    ref.run_qpoints(np.array(list(FCC_POINTS.values())))
    row["vasp_here"] = dict(zip(FCC_POINTS, ref.qpoints.frequencies.max(axis=1).round(3).tolist()))
    worst = {m: max(abs(v) for v in e.values()) for m, e in row["rel_err"].items()}
    row["max_rel_err"] = worst
    row["auto_not_worse_than_raw"] = worst["auto"] <= worst["raw"]
    row["png"] = str(plot_bands(out_dir / f"{name}-bands.png", system, wfs, row["chosen"]))
    return row


def _auto(row: dict, info: dict, keys) -> None:
    for key in keys:
        row[key]["auto"] = row[key][info["method"]]
    row.update(auto_candidate=info["candidate"], heldout_cv_mae=info["cv_mae"], cv_folds=info["cv_folds"])


def plot_bands(path: Path, system: str, wfs: dict, labels: dict) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mlff_calc.workflows.phonons import _band_ticks, _reference_bands

    raw = wfs["raw"]
    res = raw.result
    series = [(raw.result.band_frequencies_THz, "C0", "-", "CHGNet raw")]
    series += [(wfs[m].result.band_frequencies_THz, col, "-", f"{m}: {labels[m]}") for m, col in (("scalar", "C1"), ("elements", "C2"))]
    series.append((_reference_bands(raw.reference, raw.phonon, res), "k", "--", "VASP-PBE"))
    fig = Figure(figsize=(6.8, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for freqs, color, ls, label in series:
        for k, (d, f) in enumerate(zip(res.band_distances, freqs)):
            lines = ax.plot(d, f, color=color, ls=ls, lw=1.0)
            if k == 0:
                lines[0].set_label(label)
    ticks, names = _band_ticks(res)
    for x in ticks:
        ax.axvline(x, color="0.75", lw=0.6)
    ax.set_xticks(ticks, names)
    ax.set_xlim(res.band_distances[0][0], res.band_distances[-1][-1])
    ax.set_ylabel("frequency (THz)")
    ax.set_title(f"{system}: CHGNet raw / corrected (one supercell) / VASP-PBE")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def mof_frames():
    from mlff_calc.softening import DFTDataset, read_dft_structures

    frames = []
    for name in ("mlip_train.xyz", "mlip_valid.xyz", "mlip_test.xyz"):
        frames += [s for s in read_dft_structures(MOF / name).structures if len(s.atoms) > 1]  # not the isolated atoms
    return DFTDataset(frames, "UiO-66 frames (train, valid, test)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CHGNet, one-structure fits only (the default set)")
    parser.add_argument("--full", action="store_true", help="add the 18-frame UiO-66 fit, M3GNet-MP / MatPES on UiO-66 and NaCl phonons fitted on disp-001")
    parser.add_argument("--out-dir", type=Path, default=Path("softening_eval"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not PHONOPY.exists() or not MOF.exists():
        print(f"{SHARED}/data is absent (set MLFF_CALC_SHARED)", file=sys.stderr)
        return 2
    import torch

    import mlff_calc
    from mlff_calc.softening import read_phonopy_dataset

    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    chgnet = mlff_calc.load("chgnet", device="cpu")
    rd = read_phonopy_dataset(PHONOPY / "NaCl-rd" / "phonopy_disp.yaml", PHONOPY / "NaCl-rd" / "FORCE_SETS")
    si = read_phonopy_dataset(PHONOPY / "Si" / "phonopy_params_Si.yaml")
    mof = mof_frames()
    rows = [
        force_task("nacl_rd", chgnet, rd[[0]], rd[1:], args.out_dir),
        force_task("uio66_chgnet_1frame", chgnet, mof[[0]], mof[1:], args.out_dir),
        phonon_task("si_phonons", "Si", chgnet, si, args.out_dir, quick=not args.full),
        phonon_task("nacl_phonons_rd0", "NaCl", chgnet, rd[[0]], args.out_dir, quick=not args.full),
    ]
    if args.full:
        nacl = read_phonopy_dataset(PHONOPY / "NaCl" / "phonopy_disp.yaml", PHONOPY / "NaCl" / "FORCE_SETS")
        rows.append(phonon_task("nacl_phonons_disp1", "NaCl", chgnet, nacl[[0]], args.out_dir))
        rows.append(force_task("uio66_chgnet_18frames", chgnet, mof[:18], mof[18:], args.out_dir))
        for model in ("m3gnet-mp-2021.2.8", "m3gnet-matpes-pbe-v2025.1"):
            calc = mlff_calc.load(model, device="cpu")
            rows.append(force_task(f"uio66_{model}_1frame", calc, mof[[0]], mof[1:], args.out_dir))
    print("Force MAE (eV/Å) on the test structures; fitted through correct()\n")
    print("| task | fit / test | raw | scalar | per-element | auto (chosen) |\n|---|---|---|---|---|---|")
    for r in rows:
        if "test_mae" in r:
            t = r["test_mae"]
            print(f"| {r['task']} | {r['n_fit']} / {r['n_test']} | {t['raw']:.4f} | {t['scalar']:.4f} | {t['elements']:.4f} | {t['auto']:.4f} ({r['chosen']['auto']}) |")
    print("\nHighest phonon branch (THz) at Γ / X / L vs VASP\n")
    print("| task | raw | scalar | per-element | auto (chosen) | VASP |\n|---|---|---|---|---|---|")
    fmt = lambda d: " / ".join(f"{d[k]:.2f}" for k in ("G", "X", "L"))
    for r in rows:
        if "highest_branch_THz" in r:
            h = r["highest_branch_THz"]
            print(f"| {r['task']} | {fmt(h['raw'])} | {fmt(h['scalar'])} | {fmt(h['elements'])} | {fmt(h['auto'])} ({r['chosen']['auto']}) | {fmt(r['vasp_here'])} |")
    print("\nHeld-out atoms of each one-structure fit (CV of correct, force MAE eV/Å)\n")
    for r in rows:
        if r.get("cv_folds", "").startswith(tuple("0123456789")):
            print(f"- {r['task']}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["heldout_cv_mae"].items()))
    from mlff_calc.artifacts import write_json

    summary = {"benchmark": "softening_eval", "quick": not args.full, "wall_s": round(time.time() - started, 1), "rows": rows}
    write_json(args.out_dir / "softening_eval.json", summary)
    compact = {"benchmark": "softening_eval", "wall_s": summary["wall_s"]}
    for r in rows:
        compact[r["task"]] = {
            k: ({m: round(v, 4) for m, v in r["test_mae"].items()} if k == "test_mae" else {m: round(v, 4) for m, v in r["max_rel_err"].items()}) for k in ("test_mae", "max_rel_err") if k in r
        }
        compact[r["task"]]["auto"] = f"{r['auto_candidate']}: {r['chosen']['auto']}"
        compact[r["task"]]["auto_not_worse_than_raw"] = r["auto_not_worse_than_raw"]
    print(json.dumps(compact))
    return 0


if __name__ == "__main__":
    sys.exit(main())
