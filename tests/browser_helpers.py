"""Headless Chromium driven as a user drives it: clicks, keys and file choosers sent through the
DevTools protocol (a websocket; the `websockets` package), and the page read back with
JavaScript. Tests skip with a reason where no Chromium is installed."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Windows virtual key codes of the keys the tests press (CDP's dispatchKeyEvent needs them).
KEYS = {"Tab": 9, "Enter": 13, "ArrowDown": 40, "ArrowUp": 38, "Escape": 27}


def find_chromium() -> str:
    import pytest

    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(
            "no chromium binary on this machine (apt: `chromium`; .ci/run installs it); the "
            "page is still served and its API calls are tested"
        )
    return browser


class Page:
    """One tab of a headless Chromium started for it; `close()` ends the browser."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900, timeout: float = 60):
        from websockets.sync.client import connect

        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._id = 0
        self.proc = subprocess.Popen(
            [
                find_chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",  # the port it took is written to the profile
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc.kill()
                raise RuntimeError(f"chromium did not start: {err[-2000:]}")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout)
        target = self.send("Target.createTarget", url="about:blank", session=False)["targetId"]
        attached = self.send("Target.attachToTarget", targetId=target, flatten=True, session=False)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "DOM"):
            self.send(f"{domain}.enable")

    def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        """One protocol command; its result (events that arrive meanwhile are kept)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + self.timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        out = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll until `expression` is truthy; TimeoutError with the page's status line."""
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        status = self.js("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise TimeoutError(f"not true after {timeout or self.timeout}s: {expression}\n{status}")

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as a mouse sends it."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def press(self, key: str) -> None:
        """A named key (KEYS) or one printable character, down and up."""
        # Letters and digits are their own key codes; others (e.g. "." is 190, while 46 is
        # Delete) go by their text only.
        printable = len(key) == 1 and key.isascii() and key.isalnum()
        code = KEYS.get(key, ord(key.upper()) if printable else 0)
        text = {"Enter": "\r"}.get(key, key if len(key) == 1 else "")
        down = {"key": key, "windowsVirtualKeyCode": code}
        self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **down)
        self.send("Input.dispatchKeyEvent", type="keyUp", **down)

    def type(self, text: str) -> None:
        """Type `text` into the focused field, key by key."""
        for ch in text:
            self.press(ch)

    def focused(self) -> str:
        return self.js("document.activeElement ? document.activeElement.id : ''")

    def choose_files(self, selector: str, paths: list[Path]) -> None:
        """What the file chooser does once the user picked `paths`."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def allow_downloads(self, folder: Path) -> None:
        self.send(
            "Browser.setDownloadBehavior",
            session=False,
            behavior="allow",
            downloadPath=str(folder),
            eventsEnabled=True,
        )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
