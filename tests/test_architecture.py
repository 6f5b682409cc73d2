"""The layering of issues 12 and 22, checked from the source: imports run one way.

Every import counts, including those inside functions and under ``TYPE_CHECKING`` (a cycle
hidden in a function body is still a cycle: it only moves the failure to run time).

Inside ``pploy/deploy/`` (issue 22): ``web → jobs → domain ← storage``, under the modules left
at the top (the wiring: app, services, actions, cli, server; config, read by every layer).
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

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


DEPLOY = "pploy.deploy"
MAX_TOP_MODULES = 12
# What each subpackage of deploy/ may import inside deploy/ (itself aside): a layer imports only
# the layers below it, and of the modules at the top only config (plain settings). Importing
# services, actions or app from below would reach every layer through them.
MAY_IMPORT = {
    "domain": {"config"},  # no HTTP, no SQL, no running jobs
    "storage": {"domain"},  # the engines implement domain.records.Storage
    "jobs": {"domain", "storage", "config"},
}


def layer_of(module: str) -> str | None:
    """``pploy.deploy.web.api`` -> ``web``; a top module -> its own name; outside -> None."""
    parts = module.split(".")
    return parts[2] if parts[:2] == DEPLOY.split(".") and len(parts) > 2 else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break ``MAY_IMPORT``, as ``module -> target``."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if (layer := layer_of(module)) in MAY_IMPORT
        for target in targets
        if layer_of(target) not in (None, layer, *MAY_IMPORT[layer])
    )


def too_many_at_the_top(package: Path) -> list[str]:
    """The modules directly in ``package`` (``__init__`` aside) when there are too many."""
    top = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    return top if len(top) > MAX_TOP_MODULES else []


def test_deploy_subpackages_import_only_downwards() -> None:
    """web → jobs → domain ← storage: domain imports neither web, jobs nor storage; storage
    neither web nor jobs; jobs not web; none of them the wiring above (services, actions)."""
    assert layer_violations(import_graph(SRC, "pploy")) == []


def test_deploy_keeps_at_most_a_dozen_modules_at_the_top() -> None:
    """Everything else lives in a subpackage by concern (tools/restructure.py places it)."""
    assert too_many_at_the_top(PACKAGE / "deploy") == []


@pytest.mark.parametrize(
    ("module", "bad_import", "expected"),
    [
        ("domain/locks.py", "from pploy.deploy.web import rendering", "web.rendering"),
        ("domain/names.py", "import pploy.deploy.storage.sqlite", "storage.sqlite"),
        ("domain/tokens.py", "from pploy.deploy.jobs import following", "jobs.following"),
        ("domain/projects.py", "from pploy.deploy.services import Services", "services"),
        ("storage/sqlite.py", "from pploy.deploy.jobs.running import Jobs", "jobs.running"),
        ("storage/postgres.py", "from pploy.deploy.web import params", "web.params"),
        ("jobs/terminal.py", "from pploy.deploy.web.requestkeys import CALLER", "web.requestkeys"),
        ("jobs/timeline.py", "from pploy.deploy import actions", "actions"),
    ],
)
def test_each_layer_rule_catches_a_bad_import(
    tmp_path: Path, module: str, bad_import: str, expected: str
) -> None:
    """The rules above, broken on purpose in a copy of the source (inside a function, as a
    lazy import would be): each bad import is reported, and nothing else (``from package
    import module`` names the package too)."""
    shutil.copytree(PACKAGE, tmp_path / "pploy", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "pploy" / "deploy" / module
    path.write_text(path.read_text() + f"\n\ndef _bad() -> None:\n    {bad_import}\n")
    name = module_name(path, tmp_path)
    before = set(layer_violations(import_graph(SRC, "pploy")))  # empty, unless a rule is broken
    found = sorted(set(layer_violations(import_graph(tmp_path, "pploy"))) - before)
    assert f"{name} -> {DEPLOY}.{expected}" in found
    assert all(line.startswith(f"{name} -> ") for line in found), found


def test_the_top_module_count_catches_a_module_too_many(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE / "deploy", tmp_path, dirs_exist_ok=True)
    n = 0
    while not too_many_at_the_top(tmp_path):
        (tmp_path / f"extra{n}.py").write_text("")
        n += 1
    assert len(too_many_at_the_top(tmp_path)) == MAX_TOP_MODULES + 1


def readme_tree() -> set[str]:
    """The modules the README's tree of ``src/pploy/deploy/`` shows, as ``web/api.py``."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```text\nsrc/pploy/deploy/\n")
    block = text[start : text.index("```", start + 3)].splitlines()[2:]
    shown, package = set(), ""
    for line in block:
        top = not line.startswith(("│", " "))
        entry = line.lstrip("│├└─ ")
        if top:
            package = entry.split("/")[0] + "/" if entry.split()[0].endswith("/") else ""
        shown.update(package + name for name in re.findall(r"\b\w+\.py\b", entry))
    return shown


def test_the_readme_tree_shows_every_deploy_module() -> None:
    """The README's picture of deploy/ is the layout: each module at its place, none extra."""
    deploy = PACKAGE / "deploy"
    modules = {str(p.relative_to(deploy)) for p in deploy.rglob("*.py") if p.stem != "__init__"}
    assert readme_tree() == modules


def test_bench_does_not_import_tests() -> None:
    """bench/ stands on the package, not on the test suite."""
    wrong = sorted(
        f"{module_name(path, ROOT)} -> {name}"
        for path in (ROOT / "bench").rglob("*.py")
        for name in imported_names(path, module_name(path, ROOT))
        if name.split(".")[0] == "tests"
    )
    assert wrong == []


# -- one storage layer ---------------------------------------------------------------------------

STORAGE = SRC / "pploy" / "deploy" / "storage"


def storage_methods() -> set[str]:
    """What the domain's Storage protocol asks of a database."""
    tree = ast.parse((SRC / "pploy" / "deploy" / "domain" / "records.py").read_text())
    (protocol,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Storage"]
    return {n.name for n in protocol.body if isinstance(n, ast.FunctionDef)}


def engine_overrides(source: str) -> set[str]:
    """Storage methods a module's classes define themselves."""
    asked = storage_methods()
    return {
        method.name
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef)
        for method in node.body
        if isinstance(method, ast.FunctionDef) and method.name in asked
    }


def test_the_engines_implement_no_storage_method_of_their_own() -> None:
    """Every statement of Storage is written once, in storage/sql.py; an engine supplies the
    dialect (and closes its connection), so a rule can never be one engine's only."""
    assert len(storage_methods()) > 40
    for engine in ("sqlite.py", "postgres.py"):
        assert engine_overrides((STORAGE / engine).read_text()) == {"close"}, engine


def test_an_engine_with_its_own_statement_is_caught() -> None:
    faster = "class Faster(Store):\n    def get_lock(self, project, now=None):\n        return\n"
    source = (STORAGE / "sqlite.py").read_text() + "\n\n" + faster
    assert engine_overrides(source) == {"close", "get_lock"}
