"""Bad input stops ``mlff-calc`` before any work: exit 2, one line naming the problem, no traceback.

No test here loads a model: ``load_calculator`` and ``mlff_calc.load`` are replaced by
mocks that count their calls, so "nothing was computed" is checked by count, not by time.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

import mlff_calc
from mlff_calc import _runtime
from mlff_calc.cli import options
from mlff_calc.cli.main import build_parser, main
from mlff_calc.cli.types import Number, ase_index, device, index_list


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("si.extxyz", bulk("Si", "diamond", 5.43))
    return tmp_path


@pytest.fixture
def loads(monkeypatch):
    """Counts of model loads; a load that happens anyway fails the test loudly."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded although the input was bad")

    monkeypatch.setattr(options, "load_calculator", refuse)
    monkeypatch.setattr(mlff_calc, "load", refuse)
    return calls


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# numeric options --------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("relax si.extxyz --symprec -1", "--symprec"),
    ("relax si.extxyz --symprec nan", "--symprec"),
    ("relax si.extxyz --steps 2.7", "--steps"),
    ("relax si.extxyz --fmax 0", "--fmax"),
    ("relax si.extxyz --pressure-GPa nan", "--pressure-GPa"),
    ("md si.extxyz --supercell 0 1 1", "--supercell"),
    ("md si.extxyz --supercell -2 2 2", "--supercell"),
    ("md si.extxyz --temperature-K nan", "--temperature-K"),
    ("md si.extxyz --temperature-K inf", "--temperature-K"),
    ("md si.extxyz --temperature-K -10", "--temperature-K"),
    ("md si.extxyz --friction-per-fs -0.01", "--friction-per-fs"),
    ("md si.extxyz --tdamp-fs 0", "--tdamp-fs"),
    ("md si.extxyz --pdamp-fs 0", "--pdamp-fs"),
    ("md si.extxyz --timestep-fs 0", "--timestep-fs"),
    ("md si.extxyz --pressure-GPa nan", "--pressure-GPa"),
    ("md si.extxyz --log-interval 0", "--log-interval"),
    ("md si.extxyz --traj-interval -5", "--traj-interval"),
    ("md si.extxyz --restart-interval 0", "--restart-interval"),
    ("md si.extxyz --threads 0", "--threads"),
    ("phonons si.extxyz --mesh 0 8 8", "--mesh"),
    ("phonons si.extxyz --supercell 0 2 2", "--supercell"),
    ("phonons si.extxyz --supercell 1 1 1 1 1 1 1 1 0", "--supercell"),
    ("phonons si.extxyz --supercell 2 2", "--supercell"),
    ("phonons si.extxyz --t-step-K 0", "--t-step-K"),
    ("phonons si.extxyz --batch-size 0", "--batch-size"),
    ("phonons si.extxyz --displacement 0", "--displacement"),
    ("surface si.extxyz --miller 0 0 0", "--miller"),
    ("surface si.extxyz --layers 0", "--layers"),
    ("singlepoint si.extxyz --batch-size 0", "--batch-size"),
    ("defect si.extxyz --supercell 3 0 3", "--supercell"),
    ("eos si.extxyz --points 3", "--points"),
    ("eos si.extxyz --strain-range 1.5", "--strain-range"),
    ("relax si.extxyz --index 1:x", "--index"),
    ("relax si.extxyz --index last", "--index"),
    ("singlepoint si.extxyz --index ::0", "--index"),
    ("relax si.extxyz --device gpu", "--device"),
    ("relax si.extxyz --device cuda:one", "--device"),
    ("screen relax si.extxyz --workers 0", "--workers"),
    ("screen phonons si.extxyz --mesh 4 0 4", "--mesh"),
    ("distill sample si.extxyz --split 0.5 0.5 0.5", "--split"),
    ("distill train labels --epochs 0", "--epochs"),
    ("ltau build run --level 1", "--level"),
    ("ttt adapt si.extxyz --out a --lr -1", "--lr"),
    ("db query x.db --limit -1", "--limit"),
]


