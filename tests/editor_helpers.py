"""Browser tests of the graph editor: a real server, Debian's Chromium driven by Playwright.

The browser is never downloaded: Playwright launches /usr/bin/chromium. Tests that need it are
skipped (with the reason) where Chromium or the Playwright package is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.server_helpers import LiveServer
from tests import paths

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 850}
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
SHARED_WORKFLOWS = paths.SHARED_WORKFLOWS

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
    PlaywrightTimeout = TimeoutError


def browser_missing() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


if browser_missing() and os.environ.get("CI"):
    # .ci/run installs both; in CI a missing browser is a broken setup, not a reason to skip
    raise RuntimeError(f"browser tests cannot run in CI: {browser_missing()}")
needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")

EXTENSION_JS = textwrap.dedent("""\
    import { app } from "../../scripts/app.js";
    app.registerExtension({
      name: "lg.editor.test",
      setup() { window.__lgTestExtension = "setup"; },
      nodeCreated(node) { (window.__lgCreated ||= []).push(node.type); },
    });
""")


def install_extension_pack(base: Path) -> None:
    """A node pack whose only content is a web extension, as custom nodes ship them."""
    pack = base / "custom_nodes" / "lg_editor_ext"
    (pack / "web").mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text('NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = "./web"\n')
    (pack / "web" / "ext.js").write_text(EXTENSION_JS)


def start_server(base: Path, *flags: str) -> LiveServer:
    base.mkdir(parents=True, exist_ok=True)
    install_extension_pack(base)
    return LiveServer(base, *flags, packs=("lg_test_nodes.py", "lg_preview_nodes.py")).start()


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode())


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


class EditorPage:
    """A page of the editor plus what it logged; helpers read state through window.lgApp."""

    def __init__(self, page, url: str):
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def open(self) -> "EditorPage":
        self.page.goto(self.url)
        self.page.wait_for_function("window.lgApp && window.lgApp.api && window.lgApp.graph", timeout=15000)
        self.page.evaluate("lgApp.ready")
        self.page.wait_for_function("lgApp.api.state === 'connected'", timeout=15000)
        return self

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def summary(self) -> dict:
        return self.js("lgApp.summary()")

    def nodes_of(self, node_type: str) -> list[dict]:
        return [n for n in self.summary()["nodes"] if n["type"] == node_type]

    def load(self, workflow: dict) -> None:
        assert self.js("wf => lgApp.loadWorkflowData(wf, 'test')", workflow)

    def load_prompt(self, prompt: dict) -> None:
        self.js("p => lgApp.loadPrompt(p)", prompt)

    def socket(self, node_id: int, kind: str, slot: int) -> tuple[float, float]:
        x, y = self.js("([id, kind, slot]) => lgApp.socketClientPos(id, kind, slot)", [node_id, kind, slot])
        return x, y

    def widget_rect(self, node_id: int, name: str) -> dict:
        rect = self.js("([id, name]) => lgApp.widgetClientRect(id, name)", [node_id, name])
        assert rect, f"node {node_id} shows no widget {name}"
        return rect

    def title(self, node_id: int) -> tuple[float, float]:
        x, y = self.js("id => lgApp.titleClientPos(id)", node_id)
        return x, y

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move(*end, steps=steps)
        mouse.up()

    def search_add(self, at: tuple[float, float], query: str) -> dict:
        """Double-click the canvas, type into the search box, press Enter: the new node."""
        before = {n["id"] for n in self.summary()["nodes"]}
        self.page.mouse.dblclick(*at)
        box = self.page.locator(".search-box input")
        box.wait_for(state="visible", timeout=5000)
        box.type(query)
        self.page.keyboard.press("Enter")
        self.page.wait_for_function("n => lgApp.graph.nodes.length > n", arg=len(before), timeout=5000)
        added = [n for n in self.summary()["nodes"] if n["id"] not in before]
        assert len(added) == 1, added
        return added[0]

    def wait_idle(self, timeout: float = 20000) -> None:
        self.page.wait_for_function("!lgApp.runState.runningPrompt && lgApp.runState.queueRemaining === 0",
                                    timeout=timeout)


def ui_node(node_id: int, node_type: str, pos: tuple[int, int], widgets: list | dict | None = None,
            inputs: list | None = None, outputs: list | None = None, **extra) -> dict:
    node = {"id": node_id, "type": node_type, "pos": list(pos), "size": [260, 120], "flags": {}, "order": 0,
            "mode": 0, "inputs": inputs or [], "outputs": outputs or [], "properties": {},
            "widgets_values": widgets if widgets is not None else []}
    node.update(extra)
    return node


def ui_workflow(nodes: list[dict], links: list[list]) -> dict:
    """A UI-format document; inputs' and outputs' link fields are filled in from `links`."""
    by_id = {n["id"]: n for n in nodes}
    for link_id, origin, oslot, target, tslot, _type in links:
        outs = by_id[origin]["outputs"]
        outs[oslot].setdefault("links", [])
        outs[oslot]["links"] = (outs[oslot]["links"] or []) + [link_id]
        by_id[target]["inputs"][tslot]["link"] = link_id
    for order, node in enumerate(nodes):
        node["order"] = order
    return {"last_node_id": max(by_id), "last_link_id": max([l[0] for l in links], default=0), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def copy_artifact(src: Path, name: str) -> None:
    shutil.copy(src, artifact(name))


# -- fixtures (imported by the test modules) ---------------------------------------------------
# One server serves all editor test modules: each module imports these fixtures, which pytest
# registers per module, so the instance is kept here and stopped once at the end. The browser is
# per module: Playwright's sync API holds an event loop that other modules' asyncio.run() must
# not see.

_shared: dict[str, Any] = {}


def _stop_shared_server() -> None:
    if "server" in _shared:
        _shared.pop("server").stop()


@pytest.fixture(scope="session")
def editor_server(tmp_path_factory, request):
    if "server" not in _shared:
        _shared["server"] = start_server(tmp_path_factory.mktemp("editor"))
        request.session.config.add_cleanup(_stop_shared_server)
    return _shared["server"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def editor(browser, editor_server):
    """A fresh browser context (empty localStorage) with the editor open and connected.

    Console errors fail the test unless it sets `editor.allowed_errors` to substrings it expects
    (Chromium logs a 400 answer to fetch as a console error, for instance)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15000)
    ed = EditorPage(page, editor_server.url + "/")
    ed.context = context
    ed.server = editor_server
    ed.allowed_errors = []
    ed.open()
    yield ed
    unexpected = [e for e in ed.errors if not any(a in e for a in ed.allowed_errors)]
    context.close()
    assert not unexpected, unexpected
