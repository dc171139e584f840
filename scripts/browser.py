#!/usr/bin/env python3
"""Renders a page in real headless Chromium and prints its DOM once the page says it is ready.

Used by the dashboard's end-to-end test. Chromium's own `--dump-dom` cannot wait for a page
that keeps a live connection open (the dashboard's server-sent events stop its virtual clock),
so this drives Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: no
port, no websocket library): open the URL, evaluate `--wait-for` until it is true, print
`document.documentElement.outerHTML`, and optionally save a PNG screenshot.

    python3 scripts/browser.py http://127.0.0.1:9466/ \\
        --wait-for "document.body.dataset.loaded === 'true'" --screenshot dashboard.png

Exit status: 0 rendered, 1 the condition never held (the DOM so far goes to stderr), 2 usage
or no Chromium (install Debian's `chromium`: `make setup`).
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    """One headless Chromium and a DevTools session on one page."""

    def __init__(self, binary, width, height):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="waymark-chromium-")

        def wire_pipes():
            # Chromium reads commands on fd 3 and writes replies on fd 4. Copy both out of the
            # way first: a pipe end may itself be fd 3 or 4, and dup2 onto itself would leave
            # it close-on-exec.
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(r, 3, inheritable=True)
            os.dup2(w, 4, inheritable=True)

        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={self._profile}",
             f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self._session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited while waiting for {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None
        return result["result"].get("value")

    def close(self):
        try:
            self._session = None
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--wait-for", default="document.readyState === 'complete'",
                        help="JavaScript expression that is true once the page is ready")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it")
    parser.add_argument("--screenshot", help="save a PNG of the page here")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args()

    binary = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if not binary:
        print("browser.py: no Chromium on PATH; install Debian's chromium (make setup)", file=sys.stderr)
        return 2
    browser = Browser(binary, args.width, args.height)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=args.url)
        deadline = time.monotonic() + args.timeout
        while browser.evaluate(args.wait_for) is not True:
            if time.monotonic() > deadline:
                print(f"browser.py: `{args.wait_for}` still not true after {args.timeout}s on {args.url}",
                      file=sys.stderr)
                print(browser.evaluate("document.documentElement.outerHTML"), file=sys.stderr)
                return 1
            time.sleep(0.2)
        dom = browser.evaluate("document.documentElement.outerHTML")
        if args.screenshot:
            png = browser.call("Page.captureScreenshot", format="png")["data"]
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(png))
        print(dom)
        return 0
    finally:
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
