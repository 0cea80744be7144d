"""Peak memory and wall time of one energy+forces+stress call on large Si supercells.

Each case (model x size) runs in a fresh subprocess, so ``ru_maxrss`` is that
case's own peak. The child limits its address space (``RLIMIT_AS``) so that a
case too big for the machine fails inside Python (MemoryError or torch's
allocator error) instead of being OOM-killed, and the parent stops a case that
runs past ``--timeout-s``; both are recorded, with the peak RSS reached (from
``os.wait4``). Models run in float32 on the CPU; MACE is the MACE-MP-0 medium
architecture with random weights (cost does not depend on weight values).

    python benchmarks/memory.py                              # all models, 1,000 and 10,000 atoms
    python benchmarks/memory.py --models chgnet --sizes 1000 --limit-gb 8
    python benchmarks/memory.py --out mlff_results/memory    # writes memory.json and memory.md

Results are a markdown table (stdout and ``<out>.md``) and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("MLFF_CALC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS = ("chgnet", "m3gnet", "mace-medium")
#: atoms -> repetitions of the 8-atom conventional diamond cell (a = 5.43 Å)
SUPERCELLS = {64: (2, 2, 2), 216: (3, 3, 3), 1000: (5, 5, 5), 2000: (5, 5, 10), 4000: (5, 10, 10), 8000: (10, 10, 10), 10000: (5, 10, 25)}
#: a second (warm) call is timed when the first took less than this
WARM_CALL_MAX_S = 90.0


# --------------------------------------------------------------------------- child


def load_adapter(model: str):
    if model == "chgnet":
        from mlff_calc.models.chgnet import CHGNetAdapter

        return CHGNetAdapter.load(device="cpu")
    if model == "m3gnet":
        from mlff_calc.models.m3gnet import M3GNetAdapter

        return M3GNetAdapter.load(SHARED / "models" / "M3GNet-MP-2021.2.8-PES", device="cpu", model_id="m3gnet-mp-2021.2.8")
    if model == "mace-medium":
        from mlff_calc.models.mace import MACEAdapter
        from mlff_calc.models.mace_build import build_medium_mace

        return MACEAdapter(build_medium_mace(), model_id="mace-mp-0-medium-architecture", device="cpu", dtype="float32")
    raise SystemExit(f"unknown model {model!r}; known: {', '.join(MODELS)}")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(model: str, n_atoms: int, limit_gb: float) -> None:
    """Run one case and print one JSON line; never raises."""
    limit = int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    record = {"model": model, "n_atoms": n_atoms, "limit_gb": limit_gb}
    try:
        import numpy as np
        import torch
        from ase.build import bulk

        from mlff_calc.calculator import MLFFCalculator

        record["torch_threads"] = torch.get_num_threads()
        start = time.perf_counter()
        adapter = load_adapter(model)
        atoms = bulk("Si", "diamond", 5.43, cubic=True) * SUPERCELLS[n_atoms]
        atoms.rattle(0.05, seed=0)
        assert len(atoms) == n_atoms, len(atoms)
        calc = MLFFCalculator(adapter)
        record["load_s"] = round(time.perf_counter() - start, 2)
        record["baseline_rss_mb"] = round(rss_mb(), 1)
        start = time.perf_counter()
        try:
            res = calc.evaluate([atoms], ("energy", "forces", "stress"))[0]
            record["call_s"] = round(time.perf_counter() - start, 2)
            record["status"] = "ok"
            if record["call_s"] < WARM_CALL_MAX_S:
                start = time.perf_counter()
                calc.evaluate([atoms], ("energy", "forces", "stress"))
                record["warm_call_s"] = round(time.perf_counter() - start, 2)
            record["energy_per_atom"] = res["energy"] / n_atoms
            record["finite"] = bool(np.isfinite(res["forces"]).all() and np.isfinite(res["stress"]).all())
        except BaseException as exc:  # noqa: BLE001 - what a user would see is the measurement
            record["call_s"] = round(time.perf_counter() - start, 2)
            record["status"] = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"
        record["peak_rss_mb"] = round(rss_mb(), 1)
        from mlff_calc.neighbors import neighbor_list

        record["edges"] = int(len(neighbor_list(atoms, adapter.cutoff)[0]))
        record["cutoff"] = adapter.cutoff
    except BaseException as exc:  # noqa: BLE001
        record["status"] = f"setup failed: {type(exc).__name__}: {str(exc)[:300]}"
        record["peak_rss_mb"] = round(rss_mb(), 1)
    print("RESULT " + json.dumps(record), flush=True)


# --------------------------------------------------------------------------- parent


def run_case(model: str, n_atoms: int, limit_gb: float, timeout_s: float) -> dict:
    """One case in a fresh process; its peak RSS comes from ``os.wait4`` even if it was stopped."""
    import tempfile

    cmd = [sys.executable, __file__, "--child", model, str(n_atoms), "--limit-gb", str(limit_gb)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    record = json.loads(lines[-1][len("RESULT ") :]) if lines else {"model": model, "n_atoms": n_atoms, "limit_gb": limit_gb}
    if not lines:
        if timed_out:
            record["status"] = f"stopped after {timeout_s:.0f} s (timeout)"
        else:
            last = stderr.strip().splitlines()[-1][:300] if stderr.strip() else "no output"
            record["status"] = f"child exited with code {proc.returncode}: {last}"
    record["process_peak_rss_mb"] = round(usage.ru_maxrss / 1024.0, 1)
    record["peak_rss_mb"] = record.get("peak_rss_mb", record["process_peak_rss_mb"])
    record["wall_s"] = round(wall, 1)
    return record


def markdown(records: list[dict]) -> str:
    head = "| model | atoms | edges | load (s) | first call (s) | warm call (s) | baseline RSS (MB) | peak RSS (MB) | peak - baseline (MB) | MB per 1k atoms | status |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    rows = []
    for r in records:
        peak = r.get("peak_rss_mb")
        base = r.get("baseline_rss_mb")
        delta = round(peak - base, 1) if peak is not None and base is not None else None
        per_k = round(delta / (r["n_atoms"] / 1000), 1) if delta is not None and r.get("status") == "ok" else None
        peak_txt = peak if peak is not None else "-"
        cells = [
            r["model"],
            f"{r['n_atoms']:,}",
            f"{r['edges']:,}" if "edges" in r else "-",
            r.get("load_s", "-"),
            r.get("call_s", "-"),
            r.get("warm_call_s", "-"),
            base or "-",
            peak_txt,
            delta if delta is not None else "-",
            per_k if per_k is not None else "-",
            r.get("status", "?").replace("|", "/"),
        ]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return head + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000], choices=sorted(SUPERCELLS))
    parser.add_argument("--limit-gb", type=float, default=20.0, help="address-space limit of each child (RLIMIT_AS)")
    parser.add_argument("--timeout-s", type=float, default=480.0, help="stop a case after this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "N_ATOMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.limit_gb)
        return 0
    records = []
    for n_atoms in sorted(args.sizes):
        for model in args.models:
            print(f"running {model} with {n_atoms} atoms ...", file=sys.stderr, flush=True)
            record = run_case(model, n_atoms, args.limit_gb, args.timeout_s)
            print(json.dumps(record), file=sys.stderr, flush=True)
            records.append(record)
            if args.out:  # keep partial results if a later case takes the machine down
                write(args.out, records)
    print(markdown(records))
    return 0


def write(out: Path, records: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(), "records": records}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(records))


if __name__ == "__main__":
    sys.exit(main())
