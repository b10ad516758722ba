"""The README is the product's manual: it must hold every area's section, up to date, and say only
what a committed file backs (figures come from result files through scripts/build_readme.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_readme", ROOT / "scripts" / "build_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_builder()


def test_readme_is_generated_from_the_section_files():
    rc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr


def test_readme_quick_start_names_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme.split("## Contents")[0]
    assert re.search(r"^make test$", ci, re.MULTILINE), ".ci/run must call the README's command"


def test_every_cli_command_is_documented():
    from typer.main import get_command

    from ganforge.cli import app

    readme = (ROOT / "README.md").read_text()
    root = get_command(app)
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None) or {None: cmd}
        for sub in subs:
            words = f"ganforge {name}" + (f" {sub}" if sub else "")
            assert words in readme, f"README does not mention `{words}`"


# ---- figures ----------------------------------------------------------------------------------

# A number followed by a unit of something measured: time, rate, share, speed-up, size, bandwidth.
# `1.7x` is a speed-up, `32x32` a shape and `2 x N` a product, so `x` (like `%`) must follow the
# digits directly; `s` and `h` need a space before them (`503s` is a plural).
UNIT = (
    r"(?:\s?(?:ns|µs|us|ms|secs?|seconds?|min|mins|minutes?|hrs?|hours?|days?"
    r"|img/s|images/s|req/s|requests/s|images a second|requests a second"
    r"|KB|MB|GB|TB|KiB|MiB|GiB|TiB|GB/s|Gb/s|MB/s|TFLOP/s|GFLOP/s|Mpixel)"
    r"|\s(?:s|h))(?![\w/])"
    r"|%|x(?![\w\d])|×"
)
BARE_FIGURE = re.compile(
    r"(?:(?<=\d-)|(?<![\w.\-/]))(?P<lead>(?:[<>]=?|[≤≥])\s*)?~?(?P<num>\d+(?:[.,]\d+)*)(?P<unit>"
    + UNIT
    + ")"
)
# Figures that are not measurements: limits, intervals and examples of configuration. Each entry
# is a substring of the line that holds it. Keep this list short and say why.
ALLOWED = {
    "over 16 Mpixel": "an upload limit of the app",
    "sampled every 0.5 s": "the queue-depth gauge's sampling interval (code)",
    "95% interval": "the confidence level of the study's intervals (study_stats.CONFIDENCE)",
}
NOT_MEASURED = re.compile(r"<!-- not-measured -->.*?<!-- /not-measured -->", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
FILLED = re.compile(re.escape(build.MARK_OPEN) + ".*?" + re.escape(build.MARK_CLOSE), re.S)


def bare_figures(text: str) -> list[str]:
    """Every figure with a unit in TEXT that was typed in by hand rather than filled in.

    The rule: a number followed by a unit of a measurement (time: ms, s, min, h; rates: img/s,
    requests a second; `%`; a speed-up such as `1.7x`; sizes: MB, GB; bandwidth: GB/s; TFLOP/s)
    must come from a placeholder `{{FILE:PATH|...}}` that scripts/build_readme.py fills in from a
    result file under bench/results/, docs/ or quality/weights/. Not counted: figures the builder
    filled in (it marks them when rendering with `mark=True`), a number right after `<`, `<=`,
    `>`, `>=` (a goal or a limit, not a result), inline code (commands and configuration values),
    the text between `<!-- not-measured -->` and `<!-- /not-measured -->` (estimates that say they
    are estimates), and the few lines of ALLOWED (limits, intervals, configuration examples).
    Anything that was never measured is stated as untested in words, without a figure.
    """
    text = NOT_MEASURED.sub("", FILLED.sub("FIGURE", text))
    found = []
    for line in text.splitlines():
        if any(allowed in line for allowed in ALLOWED):
            continue
        prose = INLINE_CODE.sub("CODE", line)
        for m in BARE_FIGURE.finditer(prose):
            if not m.group("lead"):
                found.append(f"{m.group(0)!r} in: {line.strip()}")
    return found


def generated_texts() -> dict[str, str]:
    texts = {"README.md": build.render(mark=True)}
    for path, text in build.render_pages(mark=True).items():
        texts[path.relative_to(ROOT).as_posix()] = text
    return texts


def test_figures_come_from_result_files():
    """README.md and the generated docs pages hold no figure typed in by hand (see bare_figures)."""
    problems = [
        f"{name}: {hit}" for name, text in generated_texts().items() for hit in bare_figures(text)
    ]
    assert not problems, "figures without a source; use a {{FILE:PATH}} placeholder:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    "line",
    [
        "it takes about 13 minutes",
        "from ~2,600 to ~13,000 img/s in one process",
        "60 steps took 110 s, without the reports 36 s",
        "batching gave 1.88x with GET",
        "the shards are 36 MB",
        "0.3-0.4 ms of thread time",
        "FID 30% below DCGAN's",
    ],
)
def test_bare_figures_are_found(line):
    assert bare_figures(line), line


@pytest.mark.parametrize(
    "line",
    [
        "32x32 images, ConvT 4x4 from 1x1",
        "2 nodes x 8 GPUs",
        "batching (>= 2x), p99 (< 2x)",
        "`--seconds 10`, `batch_wait_timeout_s` 0",
        "Ray 2.60, KubeRay 1.5.1, torch 2.13.0",
        f"answered {build.MARK_OPEN}273{build.MARK_CLOSE} img/s",
        "<!-- not-measured -->\n~0.1 ms per all-reduce\n<!-- /not-measured -->",
    ],
)
def test_non_figures_are_not_flagged(line):
    assert not bare_figures(line), bare_figures(line)


def test_every_docs_page_is_generated():
    """Pages directly under docs/ come from docs/src/: their figures are filled in and checked."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert page.read_text().startswith("<!-- generated from docs/src/"), (
            f"{page.relative_to(ROOT)}: write it as docs/src/{page.name} and run "
            "scripts/build_readme.py"
        )


