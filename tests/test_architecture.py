"""The layering of issue 12, checked from the source: imports run one way.

Every import counts, including those inside functions and under ``TYPE_CHECKING`` (a cycle
hidden in a function body is still a cycle: it only moves the failure to run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "pploy"


def module_name(path: Path, base: Path) -> str:
    """``base/pploy/deploy/app.py`` -> ``pploy.deploy.app`` (packages by their ``__init__``)."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file, relative imports resolved.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (c may be a submodule); the
    caller keeps only names that are modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(base: Path, top: str) -> dict[str, set[str]]:
    """Module -> the modules under ``top`` it imports (``from a.b import f`` counts as
    importing ``a.b``; the packages above it are not counted: their ``__init__`` is empty)."""
    files = {module_name(p, base): p for p in sorted((base / top).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imports_from(graph: dict[str, set[str]], prefix: str, forbidden: str) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module == prefix or module.startswith(prefix + ".")
        for target in targets
        if target == forbidden or target.startswith(forbidden + ".")
    )


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The rules below are only as good as the graph: a cycle made with an import inside a
    function, a relative import and a ``from package import module`` must all show."""
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from demo import b\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("import demo.a\n")
    (pkg / "d.py").write_text("from demo.a import f\n")
    graph = import_graph(tmp_path, "demo")
    assert graph["demo.a"] == {"demo", "demo.b"}
    assert graph["demo.d"] == {"demo.a"}
    assert cycles(graph) == [["demo.a", "demo.b", "demo.c"]]


def test_no_import_cycle_among_pploy_modules() -> None:
    found = cycles(import_graph(SRC, "pploy"))
    assert found == [], f"import cycles (imports inside functions count): {found}"


def test_servers_do_not_import_the_tools_layer() -> None:
    """deploy/ and gate/ stand below chain/ (pploy up, doctor, nginx): never the reverse."""
    graph = import_graph(SRC, "pploy")
    wrong = imports_from(graph, "pploy.deploy", "pploy.chain")
    wrong += imports_from(graph, "pploy.gate", "pploy.chain")
    assert wrong == []


def test_deploy_route_modules_do_not_import_the_wiring() -> None:
    """Route modules import services, rendering and middleware, never ``deploy.app``."""
    graph = import_graph(SRC, "pploy")
    importers = sorted(m for m, targets in graph.items() if "pploy.deploy.app" in targets)
    assert importers == ["pploy.chain.up", "pploy.deploy.cli"]


def test_bench_does_not_import_tests() -> None:
    """bench/ stands on the package, not on the test suite."""
    wrong = sorted(
        f"{module_name(path, ROOT)} -> {name}"
        for path in (ROOT / "bench").rglob("*.py")
        for name in imported_names(path, module_name(path, ROOT))
        if name.split(".")[0] == "tests"
    )
    assert wrong == []
