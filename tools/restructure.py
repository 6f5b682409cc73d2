"""Codemod: src/pploy/deploy/ from one flat folder to subpackages by concern (issue 22).

    python3 tools/restructure.py            # move and rewrite (from the repository root)
    python3 tools/restructure.py --check    # only say what would change; exit 1 if anything

It is mechanical and re-runnable, so branches written against the flat layout can be merged
first and moved afterwards: each run

1. refuses to start (exit 2, nothing touched) while a module sits directly in deploy/ that
   neither ``MOVES`` nor ``TOP`` places: add a line to ``MOVES`` (or ``TOP``) and run again;
2. ``git mv``-s every module of ``MOVES`` still at its old path, and every file under
   deploy/templates/ and deploy/static/ to deploy/web/ (package-data globs cover both places);
3. rewrites, in src/ tests/ bench/ docs/ tools/ README.md DEVELOPERS.md pyproject.toml:
   ``from pploy.deploy import x`` statements, dotted names (imports, mock targets, string
   module paths, prose), file paths such as ``src/pploy/deploy/jobs.py``, and imports of the
   names ``SYMBOLS`` gives a new home (record types now in the domain);
4. sorts the imports of the Python files it changed (``ruff check --select I --fix``).

A tree already moved is left as it is, so running it twice changes nothing the second time.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "src" / "pploy" / "deploy"
PACKAGE = "pploy.deploy"

# Modules that stay directly in deploy/: the wiring, the application layer, and what every
# layer reads (config) — at most 12 (tests/test_architecture.py).
TOP = {"__init__", "app", "services", "actions", "governance", "config", "cli", "server",
       "demo", "notify", "directory", "prefix"}  # fmt: skip

# The move map: old module (directly in deploy/) -> new module, both under pploy.deploy.
MOVES = {
    # web/: HTTP — routes, middleware, rendering, templates and static files
    "api": "web.api",
    "pages": "web.pages",
    "streams": "web.streams",
    "legacy": "web.legacy",
    "goploy": "web.goploy",
    "tokenroutes": "web.tokenroutes",
    "govroutes": "web.govroutes",
    "middleware": "web.middleware",
    "rendering": "web.rendering",
    "params": "web.params",
    "i18n": "web.i18n",
    "security": "web.security",
    "requestkeys": "web.requestkeys",
    "views": "web.views",
    "history": "web.history",
    "auth": "web.auth",
    "runtime": "web.runtime",
    # jobs/: running scripts, their logs and their followers, several instances
    "jobs": "jobs.running",
    "runner": "jobs.runner",
    "follow": "jobs.following",
    "containment": "jobs.containment",
    "terminal": "jobs.terminal",
    "timeline": "jobs.timeline",
    "latestlog": "jobs.latestlog",
    "workdir": "jobs.workdir",
    "sharedlog": "jobs.sharedlog",
    "cluster": "jobs.cluster",
    # domain/: the rules — no HTTP, no SQL
    "errors": "domain.errors",
    "records": "domain.records",
    "names": "domain.names",
    "permissions": "domain.permissions",
    "tokens": "domain.tokens",
    "locks": "domain.locks",
    "expiry": "domain.expiry",
    "projects": "domain.projects",
    "git": "domain.git",
    "repofiles": "domain.repofiles",
    "audit": "domain.audit",
    "freezes": "domain.freezes",
    "masking": "domain.masking",
    "approvals": "domain.approvals",
    "govrecords": "domain.govrecords",
    # storage/: the engines behind domain.records.Storage
    "storage": "storage.opening",
    "store": "storage.sqlite",
    "store_pg": "storage.postgres",
    "migrations": "storage.migrations",
    "schema": "storage.schema",
    "dialect": "storage.dialect",
}

# Names that left their module: (module, name) -> the module that now defines them. Imports
# of them are rewritten (the old module re-exports them too, so other uses keep working).
_RECORDS = ("Lock", "Repository", "JobRecord", "ApiToken", "StoreUnavailable",
            "JobAlreadyRunning", "FINAL_STATUSES", "Storage")  # fmt: skip
SYMBOLS = {
    **{("storage.sqlite", n): "domain.records" for n in _RECORDS},
    **{("storage.postgres", n): "domain.records" for n in _RECORDS},
    ("storage.opening", "Storage"): "domain.records",
    ("domain.tokens", "bearer"): "web.middleware",
    ("domain.tokens", "refusal"): "web.middleware",
}

ASSETS = {"templates": "web/templates", "static": "web/static"}
ROOTS = ["src", "tests", "bench", "docs", "tools", "README.md", "DEVELOPERS.md", "pyproject.toml"]
TEXT = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".html", ".js", ".sh"}
SELF = Path(__file__).resolve()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def unplaced() -> list[str]:
    return sorted(p.stem for p in DEPLOY.glob("*.py") if p.stem not in TOP and p.stem not in MOVES)


def move_files(dry: bool) -> list[str]:
    """``git mv`` what is still at an old path; the moves made (or to make)."""
    done = []
    pairs = [(DEPLOY / f"{old}.py", DEPLOY / (new.replace(".", "/") + ".py"))
             for old, new in MOVES.items()]  # fmt: skip
    for folder, target in ASSETS.items():
        pairs += [(p, DEPLOY / target / p.relative_to(DEPLOY / folder))
                  for p in sorted((DEPLOY / folder).rglob("*")) if p.is_file()]  # fmt: skip
    for src, dst in pairs:
        if not src.is_file():
            continue
        if dst.exists():
            sys.exit(f"restructure: both {src.relative_to(ROOT)} and {dst.relative_to(ROOT)} "
                     "exist: merge the old into the new by hand, delete it, run again")  # fmt: skip
        done.append(f"{src.relative_to(ROOT)} -> {dst.relative_to(ROOT)}")
        if dry:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.suffix == ".py" and not (dst.parent / "__init__.py").exists():
            (dst.parent / "__init__.py").write_text("")
            git("add", str(dst.parent / "__init__.py"))
        git("add", str(src))  # git mv moves tracked files only
        git("mv", str(src), str(dst))
    for folder in ASSETS:
        old = DEPLOY / folder
        if not dry and old.is_dir() and not any(p.is_file() for p in old.rglob("*")):
            for d in sorted(old.rglob("*"), reverse=True) + [old]:
                d.rmdir()
    return done


def _children(package: str) -> str:
    """Alternation of the new submodules of ``package`` (``jobs`` -> ``running|following|…``)."""
    names = {new.split(".")[1] for new in MOVES.values() if new.split(".")[0] == package}
    return "|".join(sorted(names)) or "(?!)"


def dotted_patterns() -> list[tuple[re.Pattern[str], str]]:
    """``pploy.deploy.jobs`` -> ``pploy.deploy.jobs.running``, but never a name already moved
    (``pploy.deploy.jobs.following``, ``from pploy.deploy.jobs import following`` stay;
    ``pploy.deploy.store_pg`` is not ``store``)."""
    found = []
    for old, new in MOVES.items():
        kids = _children(old)
        moved = rf"(?!\.(?:{kids})\b|\s+import\s+\(?\s*(?:{kids})\b)"
        found.append((re.compile(rf"\bpploy\.deploy\.{old}\b{moved}"), f"{PACKAGE}.{new}"))
    return found


def path_patterns() -> list[tuple[re.Pattern[str], str]]:
    """File paths: ``deploy/jobs.py`` -> ``deploy/jobs/running.py``; ``pploy/deploy/static/``
    -> ``pploy/deploy/web/static/`` (a URL such as ``/deploy/static/app.js`` is left alone)."""
    found = [
        (re.compile(rf"(?<![\w./-])((?:src/)?(?:pploy/)?deploy/){old}\.py\b"),
         rf"\g<1>{new.replace('.', '/')}.py")
        for old, new in MOVES.items()
    ]  # fmt: skip
    for folder, target in ASSETS.items():
        found.append((re.compile(rf"\bpploy/deploy/{folder}\b"), f"pploy/deploy/{target}"))
        found.append((re.compile(rf'"deploy" / "{folder}"'),
                      '"deploy" / ' + " / ".join(f'"{p}"' for p in target.split("/"))))  # fmt: skip
    return found


FROM_PACKAGE = re.compile(r"^([ \t]*)from pploy\.deploy import (\([^)]*\)|[^\n]*)$", re.M)


def split_from_package(match: re.Match[str]) -> str:
    """``from pploy.deploy import actions, api, jobs as j`` -> one statement per home."""
    indent, body = match.group(1), match.group(2)
    if "#" in body or "\\" in body or not set(re.findall(r"\w+", body)) & MOVES.keys():
        return match.group(0)  # nothing moved, or a comment or continuation: left for a person
    homes: dict[str, list[str]] = {}
    for item in body.strip("()").replace("\n", " ").split(","):
        parts = item.split()
        if not parts:
            continue
        name, alias = parts[0], (parts[2] if len(parts) == 3 else None)
        package, _, leaf = f"{PACKAGE}.{MOVES.get(name, name)}".rpartition(".")
        shown = alias or name
        homes.setdefault(package, []).append(leaf if leaf == shown else f"{leaf} as {shown}")
    return "\n".join(f"{indent}from {p} import {', '.join(n)}" for p, n in homes.items())


def rehome_symbols(text: str) -> str:
    """Split ``from M import a, B`` where ``B`` now lives elsewhere (see ``SYMBOLS``)."""
    if not any(f"{PACKAGE}.{m}" in text for m, _ in SYMBOLS):
        return text
    lines = text.splitlines(keepends=True)
    for node in sorted(ast.walk(ast.parse(text)), key=lambda n: -getattr(n, "lineno", 0)):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        module = node.module.removeprefix(PACKAGE + ".")
        if not any((module, a.name) in SYMBOLS for a in node.names):
            continue
        homes: dict[str, list[str]] = {}
        for a in node.names:
            home = SYMBOLS.get((module, a.name), module)
            homes.setdefault(home, []).append(a.name + (f" as {a.asname}" if a.asname else ""))
        indent = " " * node.col_offset
        new = [f"{indent}from {PACKAGE}.{h} import {', '.join(n)}\n" for h, n in homes.items()]
        assert node.end_lineno is not None
        lines[node.lineno - 1 : node.end_lineno] = new
    return "".join(lines)


def rewrite(path: Path) -> str:
    text = path.read_text()
    if path.suffix == ".py":
        text = FROM_PACKAGE.sub(split_from_package, text)
    for pattern, replacement in dotted_patterns() + path_patterns():
        text = pattern.sub(replacement, text)
    if path.suffix == ".py":
        try:
            text = rehome_symbols(text)
        except SyntaxError as exc:
            print(f"restructure: {path.relative_to(ROOT)}: not parsed ({exc}); its imports "
                  "of moved names are left as they are", file=sys.stderr)  # fmt: skip
    return text


def text_files() -> list[Path]:
    listed = git("ls-files", "--cached", "--others", "--exclude-standard", "--", *ROOTS)
    paths = {ROOT / line for line in listed.splitlines()}
    return sorted(
        p for p in paths
        if p.suffix in TEXT and p.is_file() and p.resolve() != SELF
        and "node_modules" not in p.parts
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if needed")
    args = parser.parse_args()
    left = unplaced()
    if left:
        print("restructure: modules directly in src/pploy/deploy/ that the move map does not "
              f"place: {', '.join(left)}\nadd each to MOVES (or TOP) in tools/restructure.py",
              file=sys.stderr)  # fmt: skip
        return 2
    moved = move_files(args.check)
    changed = []
    for path in text_files():
        text = rewrite(path)
        if text != path.read_text():
            changed.append(path)
            if not args.check:
                path.write_text(text)
    python = [str(p) for p in changed if p.suffix == ".py"]
    if python and not args.check:
        # Sorts the imports; also shows lines the longer names made too long (fix those by hand).
        subprocess.run(["ruff", "check", "--quiet", "--select", "I,E501", "--fix", *python],
                       cwd=ROOT)  # fmt: skip
    for line in moved:
        print("moved", line)
    for path in changed:
        print("rewrote", path.relative_to(ROOT))
    return 1 if args.check and (moved or changed) else 0


if __name__ == "__main__":
    sys.exit(main())
