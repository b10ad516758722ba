"""No code path of the product unpickles data with a general unpickler.

Checkpoints, rank files and datasets come from shared folders, buckets and the internet; a pickle
there runs code. Allowed: `torch.load(..., weights_only=True)` (written out literally),
`np.load(..., allow_pickle=False)`, and the one restricted unpickler for CIFAR batches
(`data/arrays.py`, a `pickle.Unpickler` subclass with an allow-list `find_class`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("ganforge", "data", "models", "kernels", "cluster", "serve", "quality", "bench")
RESTRICTED_UNPICKLERS = {("data/arrays.py", "_CifarUnpickler")}


def _keyword(call: ast.Call, name: str):
    kw = next((k for k in call.keywords if k.arg == name), None)
    return kw.value.value if kw is not None and isinstance(kw.value, ast.Constant) else None


def unsafe_loads(source: str, rel: str) -> list[str]:
    """`file:line: why` for every load that could unpickle arbitrary objects."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b) for b in node.bases}
            restricted = (rel, node.name) in RESTRICTED_UNPICKLERS
            if bases & {"pickle.Unpickler", "Unpickler"} and not restricted:
                found.append(f"{rel}:{node.lineno}: unpickler {node.name}")
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        where = f"{rel}:{node.lineno}: {name}"
        if name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "cloudpickle.loads", "dill.loads"):
            found.append(where)
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
            found.append(f"{where} without allow_pickle=False")
    return found


def test_scanner_finds_each_kind_of_unsafe_load():
    code = """
import pickle, torch, numpy as np
class Mine(pickle.Unpickler): pass
torch.load("x")
torch.load("x", weights_only=False)
torch.load("x", weights_only=True)
pickle.loads(b"")
np.load("x")
np.load("x", allow_pickle=False)
"""
    found = unsafe_loads(code, "x.py")
    assert [f.split(": ", 1)[1] for f in found] == [
        "unpickler Mine",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "pickle.loads",
        "np.load without allow_pickle=False",
    ]


def test_the_product_never_unpickles_untrusted_data():
    found = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += unsafe_loads(path.read_text(), rel)
    assert not found, "unsafe loads:\n" + "\n".join(found)
