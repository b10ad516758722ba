"""Take the README's screenshot of the serving page (docs/serve-page.png).

Starts `ganforge serve` on trained runs, opens the page in headless Chromium with its settings
in the address (the page reads `?model=&class=&grid=&seed=&truncation=` and generates at once),
saves the screenshot and stops the server:

    python scripts/screenshot_page.py --model demo=runs/demo \\
        [--query 'class=all&grid=6&seed=7'] [--out docs/serve-page.png] [--size 1280x1030]

Needs Chromium (Debian package `chromium`). The server runs on a Ray cluster of its own
(RAY_ADDRESS=local), whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"error: ganforge serve exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"error: {url} did not answer within {timeout:.0f} s")


def screenshot(url: str, out: Path, size: str, budget_ms: int) -> None:
    browser = next(shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b))
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--window-size={size.replace('x', ',')}",
            # Virtual time stops while requests are pending: the grid is in when it runs out.
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            url,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=RUN_DIR (repeatable)")
    ap.add_argument("--query", default="class=all&grid=6&seed=7", help="the page's settings")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve-page.png")
    ap.add_argument("--size", default="1280x1030", help="window WIDTHxHEIGHT")
    ap.add_argument("--budget-ms", type=int, default=20000, help="page time before the shot")
    ap.add_argument("--start-timeout", type=float, default=600, help="seconds for serve to start")
    args = ap.parse_args()
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser")):
        sys.exit("error: no chromium on PATH (apt-get install chromium)")

    port = free_port()
    models = [a for m in args.model for a in ("--model", m)]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    ganforge = [sys.executable, "-m", "ganforge.cli", "serve", *models]
    server = subprocess.Popen([*ganforge, "--host", "127.0.0.1", "--port", str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/healthz", server, args.start_timeout)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(f"{base}/?{args.query}", args.out, args.size, args.budget_ms)
    finally:
        server.send_signal(signal.SIGTERM)  # serve's clean stop: the Ray cluster goes with it
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
