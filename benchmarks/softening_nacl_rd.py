"""Softening acceptance table on VASP-PBE NaCl random displacements (../shared/data/phonopy/NaCl-rd).

Fits the correction scale c on one 64-atom supercell (residual forces: the model's
forces on the undisplaced supercell subtracted), then reports, on the other nine,
the softening scale s, force MAE and cMAE before and after the correction.
CHGNet always; M3GNet-MP-2021.2.8 when mlff_calc.models.m3gnet and the shared model exist.

    python benchmarks/softening_nacl_rd.py --out softening_nacl_rd.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data" / "phonopy" / "NaCl-rd"
M3GNET = SHARED / "models" / "M3GNet-MP-2021.2.8-PES"


def adapters(device: str):
    """(label, adapter) for every model available here."""
    from mlff_calc.models.chgnet import CHGNetAdapter

    yield "CHGNet 0.3.0", CHGNetAdapter.load(device=device)
    try:
        from mlff_calc.models.m3gnet import M3GNetAdapter
    except ImportError as exc:
        print(f"# M3GNet skipped: {exc}", file=sys.stderr)
        return
    if not M3GNET.exists():
        print(f"# M3GNet skipped: {M3GNET} is absent", file=sys.stderr)
        return
    yield "M3GNet-MP-2021.2.8", M3GNetAdapter.load(M3GNET, device=device)


def run_model(label: str, adapter, data, fit_index: int) -> dict:
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.layers.softening import SofteningLayer
    from mlff_calc.softening import fit_scale, measure

    start = time.perf_counter()
    calc = MLFFCalculator(adapter)
    train = data[[fit_index]]
    test = data[[k for k in range(len(data)) if k != fit_index]]
    fit = fit_scale(calc, train)
    fit_plain = fit_scale(calc, train, subtract_reference=False)
    corrected = MLFFCalculator(adapter, layers=[SofteningLayer(fit.c, fit=fit, strict=True)])
    raw, cor = measure(calc, test), measure(corrected, test)
    return {
        "model": label,
        "model_id": adapter.model_id,
        "fit_structure": train.structures[0].label,
        "c": fit.c,
        "c_without_residual_subtraction": fit_plain.c,
        "fit_s": fit.s,
        "fit_n_components": fit.n_components,
        "test_n_components": raw.pooled.n_components,
        "raw": raw.to_dict(),
        "corrected": cor.to_dict(),
        "fit": fit.to_dict(),
        "seconds": time.perf_counter() - start,
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | c (fit on 1 supercell) | c w/o residual subtraction | s raw | s corrected | s (with intercept) raw | MAE raw (meV/Å) | cMAE raw (meV/Å) | MAE corrected (meV/Å) | n test comps |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        raw, cor = r["raw"]["pooled"], r["corrected"]["pooled"]
        lines.append(
            f"| {r['model']} | {r['c']:.4f} | {r['c_without_residual_subtraction']:.4f} | {raw['s']:.4f} | {cor['s']:.4f} | {raw['s_intercept']:.4f} "
            f"| {1e3 * raw['mae']:.2f} | {1e3 * raw['cmae']:.2f} | {1e3 * cor['mae']:.2f} | {r['test_n_components']} |"
        )
    return "\n".join(lines)


def per_structure(rows: list[dict]) -> str:
    lines = ["| model | structure | s raw | MAE raw (meV/Å) | cMAE raw (meV/Å) | MAE corrected (meV/Å) |", "|---|---|---|---|---|---|"]
    for r in rows:
        for raw, cor in zip(r["raw"]["structures"], r["corrected"]["structures"]):
            lines.append(f"| {r['model']} | {raw['label']} | {raw['s']:.4f} | {1e3 * raw['mae']:.2f} | {1e3 * raw['cmae']:.2f} | {1e3 * cor['mae']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--fit-index", type=int, default=0, help="supercell (0-9) the scale is fitted on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"{DATA} is absent (set MLFF_CALC_SHARED)", file=sys.stderr)
        return 2
    import torch

    from mlff_calc.artifacts import write_json
    from mlff_calc.softening import read_phonopy_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    data = read_phonopy_dataset(DATA / "phonopy_disp.yaml", DATA / "FORCE_SETS")
    rows = [run_model(label, adapter, data, args.fit_index) for label, adapter in adapters(args.device)]
    print(f"NaCl-rd (VASP-PBE, 10 x 64-atom supercells, 0.03 Å random displacements): fit on {rows[0]['fit_structure']}, test on the other {len(data) - 1}\n")
    print(markdown(rows))
    print()
    print(per_structure(rows))
    if args.out:
        write_json(args.out, {"dataset": str(DATA), "fit_index": args.fit_index, "results": rows})
        print(f"\nJSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
