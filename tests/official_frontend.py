"""ComfyUI's official frontend in a browser: where its files are, and what a page load logs.

Used by tests/test_official_frontend.py (against our server) and bench/frontend_check.py (the
same steps against our server or ComfyUI's, printing the counts). The pinned version is the
installed comfyui-frontend-package (our `test` extra); another version is fetched with pip into
a cache folder once and unpacked, never downloaded by other means.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from server.frontend import FRONTEND_DIST, installed_version, package_folder

PINNED = "1.27.10"  # what ComfyUI a125cd84 pins
NEWEST = "1.58.1"  # the newest release when this was written
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentgraph-tests" / "frontend"
READY = "window.app && window.app.graph && window.comfyAPI && document.querySelector('canvas')"


def frontend_root(version: str) -> Path:
    """The static folder of comfyui-frontend-package `version`: the installed one when it matches,
    else a wheel that pip fetches into CACHE (once) and that is unpacked there."""
    if installed_version(FRONTEND_DIST) == version:
        return package_folder("comfyui_frontend_package", "static")
    target = CACHE / version
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(wheels), f"{FRONTEND_DIST}=={version}"], check=True)
    wheel = next(wheels.glob(f"comfyui_frontend_package-{version}-*.whl"))
    partial = target.with_name(version + ".partial")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(partial)
    partial.rename(target)  # complete or absent: a cut-short unpack is never taken for a frontend
    return static


@dataclass
class PageLog:
    """Failed requests (HTTP status >= 400, or no response at all) and console errors of a page.

    A request the page abandons after its response arrived (net::ERR_ABORTED once the frontend
    has read the status) is not a failure. Requests to other hosts are counted apart: the
    frontend asks api.comfy.org for release notes, which fails offline against any server.
    """
    host: str
    failed: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    _answered: set = field(default_factory=set)

    def attach(self, page) -> "PageLog":
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)
        page.on("console", lambda m: self.console.append(m.text[:300]) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {str(e)[:300]}"))
        return self

    def _describe(self, request, outcome) -> tuple[bool, str]:
        url = urlsplit(request.url)
        local = url.netloc == self.host
        path = url.path + (f"?{url.query}" if url.query else "")
        return local, f"{outcome} {request.method} {path if local else request.url}"

    def _on_response(self, response) -> None:
        request = response.request
        self._answered.add(request)
        if response.status >= 400:
            local, text = self._describe(request, response.status)
            (self.failed if local else self.external).append(text)

    def _on_failed(self, request) -> None:
        if request in self._answered or request.url.startswith(("blob:", "data:")):
            return
        local, text = self._describe(request, request.failure)
        (self.failed if local else self.external).append(text)

    def counts(self) -> dict[str, int]:
        return {"failed requests": len(self.failed), "failed external requests": len(self.external),
                "console errors": len(self.console)}


def open_frontend(page, url: str, settle_ms: int = 3000, timeout_ms: int = 90000) -> None:
    """Load the frontend, wait until its app is up and the network is quiet, then a little more
    (settings writes and the template browser come after the first idle moment)."""
    page.goto(url, timeout=timeout_ms)
    page.wait_for_function(READY, timeout=timeout_ms)
    page.wait_for_load_state("networkidle", timeout=timeout_ms)
    page.wait_for_timeout(settle_ms)
    page.wait_for_load_state("networkidle", timeout=timeout_ms)