@pytest.mark.parametrize("argv, option", BAD_OPTIONS, ids=[a for a, _ in BAD_OPTIONS])
def test_bad_option_exits_2_with_one_line(work, capsys, loads, argv, option):
    code, err = run_cli(capsys, argv.split())
    assert code == 2
    assert_one_line(err, f"argument {option}:", "error:")
    assert loads == []


def test_usage_errors_are_one_line_too(work, capsys):
    code, err = run_cli(capsys, ["relax"])
    assert code == 2
    assert_one_line(err, "mlff-calc relax: error: the following arguments are required: structure")


def test_every_numeric_option_is_checked():
    """No option of any verb parses with a bare int or float; every --index and --device is checked."""
    parser = build_parser()

    def walk(p, prog):
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):  # sub-commands
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{prog} {name}")
            elif action.option_strings:
                yield prog, action

    seen = 0
    for prog, action in walk(parser, "mlff-calc"):
        flag = action.option_strings[-1]
        assert action.type not in (int, float), f"{prog} {flag} parses with a bare {action.type.__name__}"
        if flag == "--index" and action.choices is None:
            assert action.type in (ase_index, index_list), f"{prog} {flag}"
        if flag == "--device":
            assert action.type is device, f"{prog} {flag}"
        seen += isinstance(action.type, Number)
    assert seen > 80


def test_number_type():
    assert Number(int, 1)("3") == 3 and Number(int, 1)(3) == 3 and Number(int)(4.0) == 4
    assert Number(float, 0, lo_open=True)("1e-3") == pytest.approx(1e-3)
    for bad in ("2.7", 2.7, "abc", True, "nan", float("inf"), [1]):
        with pytest.raises(Exception, match="must be"):
            Number(int)(bad)
    assert ase_index(-1) == "-1" and ase_index("0:10:2") == "0:10:2" and ase_index(":") == ":"
    assert index_list("0") == [0] and index_list("0, 3") == [0, 3]
    for bad in ("-1", "0,", "a", "1:2", True):
        with pytest.raises(Exception, match="must be"):
            index_list(bad)


# --config -------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ("relax", 'fixed_cell: "no"\n', "fixed_cell"),
    ("relax", "fixed_cell: 1\n", "fixed_cell"),
    ("relax", "steps: 2.7\n", "steps"),
    ("relax", "steps: abc\n", "steps"),
    ("relax", "symprec: -1\n", "symprec"),
    ("relax", "optimizer: SGD\n", "optimizer"),
    ("relax", "device: gpu\n", "device"),
    ("relax", "index: [1, 2]\n", "index"),
    ("md", "supercell: [0, 1, 1]\n", "supercell"),
    ("md", "supercell: [2, 2]\n", "supercell"),
    ("md", "temperature_K: .nan\n", "temperature_K"),
    ("md", "ensemble: nvt-berendsen\n", "ensemble"),
    ("surface", "miller: [0, 0, 0]\n", "miller"),
    ("phonons", "t_step_K: 0\n", "t_step_K"),
]


@pytest.mark.parametrize("verb, text, key", BAD_CONFIGS, ids=[f"{v}-{t.strip()}" for v, t, _ in BAD_CONFIGS])
def test_bad_config_value_exits_2_naming_the_key(work, capsys, loads, verb, text, key):
    (work / "c.yml").write_text(text)
    code, err = run_cli(capsys, [verb, "si.extxyz", "--config", "c.yml"])
    assert code == 2
    assert_one_line(err, f"mlff-calc {verb}: error: config c.yml: {key}")
    assert loads == []


def test_config_values_are_converted_like_flags(work):
    (work / "c.yml").write_text("steps: 3\nfixed_cell: true\nfmax: 1\nindex: 0\nout_dir: o\n")
    args = build_parser().parse_args(["relax", "si.extxyz", "--config", "c.yml", "--steps", "7"])
    args = options.apply_config(args, args._parser)
    assert args.steps == 7  # the command line wins
    assert args.fixed_cell is True and args.fmax == 1.0 and isinstance(args.fmax, float)
    assert args.index == "0" and str(args.out_dir) == "o"
    (work / "c.yml").write_text("supercell: [2, 2, 1]\ntemperature_K: 600\n")
    args = build_parser().parse_args(["md", "si.extxyz", "--config", "c.yml"])
    args = options.apply_config(args, args._parser)
    assert args.supercell == [2, 2, 1] and args.temperature_K == 600.0


