"""The prepared GPU check: agreement with the CPU, speed against upstream and loops, MD throughput, memory.

One run writes one JSON file (and prints it as the last stdout line):

- ``neighbors``: one neighbour search (5 Å) of 64, 216 and 1,000 Si atoms, matscipy
  on the CPU against vesin on ``--device`` (sorted, as the adapters get them).
- ``agreement``: every family (CHGNet, M3GNet, MACE-MP-0-medium architecture, a
  default student), plain and with a softening layer, on ``--device`` against the
  CPU: max |ΔE|/atom, |ΔF|, |Δσ|. On ``--device cpu`` the device side searches its
  neighbour lists with vesin (the CUDA path's search), the reference with matscipy.
- ``single``: one energy+forces+stress call on 64 atoms, ours against the upstream
  ASE calculator (``bench_calculators.compare_single``).
- ``batched``: 32 x 64-atom structures, one batched evaluation against a loop of
  single calls (``bench_calculators.compare_batched``).
- ``md``: student and CHGNet MD throughput (atom·steps/s) at 1k and 10k atoms:
  ASE VelocityVerlet on one cell, and torch-sim NVE on the same atoms as cells of
  1,000 atoms evaluated together (one system at 1k, ten at 10k; --quick: 64-atom cells).
- ``memory``: peak CUDA memory of one energy+forces+stress call at 10k atoms.

    python benchmarks/gpu_suite.py --device cuda --json benchmarks/results/gpu_suite_h100.json
    python benchmarks/gpu_suite.py --device cpu --quick    # CPU check: sizes 64/216, 8 structures, 3 steps

Each section catches its own failure (recorded as ``{"error": ...}``) so that one
missing package or model does not cost the rest of a GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calculators import SHARED, compare_batched, compare_single, make_pair  # noqa: E402

FAMILIES = ("chgnet", "m3gnet", "mace-medium", "student")
#: --quick on a CPU: the small test MACE instead of the medium architecture, fewer models timed
QUICK = {"families": ("chgnet", "m3gnet", "mace-small", "student"), "single": ("chgnet", "m3gnet"), "batched": ("chgnet", "student")}


def si(n_rep: int, seed: int = 0):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (n_rep, n_rep, n_rep)
    atoms.rattle(0.05, seed=seed)
    return atoms


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def adapter_for(name: str, device: str):
    from mlff_calc.models.student import StudentAdapter

    if name == "student":
        return StudentAdapter.create([14], device=device, dtype="float32")
    if name == "mace-small":
        from mlff_calc.models.mace import MACEAdapter
        from mlff_calc.models.mace_build import build_small_mace

        return MACEAdapter(build_small_mace(), model_id="mace-small-test", device=device, dtype="float32")
    if name == "m3gnet" and not (SHARED / "models" / "M3GNet-MP-2021.2.8-PES").is_dir():
        raise FileNotFoundError(f"M3GNet weights absent under {SHARED / 'models'} (set MLFF_CALC_SHARED)")
    ours, _upstream = make_pair(name, device)
    return ours.adapter


def softening(adapter):
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.layers.softening import SofteningLayer

    layer = SofteningLayer(1.2)
    try:
        layer.bind(adapter)
    except ConfigurationError:
        layer = SofteningLayer(1.2, mode="total")
    return [layer]


def agreement(device: str, quick: bool) -> dict:
    from mlff_calc.calculator import MLFFCalculator

    frames = [si(2, seed=1), si(1, seed=2)]
    props = ("energy", "forces", "stress")
    out = {}
    for name in QUICK["families"] if quick else FAMILIES:
        try:
            ref_adapter = adapter_for(name, "cpu")
            dev_adapter = adapter_for(name, device)  # the same weights: loaded, or built from a fixed seed
            if device == "cpu":
                dev_adapter.neighbor_backend = "vesin"
            for layer_name, make in (("plain", lambda a: []), ("softening", softening)):
                ref = MLFFCalculator(ref_adapter, make(ref_adapter)).evaluate(frames, props)
                got = MLFFCalculator(dev_adapter, make(dev_adapter)).evaluate(frames, props)
                out[f"{name}/{layer_name}"] = {
                    "dE_per_atom_eV": max(abs(g["energy"] - r["energy"]) / len(a) for g, r, a in zip(got, ref, frames)),
                    "dF_eV_per_A": max(float(np.abs(g["forces"] - r["forces"]).max()) for g, r in zip(got, ref)),
                    "dstress_eV_per_A3": max(float(np.abs(g["stress"] - r["stress"]).max()) for g, r in zip(got, ref)),
                }
        except Exception as exc:  # recorded; the suite goes on
            out[name] = failure(exc)
    return out


def neighbors(device: str, quick: bool) -> dict:
    """Neighbour search at the native cutoffs' scale (5 Å): matscipy on the CPU against vesin on ``device``."""
    from mlff_calc.neighbors import device_neighbor_list, neighbor_list

    def median_ms(fn, repeats=20):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times))

    out = {}
    for n_rep in (2, 3, 5):
        atoms = si(n_rep)
        matscipy = median_ms(lambda: neighbor_list(atoms, 5.0))
        vesin = median_ms(lambda: device_neighbor_list(atoms, 5.0, device, backend="vesin"))
        out[str(len(atoms))] = {"matscipy_cpu_ms": matscipy, f"vesin_{device}_ms": vesin, "pairs": int(len(neighbor_list(atoms, 5.0)[0]))}
    return out


