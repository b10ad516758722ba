"""Assemble README.md: the hand-written head (up to the marker) + docs/readme/*.md in a fixed order.

Each product area keeps its README section in its own file so that changes to different areas do
not collide; `tests/test_readme.py` fails when README.md is out of date.
Usage: python scripts/build_readme.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- sections below are generated from docs/readme/*.md by scripts/build_readme.py -->"
# Reading order: from data to training to what users do with the result, then the internals.
ORDER = ("data", "train", "distributed", "kernels", "quality", "serve", "deploy", "architecture")


def sections() -> list[Path]:
    found = {p.stem: p for p in (ROOT / "docs" / "readme").glob("*.md")}
    unknown = sorted(set(found) - set(ORDER))
    if unknown:
        raise SystemExit(f"docs/readme: add {unknown} to ORDER in scripts/build_readme.py")
    return [found[name] for name in ORDER if name in found]


def render() -> str:
    head = (ROOT / "README.md").read_text().split(MARKER)[0].rstrip() + "\n\n"
    titles = [title for p in sections() for title in headings(p)]
    toc = "## Contents\n\n" + "".join(f"- [{title}](#{anchor(title)})\n" for title in titles)
    body = "\n".join(p.read_text().rstrip() + "\n" for p in sections())
    return head + MARKER + "\n\n" + toc + "\n" + body


def headings(path: Path) -> list[str]:
    """Every level-2 heading of a section file (a file may hold more than one section)."""
    return [line[3:].strip() for line in path.read_text().splitlines() if line.startswith("## ")]


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main() -> int:
    text, readme = render(), ROOT / "README.md"
    if "--check" in sys.argv:
        if readme.read_text() != text:
            print("README.md is out of date: run python scripts/build_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