# outputs checked before the work ------------------------------------------------------------------


def test_output_folder_under_a_file_stops_before_the_model_loads(work, capsys, loads):
    (work / "blocker").write_text("not a folder")
    code, err = run_cli(capsys, ["relax", "si.extxyz", "--out-dir", "blocker/run"])
    assert code == 2
    assert_one_line(err, "--out-dir blocker/run", "is a file, not a folder")
    assert loads == []


def test_read_only_output_folder_stops_before_the_fit(work, capsys, loads, monkeypatch):
    """The softening fit is never computed when its --out cannot be written (mkstemp fails as on a read-only mount)."""
    (work / "ro").mkdir()
    write("dft.extxyz", bulk("Si", "diamond", 5.43))
    real = options.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).endswith("ro"):
            raise PermissionError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(options.tempfile, "mkstemp", mkstemp)
    code, err = run_cli(capsys, ["softening", "fit", "--dft", "dft.extxyz", "--out", "ro/fit.json"])
    assert code == 2
    assert_one_line(err, "--out ro/fit.json", "Read-only file system")
    assert loads == []


def test_full_disk_names_the_file(work, capsys, monkeypatch):
    """ENOSPC while an output is written: exit 2 and the output's name, not the temporary's, and no traceback."""

    class Constant:  # a stand-in calculator: this test is about the writing, not the model
        def evaluate(self, frames, properties):
            return [{"energy": -1.0, "forces": np.zeros((len(a), 3)), "stress": np.zeros(6)} for a in frames]

    monkeypatch.setattr(options, "load_calculator", lambda *a, **k: Constant())

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mlff_calc.artifacts.os.fsync", fsync)
    code, err = run_cli(capsys, ["singlepoint", "si.extxyz", "--out-dir", "out"])
    assert code == 2
    assert_one_line(err, "mlff-calc singlepoint: error: ", "si-results.extxyz", "No space left on device")
    assert not list((work / "out").glob(".*tmp"))


# databases ----------------------------------------------------------------------------------------


def make_ase_db(path, n=40):
    import ase.db

    db = ase.db.connect(str(path))
    for k in range(n):
        db.write(bulk("Si", "diamond", 5.43 + 0.01 * k), job="j", index=k, status="done", data={"blob": np.arange(200.0) + k})
    return path


