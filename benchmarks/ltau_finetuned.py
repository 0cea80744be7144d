"""LTAU-FF quality on a fine-tuned foundation model: CHGNet fine-tuned on VASP NaCl forces.

Data: ../shared/data/phonopy/NaCl-rd, 10 x 64-atom NaCl supercells with 0.03 Å
random displacements and VASP-PBE forces. Split (by supercell):

- fine-tune (``mlff_calc.finetune``, readout only, Adam, cosine) on 0-4, checkpoint
  chosen on 9; its ``error_log.npz`` holds every training atom's force error per epoch;
- ``mlff-calc ltau build`` on the fine-tune folder (exact index of the 320 training
  atoms, the first ``--burn-in`` epochs dropped), calibrated on supercells 8 and 9;
- quality on 5-7 (held out from both): Spearman ρ between predicted
  (``forces_uncertainty``) and actual per-atom force-error norms against VASP, and
  the coverage of the calibrated 90 % interval;
- OOD: AUROC of ``ood_score`` and ``forces_uncertainty`` for the atoms of NaCl cells
  that the training data never showed (rattled by 0.15 Å; compressed by 4 %, rattled
  0.03 Å; expanded by 4 %) against the atoms of the test supercells. No DFT labels
  are needed for these.

    python benchmarks/ltau_finetuned.py --out benchmarks/results/ltau_finetuned.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data" / "phonopy" / "NaCl-rd"
TRAIN, VALID, CALIBRATION, TEST = [0, 1, 2, 3, 4], [9], [8, 9], [5, 6, 7]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ltau_finetuned.json"))
    p.add_argument("--work", type=Path, default=Path("bench_ltau_ft"), help="folder for the fine-tune run and the index")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--trainable", default="readout")
    p.add_argument("--burn-in", type=int, default=10)
    p.add_argument("--n-bins", type=int, default=100)
    p.add_argument("--reuse", action="store_true", help="reuse the fine-tune run in --work")
    return p.parse_args(argv)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def auroc(neg, pos) -> float:
    """P(score of an OOD atom > score of an in-distribution atom), ties counted half."""
    import numpy as np
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))
    n0, n1 = len(neg), len(pos)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def main(argv=None) -> int:
    args = parse(argv)
    if not DATA.exists():
        print(f"{DATA} is absent (set MLFF_CALC_SHARED)", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    import faiss
    import numpy as np
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    from mlff_calc.calculator import MLFFCalculator
    from mlff_calc.cli.main import main as cli
    from mlff_calc.finetune import finetune, load_finetuned
    from mlff_calc.layers.ltau import LTAULayer
    from mlff_calc.models.chgnet import CHGNetAdapter
    from mlff_calc.softening import read_phonopy_dataset

    disp, fsets = DATA / "phonopy_disp.yaml", DATA / "FORCE_SETS"
    data = read_phonopy_dataset(disp, fsets)
    run = args.work / "finetune"
    report: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "split": {"train": TRAIN, "finetune_valid": VALID, "calibration": CALIBRATION, "test": TEST},
        "threads": 1,
    }
    t0 = time.perf_counter()
    if not (args.reuse and (run / "error_log.npz").is_file()):
        result = finetune(CHGNetAdapter.load(device="cpu"), data.subset(TRAIN), data.subset(VALID), trainable=args.trainable, epochs=args.epochs, lr=args.lr, out_dir=run, progress=False)
        report["finetune"] = {
            "seconds": time.perf_counter() - t0,
            "best_epoch": result.metrics["best_epoch"],
            "train_force_mae": result.metrics["after"]["train"]["force_mae"],
            "valid_force_mae": result.metrics["after"]["valid"]["force_mae"],
            "before_valid_force_mae": result.metrics["before"]["valid"]["force_mae"],
        }
        print(f"fine-tuned in {report['finetune']['seconds']:.0f} s: {report['finetune']}", flush=True)
    else:
        m = json.loads((run / "finetune.json").read_text())["metrics"]
        report["finetune"] = {
            "seconds": m["train_time_s"],
            "best_epoch": m["best_epoch"],
            "train_force_mae": m["after"]["train"]["force_mae"],
            "valid_force_mae": m["after"]["valid"]["force_mae"],
            "before_valid_force_mae": m["before"]["valid"]["force_mae"],
            "reused": str(run),
        }

    index = args.work / "ltau"
    cal_spec = f"{disp} + {fsets}[{','.join(map(str, CALIBRATION))}]"
    t0 = time.perf_counter()
    rc = cli(
        [
            "ltau",
            "build",
            str(run),
            "--out",
            str(index),
            "--burn-in",
            str(args.burn_in),
            "--n-bins",
            str(args.n_bins),
            "--calibration",
            cal_spec,
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out-dir",
            str(args.work),
        ]
    )
    if rc:
        return rc
    report["build_s"] = time.perf_counter() - t0
    report["calibration"] = json.loads((args.work / "ltau-build-summary.json").read_text())["results"]["calibration"]

    adapter = load_finetuned(run, device="cpu")
    calc = MLFFCalculator(adapter, layers=[LTAULayer.from_dir(index, tolerance_eV_per_A=0.005)])
    test = data.subset(TEST)
    res = calc.evaluate([s.atoms for s in test.structures], ("energy", "forces"))
    err = np.concatenate([np.linalg.norm(r["forces"] - s.forces, axis=1) for r, s in zip(res, test.structures)])
    pred = np.concatenate([r["forces_uncertainty"] for r in res])
    iv = np.concatenate([r["forces_error_interval"] for r in res])
    ood_test = np.concatenate([r["ood_score"] for r in res])
    report["test"] = {
        "n_atoms": len(err),
        "force_error_mean": float(err.mean()),
        "predicted_mean": float(pred.mean()),
        "spearman_rho": spearman(pred, err),
        "coverage_90": float(np.mean((iv[:, 0] <= err) & (err <= iv[:, 1]))),
        "interval_width_mean": float(np.mean(iv[:, 1] - iv[:, 0])),
    }
    print(json.dumps(report["test"], indent=1), flush=True)

    # diagnostics: other k, the OOD score as a predictor, per element, and the LTAU premise in-sample
    from mlff_calc.artifacts import read_npz
    from mlff_calc.ltau import LTAU

    ltau = LTAU.load(index)
    desc = np.concatenate([r["descriptors"] for r in adapter.evaluate([s.atoms for s in test.structures], ("energy", "forces", "descriptors"))])
    numbers = np.concatenate([s.atoms.numbers for s in test.structures])
    diag = {"spearman_by_k": {}, "spearman_ood_score_vs_error": spearman(ood_test, err)}
    for kk in (1, 5, 10, 20, 50):
        diag["spearman_by_k"][kk] = spearman(ltau.predict(desc, numbers, k=kk).expected, err)
    diag["by_element"] = {
        int(z): {
            "n": int((numbers == z).sum()),
            "error_mean": float(err[numbers == z].mean()),
            "predicted_mean": float(pred[numbers == z].mean()),
            "spearman_rho": spearman(pred[numbers == z], err[numbers == z]),
        }
        for z in np.unique(numbers)
    }
    log = read_npz(run / "error_log.npz", kind="error log")["errors"]
    kept = log[args.burn_in :]
    diag["in_sample"] = {
        "note": "training atoms: does an atom's mean logged error (epochs after burn-in, last one left out) rank its error at the last epoch?",
        "spearman_mean_vs_last_epoch": spearman(kept[:-1].mean(axis=0), kept[-1]),
        "spearman_first_vs_last_kept_epoch": spearman(kept[0], kept[-1]),
        "error_mean_by_epoch": [float(v) for v in log.mean(axis=1)],
    }
    report["diagnostics"] = diag
    print(json.dumps({k: v for k, v in diag.items() if k != "in_sample"} | {"in_sample": {k: v for k, v in diag["in_sample"].items() if k != "error_mean_by_epoch"}}, indent=1), flush=True)

    base = data.reference
    ood_sets = {}
    for name, scale, amp, seed in (("rattled_0.15A", 1.0, 0.15, 1), ("compressed_4pct", 0.96, 0.03, 2), ("expanded_4pct", 1.04, 0.03, 3)):
        atoms = base.copy()
        atoms.set_cell(atoms.cell.array * scale, scale_atoms=True)
        atoms.rattle(amp, seed=seed)
        ood_sets[name] = calc.evaluate([atoms], ("energy", "forces"))[0]
    report["ood_auroc"] = {
        name: {
            "n_atoms": len(r["ood_score"]),
            "ood_score": auroc(ood_test, r["ood_score"]),
            "forces_uncertainty": auroc(pred, r["forces_uncertainty"]),
            "predicted_mean": float(np.mean(r["forces_uncertainty"])),
        }
        for name, r in ood_sets.items()
    }
    print(json.dumps(report["ood_auroc"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
