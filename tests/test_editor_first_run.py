"""The editor as a new user meets it: the default workflow fits a 1280x800 window, R and the
Refresh button bring in files added after the page loaded, an opened workflow does not inherit
the previous one's error list, and a workflow's missing input picture is named and filled by one
upload."""
from __future__ import annotations

import json
from pathlib import Path

from tests.editor_helpers import (  # noqa: F401  (fixtures)
    EditorPage, browser, editor, editor_server, needs_browser,
)
from tests.paths import REPO

pytestmark = needs_browser

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
GEOMETRY = """() => {
  const c = lgApp.canvas, r = document.getElementById('graph-canvas').getBoundingClientRect();
  return {canvas: [r.left, r.top, r.right, r.bottom], scale: c.scale,
    nodes: lgApp.graph.nodes.map((n) => [n.type, ...c.toClient(n.pos[0], n.pos[1] - 30),
                                          ...c.toClient(n.pos[0] + n.size[0], n.pos[1] + n.size[1])])};
}"""


def test_the_default_workflow_and_the_toolbar_fit_a_1280x800_window(browser, editor_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        ed = EditorPage(page, editor_server.url + "/").open()
        geometry = ed.js(GEOMETRY)
        left, top, right, bottom = geometry["canvas"]
        assert right <= 1280 and bottom <= 800
        assert len(geometry["nodes"]) == 7
        for node_type, x1, y1, x2, y2 in geometry["nodes"]:
            assert left <= x1 and x2 <= right and top <= y1 and y2 <= bottom, (node_type, geometry)
        assert geometry["scale"] >= 0.75  # fitted, and still readable
        # every toolbar control is on screen, on the toolbar's one row
        bar = page.locator("#toolbar").bounding_box()
        for box in page.locator("#toolbar > button, #toolbar > span, #toolbar > label").all():
            if box.is_visible():
                b = box.bounding_box()
                assert b["x"] + b["width"] <= 1280 and b["y"] + b["height"] <= bar["y"] + bar["height"] + 0.5, \
                    box.inner_text()
        assert ed.errors == []
    finally:
        context.close()


def _choices(editor, node_id: int, name: str) -> list[str]:
    return editor.js("([id, name]) => lgApp.graph.getNode(id).widget(name).choices", [node_id, name])


def test_r_and_the_refresh_button_list_files_added_after_the_page_loaded(editor, editor_server):
    page = editor.page
    base = Path(editor_server.base)
    page.click("#default-button")
    checkpoint = base / "models" / "checkpoints" / "added-after-load.safetensors"
    picture = base / "input" / "added-after-load.png"
    try:
        assert "added-after-load.safetensors" not in _choices(editor, 4, "ckpt_name")
        checkpoint.write_bytes(b"not a real model: only listed")
        page.locator("#graph-canvas").focus()
        page.keyboard.press("r")
        page.wait_for_function("lgApp.graph.getNode(4).widget('ckpt_name').choices"
                               ".includes('added-after-load.safetensors')")
        assert len(editor.summary()["nodes"]) == 7  # the graph is still there
        assert editor.js("lgApp.graph.getNode(4).widget('ckpt_name').value") == CHECKPOINT  # values kept
        assert "Refreshed node definitions and model lists" in editor.js("lgApp.notifier.history.map((h) => h.message)")

        editor.load_prompt({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
        from PIL import Image
        Image.new("RGB", (8, 8), (200, 30, 30)).save(picture)
        assert "added-after-load.png" not in _choices(editor, 1, "image")
        page.click("#refresh-button")
        page.wait_for_function("lgApp.graph.getNode(1).widget('image').choices.includes('added-after-load.png')")
        # the queue panel's button says what it reloads
        page.click("#panel-button")
        assert page.locator("#queue-refresh").inner_text() == "Refresh queue"
    finally:
        checkpoint.unlink(missing_ok=True)
        picture.unlink(missing_ok=True)


def test_opening_another_workflow_clears_the_previous_error_list(editor, editor_server):
    editor.allowed_errors = ["status of 400"]
    page = editor.page
    listing = page.locator(".error-list")
    base = Path(editor_server.base)

    page.click("#default-button")
    page.click("#queue-button")  # no checkpoint on this server: the list names the folder to fill
    listing.wait_for()
    assert f"no files in the checkpoints folder {base / 'models' / 'checkpoints'}" in listing.inner_text()
    # open an API-format workflow file, as the examples are
    page.set_input_files("#lg-open-input", str(REPO / "examples" / "img2img.json"))
    page.wait_for_function("lgApp.graph.nodes.some((n) => n.type === 'VAEEncode')")
    assert listing.count() == 0 and editor.js("lgApp.runState.errors.size") == 0

    page.click("#queue-button")
    listing.wait_for()
    page.click("#new-button")
    assert listing.count() == 0 and editor.js("lgApp.runState.errors.size") == 0

    page.click("#default-button")
    page.click("#queue-button")
    listing.wait_for()
    page.click("#default-button")  # a UI-format workflow
    assert listing.count() == 0


def test_a_missing_input_picture_is_named_and_one_upload_fills_every_node_waiting_for_it(editor, editor_server):
    page = editor.page
    target = Path(editor_server.base) / "input" / "example_input.png"
    target.unlink(missing_ok=True)
    prompt = json.loads((REPO / "examples" / "img2img.json").read_text())
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "example_input.png"}}
    prompt["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    try:
        editor.load_prompt(prompt)
        toasts = editor.js("lgApp.notifier.history.map((h) => h.message)")
        assert any("Not in the server's input folder: example_input.png." in t for t in toasts), toasts
        editor.js("lgApp.upload.target = lgApp.graph.getNode(2)")
        page.set_input_files("#lg-upload-input", str(REPO / "examples" / "example_input.png"))
        page.wait_for_function("lgApp.graph.getNode(20).widget('image').choices.includes('example_input.png')")
        for node_id in (2, 20):
            assert editor.js(f"lgApp.graph.getNode({node_id}).widget('image').value") == "example_input.png"
        assert target.read_bytes() == (REPO / "examples" / "example_input.png").read_bytes()
    finally:
        target.unlink(missing_ok=True)