# ---- the figure mechanism ---------------------------------------------------------------------


@pytest.fixture()
def tree(tmp_path, monkeypatch):
    """A scratch repository for the builder: one result file, a README head, one section."""
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "readme").mkdir(parents=True)
    (tmp_path / "docs" / "src").mkdir()
    result = {
        "date": "2026-11-24T10:59:58+00:00",
        "results": [
            {"clients": 1, "requests": 100, "seconds": 10.0, "p50_ms": 9.0},
            {"clients": 32, "requests": 3000, "seconds": 10.0, "p50_ms": 40.0},
        ],
        "ratio": {"1": 0.79, "32": 0.91},
        "model.width": 32,
    }
    (tmp_path / "bench" / "results" / "a.json").write_text(json.dumps(result))
    result["results"][1]["requests"] = 2000
    (tmp_path / "bench" / "results" / "b.json").write_text(json.dumps(result))
    (tmp_path / "README.md").write_text("# t\n\nhead\n\n" + build.MARKER + "\n")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "SECTIONS", tmp_path / "docs" / "readme")
    monkeypatch.setattr(build, "PAGE_SOURCES", tmp_path / "docs" / "src")
    monkeypatch.setattr(build, "PAGES", tmp_path / "docs")
    monkeypatch.setattr(build, "ORDER", ("data",))
    monkeypatch.setattr(build, "_json_cache", {})
    monkeypatch.setattr(sys, "argv", ["build_readme.py"])
    return tmp_path


SETS = (
    "<!-- figure-set ab: bench/results/a.json bench/results/b.json -->\n"
    "<!-- figure-set one: bench/results/a.json -->\n"
)


@pytest.mark.parametrize(
    "placeholder,expected",
    [
        ("bench/results/a.json:results[clients=32].p50_ms|.1f", "40.0"),
        ("bench/results/a.json:results.0.requests", "100"),
        ("bench/results/a.json:results[-1].requests|,", "3,000"),
        ("bench/results/a.json:ratio.32|.0%", "91%"),
        ("bench/results/a.json:model\\.width", "32"),
        ("bench/results/a.json:date|date", "2026-11-24"),
        ("bench/results/a.json:date|time", "10:59"),
        ("bench/results/a.json:results.*.p50_ms|range|.0f", "9-40"),
        ("bench/results/a.json:ratio.*|slash|bold<0.8|.2f", "**0.79** / 0.91"),
        ("@ab:results[clients=32].requests|list", "3000, 2000"),
        ("@one:results[clients=32].requests|list", "3000"),
        ("pooled(@ab:results[clients=32])|.0f", "250"),
        ("sum(bench/results/a.json:ratio.* >= 0.8)", "1"),
        ("len(@ab:date)", "2"),
        ("(1 - bench/results/a.json:ratio.1 / bench/results/a.json:ratio.32) * 100|.0f", "13"),
        ("minutes(bench/results/a.json:results.1.seconds * 60)|.0f", "10"),
        (
            "@ab:results.0.p50_ms - bench/results/a.json:results[clients=32].p50_ms|range|.0f",
            "-31",
        ),
    ],
)
def test_placeholder_syntax(tree, placeholder, expected):
    assert build.expand(SETS + "{{" + placeholder + "}}", "t.md") == expected


