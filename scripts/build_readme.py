"""Assemble README.md and the docs pages, filling in every measured figure from its result file.

README.md = the hand-written head (up to MARKER) + docs/readme/<area>.md in the fixed ORDER.
Each docs page docs/<name>.md is generated from docs/src/<name>.md. Every product area keeps its
README section in its own file so that changes to different areas do not collide.

Figures are never typed in by hand: a source writes a placeholder that names the file and the key
the figure comes from, and the builder substitutes the value. Since `--check` compares the
generated files with what is committed, a changed result file makes them stale and fails
`tests/test_readme.py`; a missing file or key fails the build with the placeholder named.

Placeholder syntax: ``{{ EXPR | OP ... | FORMAT }}``

- EXPR is a reference, or arithmetic over references and numbers (``+ - * /``, parentheses,
  comparisons ``< <= > >= ==`` that give 1/0, and the functions below).
- A reference is ``FILE:PATH`` or ``@SET:PATH``. FILE is a JSON file relative to the repository
  root, under one of SOURCE_ROOTS. ``@SET`` names a list of files declared in the same source by a
  line ``<!-- figure-set NAME: FILE FILE ... -->`` (the line is dropped from the output); a set
  reference yields one value per file, in the listed order.
- PATH is a dotted key path: ``results.dcgan.img_per_s`` (a dot inside a key is written ``\\.``:
  ``study.overrides.model\\.width``). A segment may be a dict key (``"32"``
  keys are written ``32``), a list index (``results.0`` or ``results[0]``, negative allowed),
  ``*`` (every item of a list or value of a dict) or carry a selector ``[key=value]`` that keeps
  the list items whose ``key`` equals ``value`` (compared as text): ``runs[name=cdcgan].latest``.
  ``*``, selectors matching several items and sets make the reference a list.
- Functions: ``min max sum mean len abs`` over a list; ``pooled(points)``, the images/s of
  benchmark points taken together (sum of ``requests`` / sum of ``seconds``); ``minutes(x)``
  (x / 60). Arithmetic and comparisons on lists work item by item (a number broadcasts).
- OPs shape the output: ``range`` (a list as ``min-max``, or ``min to max`` when min is negative;
  one value when both print alike),
  ``list`` (joined with ``, ``), ``slash`` (joined with `` / ``), ``bold<X`` (also ``<=``, ``>``,
  ``>=``: bold the items below / above X), ``date`` (``2026-11-24`` of an ISO timestamp), ``time``
  (``10:59`` of one). A list without ``range``, ``list`` or ``slash`` is an error.
- FORMAT is a Python format spec applied to each value (``.1f``, ``,.0f``, ``.1%``); without
  one, numbers print with ``g``.

Write spaces around operators (a reference runs up to the next space, parenthesis or comma).
A placeholder sits on one line; ``\\{{`` writes a literal ``{{``.
Examples (`M` = docs/study/metrics.json):
``{{bench/results/scaling-cpu.json:images_per_s.2|.1f}}``,
``{{(1 - M:runs[name=cdcgan].latest.fid / M:runs[name=dcgan].latest.fid) * 100|.0f}}``,
``{{@runs:goals.get.batching_speedup_at_32.ratio|slash|.2f}}``,
``{{pooled(@runs:results.get.floor[clients=32])|.1f}}``.

Usage: python scripts/build_readme.py [--check]
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- sections below are generated from docs/readme/*.md by scripts/build_readme.py -->"
# Reading order: from data to training to what users do with the result, then the internals.
ORDER = (
    "data",
    "train",
    "distributed",
    "kernels",
    "quality",
    "serve",
    "deploy",
    "security",
    "architecture",
)
SECTIONS = ROOT / "docs" / "readme"
PAGE_SOURCES = ROOT / "docs" / "src"
PAGES = ROOT / "docs"
# Figures may only come from recorded results and committed docs.
SOURCE_ROOTS = ("bench/results/", "docs/", "quality/weights/")
PAGE_HEADER = (
    "<!-- generated from docs/src/{name} by scripts/build_readme.py: edit that file, "
    "not this one -->\n\n"
)
# When `mark=True`, every substituted figure is wrapped in these (tests strip them to find
# figures that were typed in by hand).
MARK_OPEN, MARK_CLOSE = "\x02", "\x03"

PLACEHOLDER = re.compile(r"(?<!\\)\{\{([^\n]*?)\}\}")  # `\{{` is a literal `{{`
FIGURE_SET = re.compile(r"^<!-- figure-set ([A-Za-z][\w-]*): (.+?) -->[ \t]*\n", re.M)
REFERENCE = re.compile(r"(@[A-Za-z][\w-]*|[\w./-]+\.json):([^\s(),]+)")
SEGMENT = re.compile(r"([^\[\]]*)((?:\[[^\]]*\])*)")


class FigureError(Exception):
    """A placeholder that cannot be filled: bad syntax, missing file, missing key."""


# ---- reading values ---------------------------------------------------------------------------

_json_cache: dict[Path, Any] = {}


def _load(rel: str) -> Any:
    if not any(rel.startswith(root) for root in SOURCE_ROOTS):
        raise FigureError(f"{rel}: figures must come from a file under {', '.join(SOURCE_ROOTS)}")
    path = ROOT / rel
    if path not in _json_cache:
        if not path.is_file():
            raise FigureError(f"{rel}: no such file")
        try:
            _json_cache[path] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FigureError(f"{rel}: not JSON ({exc})") from exc
    return _json_cache[path]


def _split_path(path: str) -> list[tuple[str, list[str]]]:
    """`a.b[0][k=v].*` -> [("a", []), ("b", ["0", "k=v"]), ("*", [])]."""
    out = []
    for part in (p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", path)):
        m = SEGMENT.fullmatch(part)
        if not m or (not m.group(1) and not m.group(2)):
            raise FigureError(f"bad key path {path!r} (segment {part!r})")
        out.append((m.group(1), re.findall(r"\[([^\]]*)\]", m.group(2))))
    return out


def _step(value: Any, key: str, where: str) -> list[Any]:
    """One key, index or `*` applied to one value; a list of results (fan-out for `*`)."""
    if key == "*":
        if isinstance(value, dict):
            return list(value.values())
        if isinstance(value, list):
            return list(value)
        raise FigureError(f"{where}: `*` on a {type(value).__name__}")
    if isinstance(value, dict):
        if key not in value:
            raise FigureError(f"{where}: no key {key!r} (keys: {', '.join(map(str, value))})")
        return [value[key]]
    if isinstance(value, list):
        if "=" in key:
            field, want = key.split("=", 1)
            hits = [v for v in value if isinstance(v, dict) and str(v.get(field)) == want]
            if not hits:
                raise FigureError(f"{where}: no item with {field} = {want}")
            return hits
        try:
            return [value[int(key)]]
        except (ValueError, IndexError):
            raise FigureError(f"{where}: no index {key!r} in a list of {len(value)}") from None
    raise FigureError(f"{where}: {type(value).__name__} has no key {key!r}")


def resolve(source: str, path: str, sets: dict[str, list[str]]) -> tuple[Any, bool]:
    """The value(s) at PATH in SOURCE; the flag says whether it is a list of values."""
    if source.startswith("@"):
        if source[1:] not in sets:
            raise FigureError(f"unknown figure set {source} (declare it with <!-- figure-set -->)")
        files, many = sets[source[1:]], True
    else:
        files, many = [source], False
    out: list[Any] = []
    for rel in files:
        values, done = [_load(rel)], []
        for key, selectors in _split_path(path):
            for k in ([key] if key else []) + selectors:
                done.append(k)
                where = f"{rel}: {'.'.join(done)}"
                fanned = k == "*" or "=" in k
                values = [v for value in values for v in _step(value, k, where)]
                many = many or (fanned and len(values) != 1) or k == "*"
        out.extend(values)
    return (out if many else out[0]), many


# ---- evaluating expressions -------------------------------------------------------------------


def _elementwise(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                raise FigureError(f"lists of different lengths ({len(a)} and {len(b)})")
            return [fn(x, y) for x, y in zip(a, b, strict=True)]
        if isinstance(a, list):
            return [fn(x, b) for x in a]
        if isinstance(b, list):
            return [fn(a, y) for y in b]
        return fn(a, b)

    return apply


def _numbers(values: Any, name: str) -> list[float]:
    items = values if isinstance(values, list) else [values]
    if not items:
        raise FigureError(f"{name}() of nothing")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FigureError(f"{name}() of a non-number {v!r}")
    return items


def _pooled(points: Any) -> float:
    points = points if isinstance(points, list) else [points]
    try:
        return sum(p["requests"] for p in points) / sum(p["seconds"] for p in points)
    except (TypeError, KeyError) as exc:
        raise FigureError(f"pooled() needs points with requests and seconds ({exc})") from exc


FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "min": lambda v: min(_numbers(v, "min")),
    "max": lambda v: max(_numbers(v, "max")),
    "sum": lambda v: sum(_numbers(v, "sum")),
    "mean": lambda v: sum(_numbers(v, "mean")) / len(_numbers(v, "mean")),
    "len": lambda v: len(v) if isinstance(v, list) else 1,
    "abs": lambda v: [abs(x) for x in v] if isinstance(v, list) else abs(v),
    "pooled": _pooled,
    "minutes": lambda v: [x / 60 for x in v] if isinstance(v, list) else v / 60,
}
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
COMPARE_TEXT = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
}


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        fn = BINARY[type(node.op)]
        return _elementwise(fn)(_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _elementwise(operator.mul)(-1, _eval(node.operand, env))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
        fn = COMPARE[type(node.ops[0])]
        cmp = _elementwise(lambda a, b: int(fn(a, b)))
        return cmp(_eval(node.left, env), _eval(node.comparators[0], env))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and len(node.args) == 1
        and not node.keywords
    ):
        return FUNCTIONS[node.func.id](_eval(node.args[0], env))
    raise FigureError(f"unsupported expression {ast.unparse(node)!r}")


def evaluate(expr: str, sets: dict[str, list[str]]) -> tuple[Any, bool]:
    env: dict[str, Any] = {}
    many = False

    def ref(m: re.Match[str]) -> str:
        nonlocal many
        value, is_list = resolve(m.group(1), m.group(2), sets)
        name = f"_ref{len(env)}"
        env[name] = value
        many = many or is_list
        return name

    code = REFERENCE.sub(ref, expr.strip())
    if not env:
        raise FigureError("no FILE:PATH reference: a figure must name its source")
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as exc:
        raise FigureError(f"cannot parse {expr.strip()!r} ({exc.msg})") from None
    value = _eval(tree, env)
    return value, isinstance(value, list)


# ---- formatting -------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        raise FigureError("the value is NaN")
    if not spec:
        return format(value, "g") if isinstance(value, float) else str(value)
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        raise FigureError(f"cannot format {value!r} with {spec!r} ({exc})") from None


def render_figure(text: str, sets: dict[str, list[str]]) -> str:
    expr, *pipes = [p.strip() for p in text.split("|")]
    value, many = evaluate(expr, sets)
    values = value if many else [value]
    shape, spec, bold = None, "", None
    for pipe in pipes:
        if pipe in ("range", "list", "slash"):
            shape = pipe
        elif pipe == "date":
            values = [str(v)[:10] for v in values]
        elif pipe == "time":
            values = [str(v)[11:16] for v in values]
        elif m := re.fullmatch(r"bold(<=|>=|<|>)(-?[\d.]+)", pipe):
            bold = (COMPARE_TEXT[m.group(1)], float(m.group(2)))
        elif spec:
            raise FigureError(f"two format specs ({spec!r} and {pipe!r})")
        else:
            spec = pipe
    if many and shape is None:
        raise FigureError(f"{len(values)} values: add |range, |list or |slash, or reduce them")
    if not many and shape is not None:
        raise FigureError(f"|{shape} needs a list of values, this is one value")
    if not values:
        raise FigureError("no values")

    def show(v: Any) -> str:
        s = _fmt(v, spec)
        return f"**{s}**" if bold and bold[0](v, bold[1]) else s

    if shape == "range":
        lo, hi = show(min(values)), show(max(values))
        return lo if lo == hi else f"{lo} to {hi}" if min(values) < 0 else f"{lo}-{hi}"
    if shape in ("list", "slash"):
        return (", " if shape == "list" else " / ").join(show(v) for v in values)
    return show(values[0])


WIDTH = 100  # paragraphs that hold figures are re-wrapped to this width
LIST_ITEM = re.compile(r"^(\s*(?:[-*+]|\d+\.)\s+)")
ATOM = re.compile(r"(?:`[^`\n]*`|[^\s`]|`)+")  # a word; code spans are never broken


def reflow(lines: list[str]) -> list[str]:
    """Re-wrap a paragraph (or list items) whose figures changed the line lengths."""
    if any(line.startswith(("|", "#", "<!--", ">", "    ")) for line in lines):
        return lines
    chunks: list[list[str]] = []
    for line in lines:
        if LIST_ITEM.match(line) or not chunks:
            chunks.append([line])
        else:
            chunks[-1].append(line)
    out = []
    for chunk in chunks:
        m = LIST_ITEM.match(chunk[0])
        prefix = m.group(1) if m else ""
        body = " ".join([chunk[0][len(prefix) :].strip()] + [x.strip() for x in chunk[1:]])
        line, empty = prefix, True
        for word in ATOM.findall(body):
            if not empty and len(line) + 1 + len(word) > WIDTH:
                out.append(line)
                line = " " * len(prefix) + word
            else:
                line = line + word if empty else f"{line} {word}"
            empty = False
        out.append(line)
    return out


def expand(text: str, origin: str, mark: bool = False) -> str:
    """Fill every placeholder of TEXT (read from ORIGIN); all errors are reported together.

    A placeholder must sit on one line. Paragraphs and list items that hold one are re-wrapped;
    code blocks and tables are left as they are."""
    sets: dict[str, list[str]] = {}
    for m in FIGURE_SET.finditer(text):
        if m.group(1) in sets:
            raise SystemExit(f"{origin}: figure set {m.group(1)} declared twice")
        sets[m.group(1)] = m.group(2).split()
    errors: list[str] = []

    def fill_line(line: str, number: int) -> str:
        def fill(m: re.Match[str]) -> str:
            try:
                figure = render_figure(m.group(1), sets)
            except FigureError as exc:
                errors.append(f"{origin}:{number}: {{{{{m.group(1)}}}}}: {exc}")
                return m.group(0)
            return f"{MARK_OPEN}{figure}{MARK_CLOSE}" if mark else figure

        out = PLACEHOLDER.sub(fill, line).replace("\\{{", "{{")
        if "{{" in PLACEHOLDER.sub("", line).replace("\\{{", ""):
            errors.append(f"{origin}:{number}: `{{{{` without `}}}}` on the same line")
        return out

    out: list[str] = []
    block: list[tuple[int, str]] = []
    in_fence = False

    def flush() -> None:
        filled = [fill_line(line, number) for number, line in block]
        had_figures = any(PLACEHOLDER.search(line) for _, line in block)
        out.extend(reflow(filled) if had_figures else filled)
        block.clear()

    for number, line in enumerate(text.split("\n"), start=1):
        if FIGURE_SET.match(line + "\n"):
            continue
        if line.startswith("```"):
            flush()
            in_fence = not in_fence
            out.append(fill_line(line, number))
        elif in_fence:
            out.append(fill_line(line, number))
        elif not line.strip():
            flush()
            out.append(line)
        else:
            block.append((number, line))
    flush()
    if errors:
        raise SystemExit("cannot fill figures:\n" + "\n".join(errors))
    return "\n".join(out)


# ---- README and pages -------------------------------------------------------------------------


def sections() -> list[Path]:
    found = {p.stem: p for p in SECTIONS.glob("*.md")}
    unknown = sorted(set(found) - set(ORDER))
    if unknown:
        raise SystemExit(f"docs/readme: add {unknown} to ORDER in scripts/build_readme.py")
    return [found[name] for name in ORDER if name in found]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def render(mark: bool = False) -> str:
    head = (ROOT / "README.md").read_text().split(MARKER)[0].rstrip() + "\n\n"
    titles = [title for p in sections() for title in headings(p)]
    toc = "## Contents\n\n" + "".join(f"- [{title}](#{anchor(title)})\n" for title in titles)
    body = "\n".join(expand(p.read_text(), _rel(p), mark).rstrip() + "\n" for p in sections())
    return head + MARKER + "\n\n" + toc + "\n" + body


def render_pages(mark: bool = False) -> dict[Path, str]:
    """docs/<name>.md for every docs/src/<name>.md."""
    return {
        PAGES / src.name: PAGE_HEADER.format(name=src.name)
        + expand(src.read_text(), _rel(src), mark).rstrip()
        + "\n"
        for src in sorted(PAGE_SOURCES.glob("*.md"))
    }


def stale_pages() -> list[Path]:
    """Generated pages whose source is gone."""
    return [
        p
        for p in sorted(PAGES.glob("*.md"))
        if p.read_text().startswith("<!-- generated from docs/src/")
        and not (PAGE_SOURCES / p.name).is_file()
    ]


def headings(path: Path) -> list[str]:
    """Every level-2 heading of a section file (a file may hold more than one section)."""
    return [line[3:].strip() for line in path.read_text().splitlines() if line.startswith("## ")]


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Rebuild README.md and docs/*.md from docs/readme/ and docs/src/, filling "
        "every figure placeholder from its result file."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a file is out of date"
    )
    args = parser.parse_args(argv)
    outputs = {ROOT / "README.md": render(), **render_pages()}
    if args.check:
        bad = [_rel(p) for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        bad += [f"{_rel(p)} (its source docs/src/{p.name} is gone)" for p in stale_pages()]
        if bad:
            print(
                f"out of date: {', '.join(bad)}: run python scripts/build_readme.py",
                file=sys.stderr,
            )
            return 1
        return 0
    for path, text in outputs.items():
        path.write_text(text)
    for path in stale_pages():
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
