"""Failed requests and console errors of ComfyUI's official frontend, against our server or ComfyUI.

    python bench/frontend_check.py                      # ours, the pinned and the newest frontend
    python bench/frontend_check.py --server comfyui     # the same steps against ComfyUI
    python bench/frontend_check.py --versions 1.58.1 --repeat 3

Each round starts the server on a fresh base directory (so the frontend sees a first visit),
opens the frontend in a fresh headless Chromium context (Debian's /usr/bin/chromium), waits
until the app is up and the network has been quiet for a while, and prints what failed
(tests/official_frontend.py: PageLog). ComfyUI is run from --comfyui with --comfyui-python
(default: ComfyUI checked out at /work/ref, see HELPERS.md); its own frontend package is not
used, both servers get the same --front-end-root.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.editor_helpers import VIEWPORT, launch, sync_playwright  # noqa: E402
from tests.official_frontend import NEWEST, PINNED, PageLog, frontend_root, open_frontend  # noqa: E402
from tests.server_helpers import LiveServer  # noqa: E402


class ComfyUIServer:
    def __init__(self, base: Path, root: Path, comfyui: Path, python: str):
        self.base, self.root, self.comfyui, self.python = base, root, comfyui, python
        self.proc = None
        self.url = ""

    def start(self, timeout: float = 180) -> "ComfyUIServer":
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:  # ComfyUI cannot report a port it picked itself
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(self.base / "comfyui.log", "wb")
        self.proc = subprocess.Popen([self.python, str(self.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1",
                                      "--port", str(port), "--base-directory", str(self.base),
                                      "--front-end-root", str(self.root)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=str(self.comfyui))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(rb"To see the GUI go to", (self.base / "comfyui.log").read_bytes()):
                self.url = f"http://127.0.0.1:{port}"
                return self
            if self.proc.poll() is not None:
                raise RuntimeError((self.base / "comfyui.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("ComfyUI did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def one_round(server_kind: str, version: str, args, playwright) -> PageLog:
    root = frontend_root(version)
    with tempfile.TemporaryDirectory(prefix="frontend-check-") as tmp:
        base = Path(tmp)
        if server_kind == "comfyui":
            server = ComfyUIServer(base, root, Path(args.comfyui), args.comfyui_python).start()
        else:
            server = LiveServer(base, "--front-end-root", str(root), packs=()).start()
        try:
            browser = launch(playwright)
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            log = PageLog(server.url.split("//", 1)[1]).attach(page)
            open_frontend(page, server.url + "/", settle_ms=args.settle_ms)
            browser.close()
            return log
        finally:
            server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", choices=["ours", "comfyui"], default="ours")
    p.add_argument("--versions", nargs="+", default=[PINNED, NEWEST])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--settle-ms", type=int, default=5000)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI", "/work/ref/ComfyUI"))
    p.add_argument("--comfyui-python", default=os.environ.get("COMFYUI_PYTHON", "/work/ref/venv/bin/python"))
    args = p.parse_args()
    with sync_playwright() as playwright:
        for version in args.versions:
            for round_no in range(1, args.repeat + 1):
                log = one_round(args.server, version, args, playwright)
                counts = ", ".join(f"{v} {k}" for k, v in log.counts().items())
                print(f"{args.server} + frontend {version} (round {round_no}): {counts}")
                for line in log.failed + log.external:
                    print(f"    request: {line}")
                for line in log.console:
                    print(f"    console: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
