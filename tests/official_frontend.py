"""ComfyUI's official frontend in a browser: where its files are, and what a page load logs.

Used by tests/test_official_frontend.py (against our server) and bench/frontend_check.py (the
same steps against our server or ComfyUI's, printing the counts). The pinned version is the
installed comfyui-frontend-package (our `test` extra); another version is fetched with pip into
a cache folder once and unpacked, never downloaded by other means.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from server.frontend import FRONTEND_DIST, installed_version, package_folder
from tests.server_helpers import cache_lock

PINNED = "1.27.10"  # what ComfyUI a125cd84 pins
NEWEST = "1.58.1"  # the newest release when this was written
# Newer frontends apply progress once per animation frame and drop what is pending when the next
# node starts, so a sampler that finishes within one frame never shows progress. On the tiny
# checkpoint a step takes milliseconds, and a machine under load draws few frames (CI once saw only
# the loader's progress with 30 steps); this many steps spans seconds, so several frames.
STEPS = 300
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentgraph-tests" / "frontend"
READY = "window.app && window.app.graph && window.comfyAPI && document.querySelector('canvas')"


def frontend_root(version: str) -> Path:
    """The static folder of comfyui-frontend-package `version`: the installed one when it matches,
    else a wheel that pip fetches into CACHE (once) and that is unpacked there."""
    if installed_version(FRONTEND_DIST) == version:
        return package_folder("comfyui_frontend_package", "static")
    target = CACHE / version
    static = target / "comfyui_frontend_package" / "static"
    with cache_lock(CACHE):
        if (static / "index.html").is_file():
            return static
        wheels = CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", str(wheels), f"{FRONTEND_DIST}=={version}"], check=True)
        wheel = next(wheels.glob(f"comfyui_frontend_package-{version}-*.whl"))
        partial = target.with_name(version + ".partial")
        shutil.rmtree(partial, ignore_errors=True)   # what a killed run left behind
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

    def attach(self, page) -> PageLog:
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

    def kinds(self) -> set[str]:
        """Console errors without what varies between runs and servers: addresses, stack traces."""
        return {re.sub(r"https?://[^/\s]+", "", message.split("\n", 1)[0]).strip() for message in self.console}

    def external_hosts(self) -> set[str]:
        return {urlsplit(line.rsplit(" ", 1)[-1]).netloc for line in self.external}

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


# -- the steps a user takes, shared by the test and bench/frontend_check.py --------------------

SAVED_NAME = "lg saved txt2img"
SEED = 424242  # marks the saved workflow, to know it is the one that comes back


def txt2img_workflow(checkpoint: str = "v1-5-pruned-emaonly-fp16.safetensors") -> dict:
    """ComfyUI's default text-to-image graph (UI format), at 64x64 and STEPS steps."""
    from tests.editor_helpers import ui_node, ui_workflow

    def out(name, kind):
        return {"name": name, "type": kind, "links": []}

    def inp(name, kind):
        return {"name": name, "type": kind, "link": None}

    nodes = [
        ui_node(4, "CheckpointLoaderSimple", (20, 300), [checkpoint],
                outputs=[out("MODEL", "MODEL"), out("CLIP", "CLIP"), out("VAE", "VAE")]),
        ui_node(5, "EmptyLatentImage", (420, 560), [64, 64, 1], outputs=[out("LATENT", "LATENT")]),
        ui_node(6, "CLIPTextEncode", (420, 80), ["a glass bottle"], inputs=[inp("clip", "CLIP")],
                outputs=[out("CONDITIONING", "CONDITIONING")]),
        ui_node(7, "CLIPTextEncode", (420, 320), ["text, watermark"], inputs=[inp("clip", "CLIP")],
                outputs=[out("CONDITIONING", "CONDITIONING")]),
        ui_node(3, "KSampler", (820, 80), [SEED, "fixed", STEPS, 8, "euler", "normal", 1],
                inputs=[inp("model", "MODEL"), inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"),
                        inp("latent_image", "LATENT")], outputs=[out("LATENT", "LATENT")]),
        ui_node(8, "VAEDecode", (1160, 80), [], inputs=[inp("samples", "LATENT"), inp("vae", "VAE")],
                outputs=[out("IMAGE", "IMAGE")]),
        ui_node(9, "SaveImage", (1160, 240), ["ComfyUI"], inputs=[inp("images", "IMAGE")]),
    ]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
             [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
             [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]
    return ui_workflow(nodes, links)


def load_workflow(page, workflow: dict) -> None:
    """Close the first-visit dialog and open `workflow`, as a user opening a file does."""
    page.keyboard.press("Escape")
    page.evaluate("wf => app.loadGraphData(wf)", workflow)
    page.wait_for_function("app.graph._nodes.some(n => n.type === 'KSampler')")


def widget_values(page, node_id: int) -> list:
    return page.evaluate("id => app.graph.getNodeById(id).widgets.map(w => w.value)", node_id)


def set_widget(page, node_id: int, name: str, value) -> None:
    """What the frontend does when a user picks a value: set it and call the widget's callback."""
    page.evaluate("""([id, name, value]) => {
        const w = app.graph.getNodeById(id).widgets.find(w => w.name === name);
        w.value = value;
        w.callback?.(value, app.canvas, app.graph.getNodeById(id));
        app.graph.setDirtyCanvas(true, true);
    }""", [node_id, name, value])


def press_run_and_watch(page, timeout_ms: int = 120000) -> list:
    """Press Run; returns what the frontend showed while the prompt ran: distinct
    [running node id, progress {value, max, node}] pairs, until Save Image has its image."""
    page.evaluate("""() => {
        window.__lgSeen = [];
        const look = () => {
            const p = app.progress;
            window.__lgSeen.push(JSON.stringify([app.runningNodeId ?? null, p ? {value: p.value, max: p.max,
                                                 node: String(p.node)} : null]));
            if (!window.__lgStop) requestAnimationFrame(look);
        };
        look();
    }""")
    page.locator("button:has-text('Run')").first.click()
    page.wait_for_function("(app.nodeOutputs['9']?.images?.length ?? 0) > 0", timeout=timeout_ms)
    return page.evaluate("() => { window.__lgStop = true; return [...new Set(window.__lgSeen)].map(JSON.parse); }")


def save_to_server(page, name: str = SAVED_NAME) -> None:
    """Ctrl+S, type the name into the frontend's prompt, Enter; returns once the server stored it."""
    with page.expect_response(lambda r: "/api/userdata/workflows%2F" in r.url and r.request.method == "POST") as saved:
        page.keyboard.press("Control+s")
        page.locator("input:focus").wait_for()
        page.keyboard.type(name)
        page.keyboard.press("Enter")
    assert saved.value.status == 200, saved.value.status


def open_from_sidebar(page, name: str = SAVED_NAME) -> None:
    """Open the Workflows sidebar (its 'w' key) and click the saved workflow."""
    page.keyboard.press("Escape")
    page.keyboard.press("w")
    item = page.locator("[role=treeitem]", has_text=name).first
    item.click()
    page.wait_for_function("name => app.extensionManager.workflow.activeWorkflow?.path === `workflows/${name}.json`",
                           arg=name)
    page.wait_for_function("app.graph._nodes.some(n => n.type === 'KSampler')")