def single(device: str, quick: bool) -> dict:
    out = {}
    for name in QUICK["single"] if quick else ("chgnet", "m3gnet", "mace-medium"):
        try:
            ours, upstream = make_pair(name, device)
            out[name] = compare_single(ours, upstream, 2, 3 if quick else 10)
        except Exception as exc:
            out[name] = failure(exc)
    return out


def batched(device: str, quick: bool) -> dict:
    from mlff_calc.calculator import MLFFCalculator

    out = {}
    for name in QUICK["batched"] if quick else FAMILIES:
        try:
            calc = MLFFCalculator(adapter_for(name, device))
            res = compare_batched(calc, 8 if quick else 32, 2 if quick else 5)
            res["bytes_per_edge_measured"] = getattr(calc.adapter, "_measured_bytes_per_edge", None)  # CUDA only
            out[name] = res
        except Exception as exc:
            out[name] = failure(exc)
    return out


def ase_md(adapter, atoms, steps: int) -> float:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from mlff_calc.calculator import MLFFCalculator

    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(adapter)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.run(1)  # warm-up
    sync()
    t = time.perf_counter()
    dyn.run(steps)
    sync()
    return len(atoms) * steps / (time.perf_counter() - t)


def torchsim_md(adapter, systems, steps: int) -> float:
    import torch_sim as ts

    from mlff_calc.torchsim import TorchSimModel

    model = TorchSimModel(adapter, compute_stress=False)
    state = ts.io.atoms_to_state(systems, adapter.device, adapter.dtype)
    units = ts.units.MetalUnits  # time in ps
    init_fn, step_fn = ts.nve(
        model=model, dt=torch.tensor(0.001 * units.time, dtype=adapter.dtype, device=adapter.device), kT=torch.tensor(300 * units.temperature, dtype=adapter.dtype, device=adapter.device), seed=0
    )
    state = step_fn(init_fn(state))  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        state = step_fn(state)
    sync()
    return sum(len(a) for a in systems) * steps / (time.perf_counter() - t)


def md(device: str, quick: bool) -> dict:
    # quick: 64 and 216 atoms stand in for 1k and 10k
    sizes = {"1k": (2, 1), "10k": (3, 3)} if quick else {"1k": (5, 1), "10k": (11, 10)}
    steps = 3 if quick else 20
    out = {}
    for name in ("student", "chgnet"):
        adapter = None
        for label, (n_rep, n_sys) in sizes.items():
            key = f"{name}/{label}"
            try:
                adapter = adapter or adapter_for(name, device)
                big = si(n_rep)
                cells = [si(n_rep if n_sys == 1 else (2 if quick else 5), seed=k) for k in range(n_sys)]
                out[key] = {
                    "ase_atoms": len(big),
                    "ase_atom_steps_per_s": ase_md(adapter, big, steps),
                    "torchsim_systems": n_sys,
                    "torchsim_atoms": sum(len(a) for a in cells),
                    "torchsim_atom_steps_per_s": torchsim_md(adapter, cells, steps),
                    "steps": steps,
                }
            except Exception as exc:
                out[key] = failure(exc)
    return out


def memory(device: str, quick: bool) -> dict:
    if not device.startswith("cuda"):
        return {"skipped": "peak GPU memory needs a CUDA device"}
    out = {}
    atoms = si(11)
    for name in FAMILIES:
        try:
            adapter = adapter_for(name, device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            adapter.evaluate([atoms], ("energy", "forces", "stress"))
            sync()
            out[name] = {"n_atoms": len(atoms), "peak_MiB": (torch.cuda.max_memory_allocated() - base) / 2**20}
        except Exception as exc:
            out[name] = failure(exc)
            torch.cuda.empty_cache()
    return out


def failure(exc: Exception) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "where": traceback.format_exc(limit=-2).splitlines()[-3:]}


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torch-sim-atomistic", "vesin-torch", "chgnet", "matgl", "mace-torch"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU check (<= 3 min)")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/gpu_suite_<device>[_quick].json)")
    parser.add_argument("--sections", nargs="*", default=["neighbors", "agreement", "single", "batched", "md", "memory"])
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)  # a shared CPU: one thread, as the other benchmarks
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_suite: CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    sections = {"neighbors": neighbors, "agreement": agreement, "single": single, "batched": batched, "md": md, "memory": memory}
    result = {"device": args.device, "quick": args.quick, "machine": machine(args.device), "seconds": {}}
    for name in args.sections:
        t = time.perf_counter()
        result[name] = sections[name](args.device, args.quick)
        result["seconds"][name] = round(time.perf_counter() - t, 1)
        print(f"# {name}: {result['seconds'][name]} s", file=sys.stderr)
    path = Path(args.json or Path(__file__).parent / "results" / f"gpu_suite_{args.device.replace(':', '')}{'_quick' if args.quick else ''}.json")
    from mlff_calc.artifacts import write_json

    write_json(path, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
