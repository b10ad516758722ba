"""Make `ganforge.models` / `ganforge.kernels` importable on a bare CUDA machine (standard library
only: this runs before anything else of the GPU check is imported).

The machine the check is written for has torch and triton but no ganforge install and none of
ganforge's other dependencies (no network either). Two gaps:

1. The package is not installed. pyproject's `package-dir` maps `ganforge.<part>` to the
   top-level folder `<part>/`. Importing `ganforge` from the checkout and appending the checkout
   to `ganforge.__path__` gives Python exactly that mapping (every mapped name equals its
   folder), with no copy or build step.
2. The models' typed config needs pydantic (+ pydantic-core, annotated-types,
   typing-inspection, typing-extensions) and PyYAML. `make gpu-wheels` downloads those wheels
   (pure Python, or cp312 manylinux, 3.6 MB) on a machine with network; here they are installed
   offline into a temporary folder put first on sys.path, never into the system's Python.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# Import names of the third-party packages `ganforge.models` needs besides torch.
NEEDED = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml")


class BootstrapError(RuntimeError):
    """The check cannot import what it needs; the message says how to fix it."""


def missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def install_wheels(wheels: Path, target: Path) -> None:
    """Install every wheel in `wheels` into `target` (offline) and put it first on sys.path."""
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        raise BootstrapError(
            f"missing Python modules {', '.join(missing_modules())} and no wheels in {wheels}: "
            "run `make gpu-wheels` on a machine with network (then copy the folder along), "
            "or `pip install pydantic pyyaml`"
        )
    target.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet"]
        cmd += ["--disable-pip-version-check", "--target", str(target), *map(str, files)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BootstrapError(f"pip could not install the wheels in {wheels}:\n{done.stderr}")
    else:  # a Python without pip: a wheel of these packages is a zip of site-packages' content
        for f in files:
            with zipfile.ZipFile(f) as z:
                z.extractall(target)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    still = missing_modules()
    if still:
        raise BootstrapError(
            f"the wheels in {wheels} did not provide {', '.join(still)} for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} (GPU_PY in `make gpu-wheels`?)"
        )


def map_package(root: Path = ROOT) -> str:
    """Make `ganforge.<part>` importable from the checkout; returns how ("installed" or
    "checkout")."""
    if importlib.util.find_spec("ganforge") is not None:
        try:
            if importlib.util.find_spec("ganforge.kernels") is not None:
                return "installed"
        except ImportError:
            pass
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in mapping["package-dir"].items():
        if package.split(".")[-1] != folder:  # the __path__ trick needs name == folder
            raise BootstrapError(f"package-dir maps {package} to {folder}: cannot stage it")
    for name in [m for m in sys.modules if m == "ganforge" or m.startswith("ganforge.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    import ganforge

    if Path(ganforge.__file__).resolve().parent != root / "ganforge":
        raise BootstrapError(f"`ganforge` resolves to {ganforge.__file__}, not this checkout")
    ganforge.__path__.append(str(root))
    return "checkout"


def stage_package(target: Path, root: Path = ROOT) -> Path:
    """An installed-like `ganforge` of symbolic links in `target` (ganforge/<part> -> the
    checkout's <part>/), first on sys.path. For programs that start processes (spawn): a child
    imports `ganforge` from sys.path, where `map_package`'s `__path__` entry does not reach."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    pkg = target / "ganforge"
    pkg.mkdir(parents=True)
    for f in (root / "ganforge").iterdir():
        if f.name != "__pycache__":
            (pkg / f.name).symlink_to(f)
    for package, folder in mapping["package-dir"].items():
        if package != "ganforge":
            (pkg / package.split(".")[-1]).symlink_to(root / folder)
    for name in [m for m in sys.modules if m == "ganforge" or m.startswith("ganforge.")]:
        del sys.modules[name]
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return pkg


def bootstrap(wheels: Path) -> dict[str, str]:
    """Both steps; returns what was done (recorded in env.json)."""
    done = {"third_party": "present"}
    if missing_modules():
        target = Path(tempfile.mkdtemp(prefix="ganforge-gpu-check-site-"))
        atexit.register(shutil.rmtree, target, True)
        install_wheels(wheels, target)
        done["third_party"] = f"installed from {wheels} into {target}"
    done["ganforge"] = map_package()
    return done
