"""gate's modules import one way (issue 12): no cycle among them, counting imports inside
functions and under TYPE_CHECKING; the state (core) imports no handler; the project's redirect
validator sits at the bottom and imports nothing from pploy."""

from __future__ import annotations

import ast
from pathlib import Path

import pploy

SRC = Path(pploy.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every pploy module ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def cycle_from(edges: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start → … → start, if there is one."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in edges.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_through_gate():
    edges = graph()
    for name in sorted(edges):
        if name.startswith("pploy.gate"):
            assert cycle_from(edges, name) is None, cycle_from(edges, name)


def test_gate_state_imports_no_handler():
    handlers = {"app", "login", "logout", "guards", "endpoints", "forwarding", "server", "cli"}
    core = graph()["pploy.gate.core"]
    assert not {m for m in core if m.rsplit(".", 1)[-1] in handlers}, core


def test_redirect_validator_is_at_the_bottom():
    assert graph()["pploy.redirects"] == set()
