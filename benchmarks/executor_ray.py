"""Local vs Ray executor: bitwise equivalence, speed, and a worker kill plus a driver kill.

1. Equivalence and speed: one teacher labelling job (energies, forces, stress; no
   Hessian rows) of ``--n`` rattled 8-atom Si cells, chunk size ``--chunk-size``,
   run ``--repeats`` times each under the local executor and under Ray with
   ``--workers`` workers, interleaved (local, ray, local, ray, ...). Every chunk
   file of every run is compared array by array with the first local run
   (bitwise). Ray times are with warm workers; cluster start and model loading
   are timed separately.
2. Fault test: the same structures screened (single points) into an SQLite
   results database by a driver subprocess on Ray that SIGKILLs one worker after
   ``--kill-worker-after`` finished chunks and then SIGKILLs itself after
   ``--kill-driver-after``; a second driver restarts the job. Checked: every
   structure exactly once, all done, the chunks of the killed worker retried
   (attempts = 2), results bitwise equal to a local run.

Writes ``benchmarks/results/executor_ray.json``.

    OMP_NUM_THREADS=1 python benchmarks/executor_ray.py --model chgnet
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="chgnet", help="model name or path (default chgnet)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--n", type=int, default=200, help="structures")
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kill-worker-after", type=int, default=3)
    p.add_argument("--kill-driver-after", type=int, default=12)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "executor_ray.json")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--fault-driver", type=Path, default=None, help=argparse.SUPPRESS)  # internal: run one fault-test driver
    p.add_argument("--inject", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def structures(n: int):
    from ase.build import bulk

    out = []
    for k in range(n):
        atoms = bulk("Si", "diamond", 5.40 + 0.002 * (k % 20), cubic=True)
        atoms.rattle(0.04, seed=k)
        out.append(atoms)
    return out


def one_thread():
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


def label_run(cells, calc, folder, executor, chunk_size):
    from mlff_calc.distill import label

    start = time.perf_counter()
    label(cells, calc, folder, chunk_size=chunk_size, hessian_splits=(), executor=executor, progress=False)
    return time.perf_counter() - start


def same_chunks(a: Path, b: Path) -> tuple[bool, int]:
    """Whether every chunk of store ``b`` equals that of ``a`` array by array, and how many chunks."""
    names = sorted(p.name for p in a.glob("labels-*.npz"))
    if names != sorted(p.name for p in b.glob("labels-*.npz")):
        return False, len(names)
    for name in names:
        with np.load(a / name) as x, np.load(b / name) as y:
            if set(x.files) != set(y.files):
                return False, len(names)
            for key in x.files:
                if x[key].dtype != y[key].dtype or x[key].shape != y[key].shape or x[key].tobytes() != y[key].tobytes():
                    return False, len(names)
    return True, len(names)


def equivalence_and_speed(args, work: Path) -> dict:
    import mlff_calc
    from mlff_calc.executors import ModelRecipe
    from mlff_calc.executors.ray import RayExecutor

    cells = structures(args.n)
    calc = mlff_calc.load(args.model, device="cpu", dtype=args.dtype)
    recipe = ModelRecipe.of(calc)
    ray_ex = RayExecutor(workers=args.workers, threads=1)
    t0 = time.perf_counter()
    ray_ex._init()
    t_cluster = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray_ex.start(recipe)
    t_actors = time.perf_counter() - t0
    times = {"local": [], "ray": []}
    reference = None
    identical = []
    for r in range(args.repeats):
        for name, ex in (("local", None), ("ray", ray_ex)):
            folder = work / f"labels-{name}-{r}"
            kwargs = {"executor": ex, "model": recipe} if ex is not None else {"executor": "local"}
            from mlff_calc.distill import label

            start = time.perf_counter()
            label(cells, calc, folder, chunk_size=args.chunk_size, hessian_splits=(), progress=False, **kwargs)
            times[name].append(time.perf_counter() - start)
            if reference is None:
                reference = folder
            else:
                identical.append(same_chunks(reference, folder)[0])
            print(f"{name} run {r}: {times[name][-1]:.2f} s", flush=True)
    ray_ex.close()
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "n_structures": args.n,
        "atoms_per_structure": 8,
        "chunk_size": args.chunk_size,
        "n_chunks": -(-args.n // args.chunk_size),
        "properties": ["energy", "forces", "stress"],
        "bitwise_identical_all_runs": bool(all(identical)),
        "comparisons": len(identical),
        "times_s": times,
        "median_s": med,
        "ray_over_local_wall_time": med["ray"] / med["local"],
        "speedup_ray_vs_local": med["local"] / med["ray"],
        "per_structure_ms": {k: 1e3 * v / args.n for k, v in med.items()},
        "ray_cluster_start_s": t_cluster,
        "ray_workers_start_and_model_load_s": t_actors,
    }


def fault_driver(args) -> None:
    """One driver of the fault test (run as a subprocess): screen into the database, optionally killing things."""
    import logging

    import mlff_calc
    from mlff_calc.executors import ModelRecipe, screen
    from mlff_calc.executors.ray import RayExecutor

    one_thread()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("mlff_calc").addHandler(handler)  # shows "worker died ... retrying it"
    folder = args.fault_driver
    cells = structures(args.n)
    recipe = ModelRecipe.of(mlff_calc.load(args.model, device="cpu", dtype=args.dtype, verify=False))
    ex = RayExecutor(workers=args.workers, threads=1, max_retries=2)
    ex.start(recipe)
    import ray

    log = {"driver_pid": os.getpid(), "worker_pids": list(ex.pids), "session_dir": ray._private.worker._global_node.get_session_dir_path()}
    (folder / f"driver-{os.getpid()}.json").write_text(json.dumps(log))
    if args.inject:
        run, seen = ex.run, []

        def run_with_kills(fn, jobs, model, on_outcome, **kw):
            def hook(outcome):
                on_outcome(outcome)  # written to the database first
                seen.append(outcome.key)
                if outcome.attempts > 1:
                    log.setdefault("retried_chunks_written", []).append(outcome.key)
                    (folder / f"driver-{os.getpid()}.json").write_text(json.dumps(log))
                if len(seen) == args.kill_worker_after:
                    log["killed_worker"] = ex.pids[0]
                    (folder / f"driver-{os.getpid()}.json").write_text(json.dumps(log))
                    os.kill(ex.pids[0], signal.SIGKILL)
                if len(seen) == args.kill_driver_after:
                    os.kill(os.getpid(), signal.SIGKILL)

            return run(fn, jobs, model, hook, **kw)

        ex.run = run_with_kills
    report = screen(cells, "singlepoint", recipe, folder / "results.db", executor=ex, max_structures=args.chunk_size, max_atoms=10**6, progress=False)
    (folder / "restart-report.json").write_text(json.dumps(report.to_dict()))
    ex.close()


def leftover_ray_processes(session_dir: str) -> list[int]:
    """Pids of processes of a Ray session that outlived their SIGKILLed driver."""
    name = Path(session_dir).name
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines() if name in line]


def fault_test(args, work: Path) -> dict:
    import mlff_calc
    from mlff_calc.executors import ResultsDB, screen

    folder = work / "fault"
    folder.mkdir(parents=True, exist_ok=True)
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--model",
        args.model,
        "--n",
        str(args.n),
        "--chunk-size",
        str(args.chunk_size),
        "--workers",
        str(args.workers),
        "--kill-worker-after",
        str(args.kill_worker_after),
        "--kill-driver-after",
        str(args.kill_driver_after),
        "--fault-driver",
        str(folder),
    ]
    if args.dtype:
        base += ["--dtype", args.dtype]
    t0 = time.perf_counter()
    first = subprocess.run([*base, "--inject"], capture_output=True, text=True, check=False)
    t_first = time.perf_counter() - t0
    killed_driver = json.loads(next(folder.glob("driver-*.json")).read_text())
    rows_after_kill = ResultsDB(folder / "results.db").count()
    leftovers = leftover_ray_processes(killed_driver["session_dir"])
    for pid in leftovers:  # our own orphans (raylet, GCS, workers of the killed driver's cluster)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t0 = time.perf_counter()
    second = subprocess.run(base, capture_output=True, text=True, check=False)
    t_second = time.perf_counter() - t0
    restart = json.loads((folder / "restart-report.json").read_text())
    db = ResultsDB(folder / "results.db")
    rows = db.rows()
    keys = [r.key for r in rows]
    attempts = {r.index: r.attempts for r in rows}
    # the same job on the local executor, for a bitwise comparison
    one_thread()
    calc = mlff_calc.load(args.model, device="cpu", dtype=args.dtype)
    screen(structures(args.n), "singlepoint", calc, folder / "local.db", max_structures=args.chunk_size, max_atoms=10**6, progress=False)
    local = {r.index: r for r in ResultsDB(folder / "local.db").rows()}
    identical = all(local[r.index].energy == r.energy and np.array_equal(local[r.index].forces, r.forces) and np.array_equal(local[r.index].stress, r.stress) for r in rows)
    return {
        "first_driver_returncode": first.returncode,
        "first_driver_killed_by_sigkill": first.returncode == -signal.SIGKILL,
        "killed_worker_pid": killed_driver.get("killed_worker"),
        "retried_chunks_written_before_driver_kill": killed_driver.get("retried_chunks_written", []),
        "retry_log_lines": [line for line in first.stderr.splitlines() if "retrying" in line or "replacement" in line],
        "rows_written_before_driver_kill": rows_after_kill,
        "orphan_ray_processes_after_driver_kill": len(leftovers),
        "restart_returncode": second.returncode,
        "restart_skipped": restart["skipped"],
        "restart_done": restart["done"],
        "rows": len(rows),
        "unique_keys": len(set(keys)),
        "all_done": all(r.status == "done" for r in rows),
        "structures_retried_after_worker_kill": sorted(i for i, a in attempts.items() if a > 1),
        "every_item_exactly_once": len(rows) == len(set(keys)) == args.n and sorted(attempts) == list(range(args.n)),
        "bitwise_equal_to_local": bool(identical),
        "first_driver_s": t_first,
        "restart_driver_s": t_second,
        "first_driver_stderr_tail": first.stderr[-800:],
        "restart_stderr_tail": second.stderr[-400:] if second.returncode else "",
    }


def main(argv=None) -> int:
    args = parse(argv)
    if args.fault_driver is not None:
        fault_driver(args)
        return 0
    one_thread()
    import platform

    import ray
    import torch

    work = args.work or Path(tempfile.mkdtemp(prefix="executor_ray-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["python", "benchmarks/executor_ray.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_start": os.getloadavg()},
        "versions": {"ray": ray.__version__, "torch": torch.__version__},
        "model": args.model,
        "device": "cpu",
        "threads_per_process": 1,
        "workers": args.workers,
    }
    print("equivalence and speed ...", flush=True)
    result["labelling"] = equivalence_and_speed(args, work)
    print(json.dumps(result["labelling"], indent=1), flush=True)
    print("fault test ...", flush=True)
    result["fault_test"] = fault_test(args, work)
    result["machine"]["load_average_end"] = os.getloadavg()
    print(json.dumps(result["fault_test"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from mlff_calc.artifacts import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