@pytest.mark.parametrize("kind", ["empty", "foreign", "text", "truncated"])
@pytest.mark.parametrize("action", ["query", "jobs"])
def test_db_refuses_files_that_are_not_results_databases_and_leaves_them_unchanged(work, capsys, kind, action):
    path = work / f"{kind}.db"
    if kind == "empty":
        path.touch()
    elif kind == "foreign":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE notes (x TEXT)")
        con.execute("INSERT INTO notes VALUES ('mine')")
        con.commit()
        con.close()
    elif kind == "text":
        path.write_text("hello\n" * 100)
    else:
        make_ase_db(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    code, err = run_cli(capsys, ["db", action, path.name])
    assert code == 2
    assert_one_line(err, "mlff-calc db: error: ", path.name)
    assert path.read_bytes() == before


def test_db_query_on_an_intact_database_still_works(work, capsys):
    make_ase_db(work / "ok.db", n=3)
    assert main(["db", "query", "ok.db", "--columns", "index,status"]) == 0
    assert "3 row(s)" in capsys.readouterr().out


def test_screen_on_a_damaged_database_stops_before_the_model_loads(work, capsys, loads):
    make_ase_db(work / "r.db")
    data = (work / "r.db").read_bytes()
    (work / "r.db").write_bytes(data[: len(data) // 2])
    code, err = run_cli(capsys, ["screen", "singlepoint", "si.extxyz", "--db", "r.db"])
    assert code == 2
    assert_one_line(err, "r.db")
    assert loads == []


# structures -----------------------------------------------------------------------------------------

PARTIAL_CIF = """data_FeNiO
_cell_length_a 4.2
_cell_length_b 4.2
_cell_length_c 4.2
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe1 Fe 0.0 0.0 0.0 0.5
Ni1 Ni 0.0 0.0 0.0 0.5
O1 O 0.5 0.5 0.5 1.0
"""


def test_partial_occupancy_cif_is_refused(work, capsys, loads):
    (work / "mixed.cif").write_text(PARTIAL_CIF)
    code, err = run_cli(capsys, ["singlepoint", "mixed.cif"])
    assert code == 2
    assert_one_line(err, "mixed.cif has partially occupied sites", "Fe 0.5")
    assert loads == []


def test_ordered_cif_is_read(work):
    write("si.cif", bulk("Si", "diamond", 5.43, cubic=True))
    atoms = options.read_structure("si.cif")
    assert len(atoms) == 8 and atoms.get_chemical_formula() == "Si8"


# threads ----------------------------------------------------------------------------------------------


def test_default_threads_one_for_small_cells(monkeypatch):
    monkeypatch.setattr(options.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(options.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _runtime.default_threads(None) == 1
    assert _runtime.default_threads(16) == 1
    assert _runtime.default_threads(2 * _runtime.ATOMS_PER_THREAD - 1) == 1
    assert _runtime.default_threads(4000) == _runtime.MAX_DEFAULT_THREADS == 2
    monkeypatch.setattr(options.os, "getloadavg", lambda: (1.5, 1.0, 1.0))  # the other core is busy
    assert _runtime.default_threads(4000) == 1


def test_load_calculator_sets_the_default_threads(work, monkeypatch):
    calls = []
    monkeypatch.setattr(options, "set_threads", lambda n: calls.append(n) or {})
    monkeypatch.setattr(mlff_calc, "load", lambda *a, **k: object())
    args = build_parser().parse_args(["relax", "si.extxyz"])
    options.load_calculator(args, n_atoms=16)
    args = build_parser().parse_args(["relax", "si.extxyz", "--threads", "3"])
    options.load_calculator(args, n_atoms=16)
    assert calls == [1, 3]


def test_distill_train_defaults_to_one_thread(work, monkeypatch, capsys):
    import mlff_calc.distill
    from mlff_calc.errors import ConfigurationError

    calls = []
    monkeypatch.setattr(options, "set_threads", lambda n: calls.append(n) or {})

    def stop(*args, **kwargs):
        raise ConfigurationError("stopped before training")

    monkeypatch.setattr(mlff_calc.distill, "train_student", stop)
    (work / "labels").mkdir()
    assert main(["distill", "train", "labels", "--out-dir", "out"]) == 2
    assert calls == [1]


def test_db_query_needs_no_writable_folder(work, capsys, monkeypatch):
    """``db`` only reads: a read-only folder holding the database is fine."""
    make_ase_db(work / "ok.db", n=2)

    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(options.tempfile, "mkstemp", mkstemp)
    assert main(["db", "query", "ok.db"]) == 0
    assert "2 row(s)" in capsys.readouterr().out


def test_console_exit_code_is_2_for_a_bad_symprec(work):
    """Through the real entry point: ``--symprec -1`` used to reach spglib (a segfault after the relaxation)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mlff_calc.cli.main", "relax", "si.extxyz", "--symprec", "-1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(mlff_calc.__file__).parents[1])},
    )
    assert out.returncode == 2
    assert_one_line(out.stderr, "argument --symprec: must be a number > 0, got '-1'")


def test_os_error_without_a_file_name_names_the_output_folder():
    from mlff_calc.cli.main import describe_os_error

    full = OSError(errno.ENOSPC, "No space left on device")
    assert describe_os_error(full, Path("run/md")) == "No space left on device (while writing in run/md)"
    assert describe_os_error(OSError(errno.EACCES, "Permission denied", "run/x.json")) == "run/x.json: Permission denied"
