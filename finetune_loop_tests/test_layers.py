"""The package's import rules: the import-linter contracts in pyproject.toml, and the checks on
the import graph that the contracts cannot express.

Layers, top to bottom: cli -> definitions -> defs -> core.monitor -> core.ship -> core.evaluate ->
core.train -> core.data -> core.common. A layer imports layers below it, never one above; core
never imports dagster (nor any dagster_* package). On top of the contracts: no import cycle
between any two finetune_loop modules; no finetune_loop import inside a function or class body,
under `if TYPE_CHECKING:` or through importlib in core and defs, so no one dodges a cycle or a
layer with a lazy import; and every core module actually imports (a static graph resolves an
import of a missing module to its package and passes it).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "finetune_loop"
# Where finetune_loop imports must stand at module level.
TOP_LEVEL_ONLY_DIRS = (ROOT / PACKAGE / "core", ROOT / PACKAGE / "defs")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # grimp records imports wherever they stand, inside functions too.
    return grimp.build_graph(PACKAGE, cache_dir=None)


@pytest.mark.parametrize("contract", CONTRACTS, ids=[c["id"] for c in CONTRACTS])
def test_import_contract(contract):
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo", "--contract", contract["id"]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"import-linter contract {contract['id']!r} is broken:\n{result.stdout}{result.stderr}", pytrace=False)


def test_core_imports_no_dagster_package():
    """The forbidden contract names the dagster packages one by one (import-linter has no
    `dagster_*`); this catches any other top-level package whose name starts with dagster."""
    graph = grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)
    found = [
        f"{detail['importer']}:{detail['line_number']} imports {imported} ({detail['line_contents']})"
        for module in sorted(graph.find_descendants(f"{PACKAGE}.core"))
        for imported in sorted(graph.find_modules_directly_imported_by(module))
        if imported.split(".")[0].startswith("dagster")
        for detail in graph.get_import_details(importer=module, imported=imported)
    ]
    if found:
        pytest.fail("finetune_loop.core imports dagster packages:\n" + "\n".join(found), pytrace=False)


def _strongly_connected_components(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the direct imports, iterative (no recursion limit on deep chains)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    successors = {module: sorted(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(successors[start]))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    lowlink[module] = min(lowlink[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[module])
            if lowlink[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                components.append(sorted(component))
    return components


def _cycle_through(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, as `a:line -> b` steps."""
    members = set(component)
    start = component[0]
    # Breadth-first from start back to start, inside the component.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        following = []
        for module in frontier:
            for imported in sorted(graph.find_modules_directly_imported_by(module) & members):
                if imported not in previous:
                    previous[imported] = module
                    following.append(imported)
        frontier = following
    path = [start]
    while True:
        path.append(previous[path[-1]])
        if path[-1] == start:
            break
    path.reverse()
    steps = []
    for importer, imported in zip(path, path[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        line = f":{details[0]['line_number']}" if details else ""
        steps.append(f"{importer}{line} -> {imported}")
    return steps


def test_no_import_cycles(graph):
    cycles = [component for component in _strongly_connected_components(graph) if len(component) > 1]
    report = [
        f"cycle between {', '.join(component)}:\n    " + "\n    ".join(_cycle_through(graph, component))
        for component in cycles
    ]
    if cycles:
        pytest.fail("import cycles in finetune_loop:\n" + "\n".join(report), pytrace=False)


def _imports_finetune_loop(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == PACKAGE
    return any(alias.name.split(".")[0] == PACKAGE for alias in node.names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_dynamic_package_import(node: ast.Call) -> bool:
    """importlib.import_module("finetune_loop...") or __import__("finetune_loop..."): invisible to
    the import graph, so invisible to every rule here."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return False
    first = node.args[0]
    return isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.split(".")[0] == PACKAGE


def _deferred_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line: import ...` for each finetune_loop import inside a function, class or lambda body,
    under `if TYPE_CHECKING:`, or done at run time by importlib.import_module / __import__."""
    problems: list[str] = []
    where = path.relative_to(root)

    def visit(node: ast.AST, scope: str | None, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _imports_finetune_loop(node):
            if scope is not None:
                problems.append(f"{where}:{node.lineno}: `{ast.unparse(node)}` inside {scope}")
            elif type_checking:
                problems.append(f"{where}:{node.lineno}: `{ast.unparse(node)}` under `if TYPE_CHECKING:`")
        if isinstance(node, ast.Call) and _is_dynamic_package_import(node):
            problems.append(f"{where}:{node.lineno}: `{ast.unparse(node)}` imports a finetune_loop module at run time")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = scope or f"function {node.name}"
        elif isinstance(node, ast.ClassDef):
            scope = scope or f"class {node.name}"
        elif isinstance(node, ast.Lambda):
            scope = scope or "a lambda"
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, scope, True)
            for child in node.orelse:
                visit(child, scope, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, scope, type_checking)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), None, False)
    return problems


def test_finetune_loop_imports_are_module_level_in_core_and_defs():
    problems = [
        problem
        for directory in TOP_LEVEL_ONLY_DIRS
        for path in sorted(directory.rglob("*.py"))
        for problem in _deferred_imports(path)
    ]
    if problems:
        pytest.fail(
            "finetune_loop imports must stand at module level in core and defs (a lazy import hides a cycle "
            "or an upward import); move the code to the right layer or make the import top-level:\n" + "\n".join(problems),
            pytrace=False,
        )


def test_deferred_import_check_sees_what_it_forbids(tmp_path):
    """The AST check above would pass vacuously if it recognised nothing."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "if TYPE_CHECKING:\n"
        "    from finetune_loop.core.common.spec import TaskSpec\n"
        "def f():\n"
        "    import torch\n"
        "    from finetune_loop.core.data import readers\n"
        "class C:\n"
        "    def m(self):\n"
        "        from . import sibling\n"
        "importlib.import_module('finetune_loop.defs')\n"
    )
    assert _deferred_imports(sample, root=tmp_path) == [
        "sample.py:4: `from finetune_loop.core.common.spec import TaskSpec` under `if TYPE_CHECKING:`",
        "sample.py:7: `from finetune_loop.core.data import readers` inside function f",
        "sample.py:10: `from . import sibling` inside class C",
        "sample.py:11: `importlib.import_module('finetune_loop.defs')` imports a finetune_loop module at run time",
    ]


def test_core_modules_import(graph):
    """Every core module imports. The graph checks read imports statically, and grimp resolves
    `from finetune_loop.core import frontier` (no such module) to the package finetune_loop.core,
    which no contract covers: only importing shows such an import is broken."""
    failures = []
    for module in sorted(graph.find_descendants(f"{PACKAGE}.core")):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import-time failure is the finding
            failures.append(f"{module}: {type(exc).__name__}: {exc}")
    if failures:
        pytest.fail("core modules that do not import:\n" + "\n".join(failures), pytrace=False)
