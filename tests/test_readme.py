"""The README is the product's manual: it must hold every area's section, up to date."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
