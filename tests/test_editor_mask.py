"""The editor's mask painter ("Open in MaskEditor") in a real browser: paint and erase with the
mouse, save through POST /upload/mask, and check the file the server wrote and the MASK that
LoadImage makes of it. Painted = masked = alpha 0, as in ComfyUI."""
from __future__ import annotations

import base64
import io
import math
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from app.env import Environment
from app.folders import FolderPaths
from graph.context import NodeContext
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.image import LoadImage
from tests.editor_helpers import (  # noqa: F401  (fixtures)
    EditorPage, artifact, browser, editor, editor_server, http_json, needs_browser,
)

pytestmark = needs_browser

W, H = 160, 100
# strokes in image pixels: (start, end, radius)
BRUSH = ((20.0, 50.0), (140.0, 50.0), 8)
ERASER = ((80.0, 22.0), (80.0, 78.0), 6)
# edge band (image px) left out of the exact checks: antialiasing and sub-pixel mouse positions
EDGE = 1.5


def gradient_png() -> bytes:
    x = np.linspace(0, 255, W, dtype=np.float32)[None, :].repeat(H, 0)
    y = np.linspace(0, 255, H, dtype=np.float32)[:, None].repeat(W, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def segment_distance(start, end) -> np.ndarray:
    """Distance of every pixel centre to the segment start-end, in image pixels."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    (ax, ay), (bx, by) = start, end
    dx, dy = bx - ax, by - ay
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))


def upload_to_new_load_image(editor: EditorPage, name: str) -> int:
    """A new Load Image node with the test picture dropped on it (uploaded by POST /upload/image)."""
    page = editor.page
    page.click("#new-button")
    node = editor.search_add((300, 260), "load image")
    assert node["type"] == "LoadImage"
    x, y = editor.title(node["id"])
    editor.js("""async ([b64, name, x, y]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        const stage = document.getElementById("stage");
        for (const type of ["dragenter", "dragover", "drop"]) {
            stage.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true,
                                                      clientX: x, clientY: y }));
        }
    }""", [base64.b64encode(gradient_png()).decode(), name, x, y + 60])
    page.wait_for_function("([id, name]) => lgApp.graph.getNode(id).widget('image').value === name",
                           arg=[node["id"], name])
    return node["id"]


def open_mask_editor(editor: EditorPage, node_id: int) -> None:
    page = editor.page
    x, y = editor.title(node_id)
    page.mouse.click(x, y, button="right")
    page.locator(".ctx-menu .item", has_text="Open in MaskEditor").click()
    page.locator(".mask-editor .me-mask").wait_for(state="visible")
    page.wait_for_function("document.querySelector('.mask-editor .me-mask').getBoundingClientRect().width > 100")


def to_client(editor: EditorPage, point) -> tuple[float, float]:
    rect = editor.js("(() => { const r = document.querySelector('.mask-editor .me-mask').getBoundingClientRect();"
                     " return [r.left, r.top, r.width, r.height]; })()")
    left, top, width, height = rect
    return left + point[0] * width / W, top + point[1] * height / H


def stroke(editor: EditorPage, start, end, button: str = "left") -> None:
    mouse = editor.page.mouse
    mouse.move(*to_client(editor, start))
    mouse.down(button=button)
    mouse.move(*to_client(editor, end), steps=24)
    mouse.up(button=button)


def save_and_wait(editor: EditorPage, node_id: int, before: str, keys: bool = False) -> str:
    page = editor.page
    if keys:
        page.keyboard.press("Control+Enter")
    else:
        page.click(".mask-editor .me-save")
    page.wait_for_function("([id, before]) => !lgApp.maskEditor.isOpen"
                           " && lgApp.graph.getNode(id).widget('image').value !== before", arg=[node_id, before])
    return editor.js("id => lgApp.graph.getNode(id).widget('image').value", node_id)


def saved_path(editor_server, value: str):
    assert value.startswith("clipspace/clipspace-mask-") and value.endswith(".png [input]"), value
    return editor_server.base / "input" / value[: -len(" [input]")]


def read_rgba(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGBA" and img.size == (W, H)
        return np.asarray(img.convert("RGBA"))


def load_image_node(editor_server, value: str):
    """LoadImage's own run(), over the server's folders, on the widget value the editor wrote."""
    registry = NodeRegistry(Environment(FolderPaths(editor_server.base), {}))
    register_builtin_nodes(registry)
    ctx = NodeContext("p", "1", "LoadImage", registry.env, {}, {}, threading.Event(), lambda e, d: None)
    assert LoadImage.check(registry.env, value) is True
    return LoadImage().run(ctx, image=value)


def node_shows(editor: EditorPage, node_id: int, value: str) -> None:
    editor.page.wait_for_function(
        """([id, value]) => { const node = lgApp.graph.getNode(id);
            const img = lgApp.canvas.images.get(lgApp.api.inputImageUrl(value));
            return node.showsImage && node.widget('image').choices.includes(value) && img && img.naturalWidth > 0; }""",
        arg=[node_id, value])


def test_paint_erase_and_save_writes_the_mask_into_the_alpha(editor, editor_server):
    page = editor.page
    node_id = upload_to_new_load_image(editor, "mask source.png")
    open_mask_editor(editor, node_id)
    assert page.inner_text(".mask-editor .me-title").endswith("mask source.png")
    assert page.locator(".mask-editor .me-size").input_value() == "10"  # ComfyUI's default thickness

    page.locator(".mask-editor .me-size").fill(str(BRUSH[2]))
    assert page.inner_text(".mask-editor .me-size-value") == str(BRUSH[2])
    stroke(editor, BRUSH[0], BRUSH[1])
    page.click(".mask-editor .me-eraser")
    page.keyboard.press("[")  # 8 -> 6, ComfyUI's step of 2
    assert page.locator(".mask-editor .me-size").input_value() == str(ERASER[2])
    stroke(editor, ERASER[0], ERASER[1])
    # the graph behind the dialog must not see the keys
    page.keyboard.press("Delete")
    assert editor.js("id => !!lgApp.graph.getNode(id)", node_id)
    page.mouse.move(*to_client(editor, (110, 30)))
    page.screenshot(path=str(artifact("editor-mask.png")))

    value = save_and_wait(editor, node_id, "mask source.png")
    path = saved_path(editor_server, value)
    rgba = read_rgba(path)
    with Image.open(io.BytesIO(gradient_png())) as original:
        assert np.array_equal(rgba[..., :3], np.asarray(original.convert("RGB")))  # colours untouched

    alpha = rgba[..., 3]
    brush = segment_distance(*BRUSH[:2])
    eraser = segment_distance(*ERASER[:2])
    masked = (brush < BRUSH[2] - EDGE) & (eraser > ERASER[2] + EDGE)
    kept = (brush > BRUSH[2] + EDGE) | (eraser < ERASER[2] - EDGE)
    restored = (brush < BRUSH[2] - EDGE) & (eraser < ERASER[2] - EDGE)
    assert masked.sum() > 1200 and restored.sum() > 80  # the checks below cover real areas
    assert np.all(alpha[masked] == 0), np.argwhere(masked & (alpha != 0))[:5]
    assert np.all(alpha[kept] == 255), np.argwhere(kept & (alpha != 255))[:5]
    assert np.all(alpha[restored] == 255)
    # the painted area is about the capsule's area minus the erased cut (edge pixels count half)
    area = 2 * BRUSH[2] * 120 + math.pi * BRUSH[2] ** 2 - 2 * BRUSH[2] * 2 * ERASER[2]
    assert abs((255 - alpha.astype(np.float64)).sum() / 255 - area) < 0.06 * area

    image, mask = load_image_node(editor_server, value)
    assert image.shape == (1, H, W, 3) and mask.shape == (1, H, W)
    expected = 1.0 - torch.from_numpy(alpha.astype(np.float32)) / 255.0
    assert torch.allclose(mask[0], expected, atol=1e-6)
    assert torch.all(mask[0][torch.from_numpy(masked)] == 1.0)
    assert torch.all(mask[0][torch.from_numpy(kept)] == 0.0)

    node_shows(editor, node_id, value)
    api = editor.js("lgApp.exportApi()")
    assert api[str(node_id)]["inputs"] == {"image": value}
    # the server accepts the saved name in a prompt and loads it
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": value}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 1]}}}
    queued = http_json(editor_server.url + "/prompt", {"prompt": prompt})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entry = http_json(editor_server.url + f"/history/{queued['prompt_id']}").get(queued["prompt_id"])
        if entry and entry.get("status", {}).get("completed"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the prompt with the saved mask did not finish")
    assert entry["status"]["status_str"] == "success"

    # the change of file is one undo step
    page.keyboard.press("Control+z")
    assert editor.js("id => lgApp.graph.getNode(id).widget('image').value", node_id) == "mask source.png"


def test_reopening_shows_the_saved_mask_and_invert_and_clear_work(editor, editor_server):
    page = editor.page
    node_id = upload_to_new_load_image(editor, "invert source.png")
    open_mask_editor(editor, node_id)
    # a right-button drag paints with the eraser whatever the tool: here on an empty mask, nothing
    stroke(editor, (30, 20), (130, 20), button="right")
    stroke(editor, (30, 70), (130, 70))
    first = save_and_wait(editor, node_id, "invert source.png")
    alpha = read_rgba(saved_path(editor_server, first))[..., 3].astype(np.int32)
    assert alpha[70, 80] == 0 and alpha[20, 80] == 255 and (alpha == 0).sum() > 1000

    # reopened on the saved file the painter starts from its mask; Invert flips it exactly
    open_mask_editor(editor, node_id)
    page.click(".mask-editor .me-invert")
    inverted = save_and_wait(editor, node_id, first)
    assert inverted != first
    flipped = read_rgba(saved_path(editor_server, inverted))[..., 3].astype(np.int32)
    assert np.array_equal(flipped, 255 - alpha)
    _, mask = load_image_node(editor_server, inverted)
    assert torch.allclose(mask[0], torch.from_numpy(alpha.astype(np.float32)) / 255.0, atol=1e-6)

    # Clear removes every mark: fully opaque, LoadImage's mask all zero at the image's size
    open_mask_editor(editor, node_id)
    page.click(".mask-editor .me-clear")
    cleared = save_and_wait(editor, node_id, inverted, keys=True)
    assert np.all(read_rgba(saved_path(editor_server, cleared))[..., 3] == 255)
    _, mask = load_image_node(editor_server, cleared)
    assert mask.shape == (1, H, W) and not mask.any()
    node_shows(editor, node_id, cleared)

    # Cancel (and Escape) leave the node as it was
    open_mask_editor(editor, node_id)
    stroke(editor, (30, 50), (130, 50))
    page.click(".mask-editor .me-cancel")
    assert not editor.js("lgApp.maskEditor.isOpen")
    open_mask_editor(editor, node_id)
    page.keyboard.press("Escape")
    assert not editor.js("lgApp.maskEditor.isOpen")
    assert editor.js("id => lgApp.graph.getNode(id).widget('image').value", node_id) == cleared


def test_menu_entry_only_where_an_image_is_shown(editor):
    page = editor.page
    page.click("#new-button")
    node = editor.search_add((300, 260), "load image")
    editor.js("id => { const w = lgApp.graph.getNode(id).widget('image'); w.choices = []; w.value = ''; }", node["id"])
    x, y = editor.title(node["id"])
    page.mouse.click(x, y, button="right")
    page.locator(".ctx-menu").wait_for(state="visible")
    assert page.locator(".ctx-menu .item", has_text="Open in MaskEditor").count() == 0
    assert page.locator(".ctx-menu .item", has_text="Upload Image").count() == 1
    page.keyboard.press("Escape")
    empty = editor.search_add((800, 500), "empty image")
    x, y = editor.title(empty["id"])
    page.mouse.click(x, y, button="right")
    page.locator(".ctx-menu").wait_for(state="visible")
    assert page.locator(".ctx-menu .item", has_text="Open in MaskEditor").count() == 0


def test_a_failed_save_says_why_and_keeps_the_painter_open(editor, editor_server):
    editor.allowed_errors = ["404"]  # Chromium logs the refused upload
    page = editor.page
    node_id = upload_to_new_load_image(editor, "vanishing.png")
    open_mask_editor(editor, node_id)
    stroke(editor, (30, 50), (130, 50))
    (editor_server.base / "input" / "vanishing.png").unlink()
    page.click(".mask-editor .me-save")
    page.locator(".toast.error", has_text="Saving the mask failed").wait_for(state="visible")
    assert "not found" in page.inner_text(".toast.error")
    assert editor.js("lgApp.maskEditor.isOpen")
    assert page.locator(".mask-editor .me-save").is_enabled()
    assert editor.js("id => lgApp.graph.getNode(id).widget('image').value", node_id) == "vanishing.png"
    page.click(".mask-editor .me-cancel")