@pytest.mark.parametrize(
    "placeholder,message",
    [
        ("bench/results/missing.json:x", "bench/results/missing.json: no such file"),
        ("bench/results/a.json:results[clients=8].p50_ms", "no item with clients = 8"),
        ("bench/results/a.json:ratio.128", "no key '128'"),
        ("bench/results/a.json:results.7", "no index '7'"),
        ("bench/results/a.json:results.*.p50_ms", "2 values: add |range"),
        ("pyproject.json:x", "must come from a file under"),
        ("@nope:x", "unknown figure set @nope"),
        ("42", "no FILE:PATH reference"),
        ("bench/results/a.json:date|.1f", "cannot format"),
    ],
)
def test_a_placeholder_that_cannot_be_filled_fails_loudly(tree, placeholder, message):
    with pytest.raises(SystemExit) as exc:
        build.expand("x\n{{" + placeholder + "}}\n", "docs/readme/data.md")
    assert f"docs/readme/data.md:2: {{{{{placeholder}}}}}" in str(exc.value)
    assert message in str(exc.value)


def test_escaped_braces_stay_literal(tree):
    assert build.expand("`\\{{FILE:PATH}}` and {{bench/results/a.json:ratio.1}}", "t.md") == (
        "`{{FILE:PATH}}` and 0.79"
    )
    with pytest.raises(SystemExit, match="without"):
        build.expand("{{bench/results/a.json:ratio.1\n}}", "t.md")


def test_paragraphs_with_figures_are_rewrapped_and_nothing_else(tree):
    text = (
        "A figure {{bench/results/a.json:results[clients=32].requests|,}} in a paragraph\n"
        "that goes on.\n\n"
        "- an item with {{bench/results/a.json:ratio.1}}\n  and more\n\n"
        "| a | {{bench/results/a.json:ratio.1}} |\n|---|---|\n\n"
        "```\nkeep {{bench/results/a.json:ratio.1}}\n   as is\n```\n\n"
        "untouched\nlines\n"
    )
    assert build.expand(text, "t.md") == (
        "A figure 3,000 in a paragraph that goes on.\n\n"
        "- an item with 0.79 and more\n\n"
        "| a | 0.79 |\n|---|---|\n\n"
        "```\nkeep 0.79\n   as is\n```\n\n"
        "untouched\nlines\n"
    )
    long = " ".join(["`code span`"] * 30) + " {{bench/results/a.json:ratio.1}}"
    lines = build.expand(long, "t.md").splitlines()
    assert len(lines) > 1 and all(len(line) <= build.WIDTH for line in lines)
    assert all(line.count("`") % 2 == 0 for line in lines), "a code span was broken"


def test_a_changed_result_file_makes_readme_and_pages_stale(tree):
    (tree / "docs" / "readme" / "data.md").write_text(
        "## Data\n\n{{bench/results/a.json:results[clients=32].requests|,}} requests\n"
    )
    (tree / "docs" / "src" / "bench.md").write_text(
        "# Bench\n\np50 {{bench/results/a.json:results.0.p50_ms|.1f}} ms\n"
    )
    assert build.main() == 0
    assert "3,000 requests" in (tree / "README.md").read_text()
    assert "p50 9.0 ms" in (tree / "docs" / "bench.md").read_text()
    sys.argv = ["build_readme.py", "--check"]
    assert build.main() == 0

    data = json.loads((tree / "bench" / "results" / "a.json").read_text())
    data["results"][1]["requests"] = 3100
    data["results"][0]["p50_ms"] = 9.5
    (tree / "bench" / "results" / "a.json").write_text(json.dumps(data))
    build._json_cache.clear()
    assert build.main() == 1

    sys.argv = ["build_readme.py"]
    assert build.main() == 0
    assert "3,100 requests" in (tree / "README.md").read_text()
    (tree / "docs" / "src" / "bench.md").unlink()
    sys.argv = ["build_readme.py", "--check"]
    assert build.main() == 1, "a page whose source is gone is stale"


# ---- links ------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {
        build.anchor(line.lstrip("#").strip()) for line in text.splitlines() if line.startswith("#")
    }


def _links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return [a or b for a, b in LINK.findall(text)]


def test_relative_links_resolve():
    """Every relative link of README.md and docs/*.md names an existing file, and an existing
    heading when it has a #fragment."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for link in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
                continue
            target, _, fragment = link.partition("#")
            path = (page.parent / unquote(target)).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such file)")
            elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "\n".join(broken)
