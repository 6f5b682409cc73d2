"""The wheel carries every file pploy reads at run time: templates, static files (in subfolders
too) and the other data files beside the code.

A wheel holds what setuptools' ``build_py`` copies (``pip wheel .`` runs it, then zips its
output), so the test runs ``build_py`` itself, from pyproject.toml, on a copy of the tree: no
index to download a build backend from, nothing written into the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "pploy"
# A file a later change might add where the globs of pyproject.toml's package-data must reach:
# in a subfolder, under a name and an ending nothing in the tree has yet.
PROBES = ("probe.unseen", "nested/deeper/probe.unseen")


def package_files(top: Path) -> set[str]:
    """Every file below ``top``/pploy, as a path relative to ``top``; bytecode left out."""
    return {
        path.relative_to(top).as_posix()
        for path in (top / "pploy").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def built_files(tmp_path: Path, plant: bool) -> tuple[set[str], set[str]]:
    """``build_py`` on a copy of the tree (with ``plant``: a probe file in and below every
    static/ and templates/ folder); returns the files of the copy's package and those built."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", tree / "src", ignore=skip)
    if plant:
        folders = [p for p in (tree / "src").rglob("*") if p.name in ("static", "templates")]
        assert folders, "no static/ or templates/ folder found to plant probes in"
        for folder in folders:
            for probe in PROBES:
                (folder / probe).parent.mkdir(parents=True, exist_ok=True)
                (folder / probe).write_text("probe\n")
    out = tmp_path / "lib"
    build = [sys.executable, "-c", "import setuptools; setuptools.setup()", "build_py"]
    result = subprocess.run(
        [*build, "--build-lib", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return package_files(tree / "src"), package_files(out)


def test_every_file_of_the_package_is_in_the_wheel(tmp_path: Path) -> None:
    on_disk, built = built_files(tmp_path, plant=False)
    assert on_disk == package_files(ROOT / "src")
    missing = sorted(on_disk - built)
    assert not missing, f"left out of the wheel (widen package-data in pyproject.toml): {missing}"


def test_a_new_file_in_a_subfolder_of_static_or_templates_is_in_the_wheel(tmp_path: Path) -> None:
    on_disk, built = built_files(tmp_path, plant=True)
    planted = {name for name in on_disk if name.endswith("probe.unseen")}
    assert len(planted) >= 2 * len(PROBES)  # deploy's static/ and templates/ at least
    missing = sorted(planted - built)
    assert not missing, f"left out of the wheel (widen package-data in pyproject.toml): {missing}"
