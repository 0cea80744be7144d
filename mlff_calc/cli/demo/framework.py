"""What the demo's sections share: sizes, the context, tables and the textbook structures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# framework --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSizes:
    """Problem sizes; :data:`QUICK` for tests and CI."""

    relax_fmax_eV_per_A: float = 1e-3
    relax_steps: int = 300
    eos_points: int = 9
    eos_strain_range: float = 0.06
    phonon_supercell: int = 3
    phonon_mesh: int = 20
    band_npoints: int = 51
    md_repeat: int = 2  # conventional 8-atom cell repeated n x n x n
    md_steps: int = 200
    md_timestep_fs: float = 1.0
    md_log_interval: int = 5
    # student: teacher samples of 8-atom Si (MD frames at 600 K, rattles, ±strains), Hessian rows, epochs
    student_md_frames: int = 16
    student_rattles: int = 16
    student_strains: int = 8
    student_hessian_rows: int = 2
    student_epochs: int = 20
    timing_calls: int = 5  # interleaved student/teacher calls on 64-atom Si; the median is reported
    # uncertainty: Langevin MD of the student with the LTAU layer, Si conventional cell repeated n x n x n
    uq_md_repeat: int = 2
    uq_md_steps: int = 100


FULL = DemoSizes()
QUICK = DemoSizes(
    relax_fmax_eV_per_A=2e-3,
    eos_points=7,
    phonon_mesh=8,
    band_npoints=21,
    md_repeat=1,
    md_steps=40,
    md_log_interval=5,
    student_md_frames=8,
    student_rattles=8,
    student_strains=4,
    student_epochs=4,
    timing_calls=3,
    uq_md_repeat=1,
    uq_md_steps=40,
)


@dataclass
class DemoContext:
    """What sections share: options, sizes, the calculator (loaded on first use), results so far."""

    args: object
    sizes: DemoSizes
    out_dir: Path
    results: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    _calc: object = None

    @property
    def calc(self):
        if self._calc is None:
            from ..options import load_calculator

            self._calc = load_calculator(self.args)
        return self._calc

    def add_output(self, key: str, path) -> Path:
        self.outputs[key] = Path(path)
        return Path(path)


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[DemoContext], dict]
    enabled: Callable[[object], bool] = lambda args: True


def print_table(title: str, headers: list[str], rows: list[list], widths: list[int] | None = None) -> None:
    """A plain-text table; floats are printed as given (format them first)."""
    widths = widths or [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(headers, widths))))
    for row in rows:
        print("  ".join(f"{v!s:<{w}}" if i == 0 else f"{v!s:>{w}}" for i, (v, w) in enumerate(zip(row, widths))))


def _f(value, fmt: str = ".3f") -> str:
    return "—" if value is None else format(value, fmt)


# structures -------------------------------------------------------------------------

#: textbook lattice constants (Å) the relaxations start from
START_A = {"Si": ("diamond", 5.43), "NaCl": ("rocksalt", 5.64)}


def primitive(name: str, a: float):
    """The 2-atom fcc primitive cell, vectors (0,½,½)a, (½,0,½)a, (½,½,0)a (the basis of FCC_POINTS)."""
    from ase.build import bulk

    return bulk(name, START_A[name][0], a)


def fcc_lattice_constant(atoms) -> float:
    """Cubic lattice constant of an fcc primitive cell from its volume (a³ = 4 V)."""
    return float((4.0 * atoms.get_volume()) ** (1.0 / 3.0))


def dcdft_lattice_constant(reference: dict | None) -> float | None:
    """Diamond/fcc cubic a from dcdft's volume per atom (8 atoms in diamond's cubic cell)."""
    return None if reference is None else float((8.0 * reference["v0_per_atom_A3"]) ** (1.0 / 3.0))


def _relaxed_a(ctx: DemoContext, name: str) -> float:
    """The relaxed lattice constant when the relax section ran, else the textbook value."""
    return ctx.results.get("relax", {}).get(name, {}).get("a_A", START_A[name][1])


def _section_error(title: str, exc: Exception) -> dict:
    """A failed optional layer (student, LTAU) is reported in its table; the demo goes on."""
    message = f"{type(exc).__name__}: {exc}"
    print_table(title, ["status"], [[f"error: {message}"]])
    return {"error": message}
