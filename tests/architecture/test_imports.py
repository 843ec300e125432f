"""The import graph is a tested contract: the layers, what `pipelines` may not import, no cycle
between modules, and project imports at the top of modules (docs/architecture.md draws it).

The import-linter contracts live in `pyproject.toml`; the cycle and the top-of-module checks
are here, as small functions that are tested on planted examples too.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "keyed_state", "messaging", "serving", "monitoring", "dashboard",
            "evaluation", "flows", "evguard")
# the CLI imports the project inside its commands so that `evguard --help` stays instant;
# each of these modules says so in its docstring
LAZY_IMPORTS_ALLOWED = ("evguard/commands/",)


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages under `project`, with `project`'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other in a circle (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def imports_inside_functions(source: str) -> list[str]:
    """`line: module` of every project import made inside a function body."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{node.lineno}: {m}" for m in modules if m.split(".")[0] in PACKAGES]
    return found


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module, planted, broken", [
    ("pipelines/data/features.py", "import serving.kafka", "pipelines is a library"),
    ("pipelines/contracts/dates.py", "import prefect", "pipelines is a library"),
    ("serving/run.py", "import evguard.services.stack", "Layers of the platform"),
    ("pipelines/data/acn.py", "import pipelines.models.registry", "Layers of pipelines"),
    ("pipelines/models/selection.py", "from pipelines.models import tuning", "No cycle"),
    ("keyed_state/store.py", "import serving.worker", "Layers of the platform"),
    ("pipelines/stations/health.py", "import pipelines.data.features", "Layers of pipelines"),
    ("pipelines/stations/profiles.py", "import keyed_state", "pipelines is a library"),
])
def test_a_planted_forbidden_import_breaks_a_contract(tmp_path, module, planted, broken):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as source:
        source.write(f"\n{planted}  # planted by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout and "BROKEN" in result.stdout


def test_no_module_is_part_of_an_import_cycle():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {module: set(graph.find_modules_directly_imported_by(module))
             for module in graph.modules}
    assert import_cycles(edges) == []


def test_the_cycle_finder_finds_every_cycle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"f"},
             "g": {"h"}, "h": {"i"}, "i": {"g"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["f"], ["g", "h", "i"]]
    assert import_cycles({"x": {"y"}, "y": set()}) == []


def test_project_imports_sit_at_the_top_of_modules():
    inside = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(LAZY_IMPORTS_ALLOWED):
                continue
            found = imports_inside_functions(path.read_text())
            if found:
                inside[relative] = found
    assert inside == {}


def test_the_import_finder_sees_imports_inside_functions_only():
    source = ("import pipelines.settings\nimport numpy\n\n"
              "def f():\n    import numpy\n    from serving import kafka\n\n"
              "class C:\n    async def g(self):\n        import pipelines.data.features\n")
    assert imports_inside_functions(source) == ["6: serving", "10: pipelines.data.features"]
