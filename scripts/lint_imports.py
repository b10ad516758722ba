"""Check the import contracts in `.importlinter` (run by `make lint`).

import-linter finds a package's modules by walking its folder, but ganforge's subpackages live in
several top-level folders mapped into one namespace by pyproject's `package-dir` (an editable
install resolves them with an import hook the walk never sees). So this stages the tree as an
installed wheel lays it out (`ganforge/data/`, `ganforge/models/`, ...) in a temporary folder,
puts it first on sys.path, and runs lint-imports from there.
Usage: python scripts/lint_imports.py [--tree DIR]   (DIR: an already staged tree, for tests)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
EXTRA_ROOTS = ("bench", "tests")  # checked too: the product must never import them


def stage(dest: Path) -> None:
    """Copy every mapped package's .py files to where an install would put them."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"] | {name: name for name in EXTRA_ROOTS}
    for package, folder in mapping.items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in (ROOT / folder).glob("*.py"):  # subpackages are mapped on their own
            shutil.copy2(src, target / src.name)


def check(tree: Path) -> int:
    """Run the contracts on a staged tree; 0 when every contract is kept."""
    from importlinter.cli import lint_imports

    sys.path.insert(0, str(tree))
    os.chdir(tree)  # lint-imports puts the working directory first on sys.path
    # no cache: the staged folder is new every run
    return lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--tree"] and len(argv) == 2:
        return check(Path(argv[1]).resolve())
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ganforge-imports-") as tmp:
        stage(Path(tmp))
        return check(Path(tmp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
