"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): one
browser for many page states, so a test opens a page, changes its URL hash or its controls, and
reads what it shows in milliseconds instead of a browser start per state.

    with Browser() as b:
        b.open("file:///.../report.html#class=3")
        b.eval("document.title")
        b.dialogs   # JavaScript dialogs (alert, confirm) the pages opened: must stay empty

The binary: $XAIFAST_CHROMIUM, else `chromium` (Debian's package; `make test` installs it),
`chromium-browser`, `google-chrome`. `find_chromium()` is None when there is none.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Optional

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    given = os.environ.get("XAIFAST_CHROMIUM")
    if given:
        return shutil.which(given) or (given if os.path.isfile(given) else None)
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, binary: Optional[str] = None, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise RuntimeError("no Chromium found (apt-get install chromium, or set XAIFAST_CHROMIUM)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="xaifast-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends above 9, so that moving them to 3 and 4 never overwrites one with the other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r, from_browser_w = high
        args = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--window-size=1280,2000", "about:blank"]
        def to_3_and_4():  # the protocol's pipe: the browser reads fd 3 and writes fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=to_3_and_4,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self._replies = {}
        self.events = []
        self.dialogs = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    # ------------------------------------------------------------------ protocol
    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params):
        self._id += 1
        my_id = self._id
        message = {"id": my_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while my_id not in self._replies:
            reply = self._read(deadline)
            if "id" in reply:
                self._replies[reply["id"]] = reply
            else:
                self._event(reply)  # may call() itself (a dialog is answered)
        reply = self._replies.pop(my_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _event(self, event: dict) -> None:
        self.events.append(event)
        if event.get("method") == "Page.javascriptDialogOpening":
            self.dialogs.append(event["params"].get("message"))
            self.call("Page.handleJavaScriptDialog", session=True, accept=True)

    # ------------------------------------------------------------------ pages
    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: Optional[float] = None):
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited for {expression}")
            time.sleep(0.02)

    def screenshot(self, x: float, y: float, width: float, height: float):
        """What the page paints in a rectangle of CSS pixels: RGB uint8 [h, w, 3] (a PNG from Chromium)."""
        import base64

        import cv2
        import numpy as np

        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip=dict(x=x, y=y, width=width, height=height, scale=1))
        image = cv2.imdecode(np.frombuffer(base64.b64decode(shot["data"]), np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
