"""The layout a newcomer reads: packages by role, no import circles, small modules.

These read the source as text (``ast``), so they hold for code that is never imported
by the suite too.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "tether"
MAX_MODULE_LINES = 650


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for n in ast.walk(node))
    return inside


@cache
def _imports(name: str) -> frozenset[str]:
    """Every module ``name`` imports (at any depth of its code, but not for type checking)."""
    path = _modules()[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[
                    : len(name.split(".")) - node.level + (path.name == "__init__.py")
                ]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            submodules = [
                f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in _modules()
            ]
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(module)
    return frozenset(found)


def _internal_imports(name: str) -> set[str]:
    """The modules of ``tether`` that ``name`` imports (a name is cut back to its module)."""
    result = set()
    for module in _imports(name):
        while module and module not in _modules():
            module = module.rpartition(".")[0]
        if module and module != name:
            result.add(module)
    return result


def test_no_module_imports_another_that_imports_it_back() -> None:
    graph = {name: _internal_imports(name) for name in _modules()}
    circles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_only_the_entry_point_imports_the_cli() -> None:
    offenders = [
        name
        for name in _modules()
        if not (name == "tether.__main__" or name == "tether.cli" or name.startswith("tether.cli."))
        and any(m == "tether.cli" or m.startswith("tether.cli.") for m in _imports(name))
    ]
    assert not offenders, f"only tether.cli and tether.__main__ may import tether.cli: {offenders}"


def test_the_agent_names_its_parts_as_packages() -> None:
    top = [p.name for p in (PACKAGE / "agent").iterdir() if p.suffix == ".py"]
    prefixed = [n for n in top if n.startswith(("machine_", "record"))]
    assert not prefixed, f"move these into agent/machine/ or agent/recording/: {prefixed}"
    assert (PACKAGE / "agent" / "machine" / "__init__.py").exists()
    assert (PACKAGE / "agent" / "recording" / "recorder" / "__init__.py").exists()


def test_no_package_is_named_vendor() -> None:
    assert not [p for p in PACKAGE.rglob("vendor") if p.is_dir()]


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    too_big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_big, f"split these (over {MAX_MODULE_LINES} lines): {too_big}"
    server = PACKAGE / "relay" / "server.py"
    assert not server.exists() or len(server.read_text().splitlines()) < 400


def test_the_recorder_imports_only_the_standard_library_and_itself() -> None:
    """sshd runs the recorder as the support account, from a copy of its package alone."""
    recorder = "tether.agent.recording.recorder"
    parents = {"tether", "tether.agent", "tether.agent.recording"}
    for name in [n for n in _modules() if n == recorder or n.startswith(recorder + ".")]:
        for module in _imports(name):
            top = module.split(".")[0]
            inside = module == recorder or module.startswith(recorder + ".")
            assert inside or top in sys.stdlib_module_names, f"{name} imports {module}"
    for name in parents:  # imported on the way to the recorder: they must import nothing
        assert not _imports(name) - {"__future__"}, f"{name} imports {set(_imports(name))}"


def test_the_architecture_page_names_tests_that_exist() -> None:
    page = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", page)
    assert len(named) >= 9, "the invariant table names a test for every invariant"
    missing = []
    for path, name in named:
        file = SRC.parent / path
        tree = ast.parse(file.read_text(encoding="utf-8")) if file.exists() else ast.Module([], [])
        functions = {
            n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in functions:
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/architecture.md names tests that do not exist: {missing}"
