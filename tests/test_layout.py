"""The package layout of issue 17, checked: no import cycle, files of bounded size, README import paths alive.

Import contracts (layers, independent methods, nothing imports the CLI) are
checked by ``lint-imports`` (``make lint``, configured in pyproject.toml).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlff_calc"
MAX_LINES = 500
#: split by another change of issue 17 (one module per demo section)
LONG_FILES_PENDING = {"cli/demo.py"}
#: the CLI's layer options import the verbs that import them; removed when layer
#: flags are built by Layer.from_option() (issue 17)
CYCLES_PENDING = {frozenset({"mlff_calc.cli.options", "mlff_calc.cli.ltau", "mlff_calc.cli.rewire", "mlff_calc.cli.ttt"})}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: every strongly connected component of ``graph``."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    out.append(component)
    return out


def test_strongly_connected_finds_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    components = {frozenset(c) for c in strongly_connected(graph)}
    assert frozenset({"a", "b", "c"}) in components and frozenset({"d"}) in components


def test_import_graph_has_no_cycle():
    """Every import counts, including those inside functions (grimp reads them all)."""
    grimp = pytest.importorskip("grimp")
    built = grimp.build_graph("mlff_calc", include_external_packages=False)
    graph = {m: set(built.find_modules_directly_imported_by(m)) for m in built.modules}
    assert len(graph) > 50 and sum(map(len, graph.values())) > 200  # the graph really holds the package
    cycles = [c for c in strongly_connected(graph) if len(c) > 1 or c & graph[next(iter(c))]]
    unexpected = [sorted(c) for c in cycles if not any(c <= pending for pending in CYCLES_PENDING)]
    assert not unexpected, f"import cycles: {unexpected}"


def test_no_file_of_the_package_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONG_FILES_PENDING, long


def _readme_imports():
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith(("from mlff_calc", "import mlff_calc")):
                yield line.split("#")[0].strip()


@pytest.mark.parametrize("line", sorted(set(_readme_imports())))
def test_every_readme_import_path_works(line):
    node = ast.parse(line).body[0]
    if isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
        return
    module = importlib.import_module(node.module)
    for alias in node.names:
        assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}") is not None, f"{line}: {alias.name}"


def test_readme_has_import_lines():
    assert len(set(_readme_imports())) >= 8
