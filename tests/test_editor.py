"""The graph editor in a real browser: building a graph with mouse and keyboard."""
from __future__ import annotations

import pytest

from tests.editor_helpers import (  # noqa: F401  (fixtures)
    browser, editor, editor_server, http_json, needs_browser,
)

pytestmark = needs_browser

DEFAULT_IDS = {3, 4, 5, 6, 7, 8, 9}


def test_opens_with_the_default_workflow_without_console_errors(editor, editor_server):
    summary = editor.summary()
    assert {n["id"] for n in summary["nodes"]} == DEFAULT_IDS
    assert len(summary["links"]) == 9
    object_info = http_json(editor_server.url + "/object_info")
    for node in summary["nodes"]:
        # until the model nodes exist these show as unknown (red) types, values kept
        assert node["unknown"] == (node["type"] not in object_info), node
    save = next(n for n in summary["nodes"] if n["id"] == 9)
    assert save["widgets"] == {"filename_prefix": "ComfyUI"}
    # the pack's web extension was imported and its setup hook ran
    assert editor.js("window.__lgTestExtension") == "setup"
    assert editor.js("lgApp.extensions.loaded") == ["/extensions/lg_editor_ext/ext.js",
                                                    "/extensions/example_pack/example_pack.js"] \
        or set(editor.js("lgApp.extensions.loaded")) >= {"/extensions/lg_editor_ext/ext.js"}
    assert editor.errors == []


def test_search_box_adds_nodes_and_sockets_connect_by_type(editor):
    page = editor.page
    page.click("#new-button")
    assert editor.summary()["nodes"] == []
    source = editor.search_add((300, 300), "empty image")
    assert source["type"] == "EmptyImage"
    sink = editor.search_add((850, 300), "save image")
    assert sink["type"] == "SaveImage"
    assert "EmptyImage" in editor.js("window.__lgCreated")  # the extension's nodeCreated hook

    editor.drag(editor.socket(source["id"], "output", 0), editor.socket(sink["id"], "input", 0))
    links = editor.summary()["links"]
    assert [(l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"], l["type"]) for l in links] == \
        [(source["id"], 0, sink["id"], 0, "IMAGE")]

    # an INT output does not fit an IMAGE input: refused, nothing changes
    value = editor.search_add((300, 600), "testvalue")
    assert value["type"] == "TestValue"
    editor.drag(editor.socket(value["id"], "output", 0), editor.socket(sink["id"], "input", 0))
    assert len(editor.summary()["links"]) == 1
    assert editor.summary()["links"][0]["origin_id"] == source["id"]
    assert "INT" in editor.js("lgApp.lastRefusal") and "IMAGE" in editor.js("lgApp.lastRefusal")

    # a link dropped on empty canvas opens the search box limited to nodes that take its type
    editor.drag(editor.socket(source["id"], "output", 0), (700, 650))
    page.locator(".search-box").wait_for(state="visible")
    assert "IMAGE" in page.inner_text(".search-box .filter-note")
    offered = page.eval_on_selector_all(".search-box li", "els => els.map(e => e.dataset.type)")
    assert "SaveImage" in offered and "PreviewImage" in offered
    assert "TestValue" not in offered and "EmptyImage" not in offered
    page.keyboard.type("preview image")
    page.keyboard.press("Enter")
    preview = editor.nodes_of("PreviewImage")
    assert len(preview) == 1
    assert preview[0]["inputs"][0]["link"] is not None
    assert len(editor.summary()["links"]) == 2


def test_widgets_edit_by_typing_dragging_arrows_and_lists(editor):
    page = editor.page
    page.click("#new-button")
    node = editor.search_add((250, 250), "empty image")
    nid = node["id"]

    rect = editor.widget_rect(nid, "width")
    page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2)
    page.locator("input.value-editor").wait_for(state="visible")
    page.keyboard.press("Control+A")
    page.keyboard.type("640")
    page.keyboard.press("Enter")
    assert editor.nodes_of("EmptyImage")[0]["widgets"]["width"] == 640

    rect = editor.widget_rect(nid, "height")
    y = rect["y"] + rect["h"] / 2
    editor.drag((rect["x"] + rect["w"] / 2, y), (rect["x"] + rect["w"] / 2 + 60, y), steps=6)
    assert editor.nodes_of("EmptyImage")[0]["widgets"]["height"] == 512 + 20

    rect = editor.widget_rect(nid, "batch_size")
    page.mouse.click(rect["x"] + rect["w"] - 8, rect["y"] + rect["h"] / 2)  # the right arrow
    assert editor.nodes_of("EmptyImage")[0]["widgets"]["batch_size"] == 2
    page.mouse.click(rect["x"] + 8, rect["y"] + rect["h"] / 2)
    page.mouse.click(rect["x"] + 8, rect["y"] + rect["h"] / 2)  # clamped at min 1
    assert editor.nodes_of("EmptyImage")[0]["widgets"]["batch_size"] == 1

    sampler = editor.search_add((700, 250), "testsampler")
    rect = editor.widget_rect(sampler["id"], "mode")
    page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2)
    page.locator(".ctx-menu .item", has_text="slow").click()
    assert editor.nodes_of("TestSampler")[0]["widgets"]["mode"] == "slow"
    rect = editor.widget_rect(sampler["id"], "control_after_generate")
    page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2)
    page.locator(".ctx-menu .item", has_text="increment").click()
    assert editor.nodes_of("TestSampler")[0]["widgets"]["seed:control"] == "increment"

    text = editor.search_add((250, 600), "string multiline")
    rect = editor.widget_rect(text["id"], "value")
    page.mouse.click(rect["x"] + 30, rect["y"] + 20)
    page.locator("textarea.value-editor").wait_for(state="visible")
    page.keyboard.type("line one\nline two")
    page.mouse.click(1000, 700)  # clicking elsewhere commits
    assert editor.nodes_of("PrimitiveStringMultiline")[0]["widgets"]["value"] == "line one\nline two"
    api = editor.js("lgApp.exportApi()")
    assert api[str(nid)]["inputs"] == {"width": 640, "height": 532, "batch_size": 1, "color": 0}


def test_convert_widget_reroute_modes_and_groups(editor):
    page = editor.page
    page.click("#new-button")
    image = editor.search_add((250, 250), "empty image")
    save = editor.search_add((900, 250), "save image")
    reroute = editor.search_add((600, 500), "reroute")
    assert reroute["type"] == "Reroute"
    editor.drag(editor.socket(image["id"], "output", 0), editor.socket(reroute["id"], "input", 0))
    editor.drag(editor.socket(reroute["id"], "output", 0), editor.socket(save["id"], "input", 0))
    api = editor.js("lgApp.exportApi()")
    assert api[str(save["id"])]["inputs"]["images"] == [str(image["id"]), 0]
    assert str(reroute["id"]) not in api

    # right-click a widget: convert it to an input, feed it from an INT node, and back again
    rect = editor.widget_rect(image["id"], "width")
    page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2, button="right")
    page.locator(".ctx-menu .item", has_text="Convert width to input").click()
    node = editor.nodes_of("EmptyImage")[0]
    assert node["converted"] == ["width"]
    slot = [i["name"] for i in node["inputs"]].index("width")
    value = editor.search_add((250, 650), "int")
    assert value["type"] == "PrimitiveInt"
    editor.drag(editor.socket(value["id"], "output", 0), editor.socket(image["id"], "input", slot))
    api = editor.js("lgApp.exportApi()")
    assert api[str(image["id"])]["inputs"]["width"] == [str(value["id"]), 0]
    x, y = editor.socket(image["id"], "input", slot)
    page.mouse.click(x, y, button="right")
    page.locator(".ctx-menu .item", has_text="Convert width to widget").click()
    node = editor.nodes_of("EmptyImage")[0]
    assert node["converted"] == [] and len(editor.summary()["links"]) == 2
    assert editor.js("lgApp.exportApi()")[str(image["id"])]["inputs"]["width"] == 512

    # bypass, mute and collapse with the keyboard on the selected node
    page.mouse.click(*editor.title(image["id"]))
    page.keyboard.press("Control+b")
    assert editor.nodes_of("EmptyImage")[0]["mode"] == 4
    assert str(image["id"]) not in editor.js("lgApp.exportApi()")
    page.keyboard.press("Control+b")
    page.keyboard.press("Control+m")
    assert editor.nodes_of("EmptyImage")[0]["mode"] == 2
    page.keyboard.press("Control+m")
    page.keyboard.press("Alt+c")
    assert editor.nodes_of("EmptyImage")[0]["collapsed"] is True
    page.keyboard.press("Alt+c")
    page.keyboard.press("Control+g")
    groups = editor.summary()["groups"]
    assert len(groups) == 1
    gx, gy, gw, gh = groups[0]["bounding"]
    pos = editor.nodes_of("EmptyImage")[0]["pos"]
    assert gx < pos[0] < gx + gw and gy < pos[1] < gy + gh

    # dragging the group's title moves the group and the node inside it
    title_x, title_y = editor.js("([x, y]) => lgApp.canvas.toClient(x, y)", [gx + 60, gy + 12])
    editor.drag((title_x, title_y), (title_x + 100, title_y + 40))
    moved = editor.nodes_of("EmptyImage")[0]["pos"]
    scale = editor.js("lgApp.canvas.scale")
    assert moved[0] == pytest.approx(pos[0] + 100 / scale, abs=1)
    assert moved[1] == pytest.approx(pos[1] + 40 / scale, abs=1)


def test_select_copy_paste_undo_redo_and_delete(editor):
    page = editor.page
    page.click("#new-button")
    first = editor.search_add((250, 250), "empty image")
    second = editor.search_add((800, 250), "save image")
    editor.drag(editor.socket(first["id"], "output", 0), editor.socket(second["id"], "input", 0))

    # box selection with Ctrl+drag, then copy and paste elsewhere: nodes and their link
    page.keyboard.down("Control")
    editor.drag((150, 150), (1250, 600))
    page.keyboard.up("Control")
    assert sorted(editor.summary()["selected"]) == sorted([first["id"], second["id"]])
    page.keyboard.press("Control+c")
    page.mouse.move(300, 650)
    page.keyboard.press("Control+v")
    page.wait_for_function("lgApp.graph.nodes.length === 4")
    summary = editor.summary()
    assert len(summary["links"]) == 2
    assert sorted(n["type"] for n in summary["nodes"]) == ["EmptyImage", "EmptyImage", "SaveImage", "SaveImage"]

    # undo and redo the paste
    page.keyboard.press("Control+z")
    assert len(editor.summary()["nodes"]) == 2
    page.keyboard.press("Control+y")
    assert len(editor.summary()["nodes"]) == 4
    page.keyboard.press("Control+z")

    # the clipboard reaches another tab of the same browser
    other = editor.context.new_page()
    other.goto(editor.url)
    other.wait_for_function("window.lgApp && lgApp.graph")
    other.evaluate("lgApp.ready")
    other.evaluate("lgApp.clearGraph()")
    other.mouse.move(400, 400)
    other.keyboard.press("Control+v")
    other.wait_for_function("lgApp.graph.nodes.length === 2")
    assert other.evaluate("lgApp.graph.links.size") == 1
    other.close()

    # Delete removes the selection
    page.mouse.click(*editor.title(first["id"]))
    page.keyboard.press("Delete")
    assert [n["type"] for n in editor.summary()["nodes"]] == ["SaveImage"]
    assert editor.summary()["links"] == []


def test_pan_and_zoom_to_the_cursor(editor):
    page = editor.page
    before = editor.js("lgApp.canvas.toGraph(700, 400)")
    page.mouse.move(700, 400)
    page.mouse.wheel(0, -300)
    page.wait_for_function("lgApp.canvas.scale > 0.85")
    after = editor.js("lgApp.canvas.toGraph(700, 400)")
    assert after == pytest.approx(before, abs=0.5)  # the point under the cursor stays put
    offset = editor.js("lgApp.canvas.offset")
    editor.drag((700, 780), (500, 700))  # empty canvas below the default graph
    scale = editor.js("lgApp.canvas.scale")
    moved = editor.js("lgApp.canvas.offset")
    assert moved[0] == pytest.approx(offset[0] - 200 / scale, abs=0.5)
    assert moved[1] == pytest.approx(offset[1] - 80 / scale, abs=0.5)


def test_menu_adds_by_category_and_nodes_move_resize_collapse(editor):
    page = editor.page
    page.click("#new-button")
    page.mouse.click(400, 300, button="right")
    page.locator(".ctx-menu .item", has_text="Add Node").hover()
    page.locator(".ctx-menu .item", has_text="utils").hover()
    page.locator(".ctx-menu .item.sub", has_text="primitive").hover()
    page.locator(".ctx-menu .item", has_text="Boolean").click()
    node = editor.nodes_of("PrimitiveBoolean")[0]
    assert node["widgets"]["value"] is False
    rect = editor.widget_rect(node["id"], "value")
    page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2)  # a toggle flips on click
    assert editor.nodes_of("PrimitiveBoolean")[0]["widgets"]["value"] is True

    x, y = editor.title(node["id"])
    editor.drag((x, y), (x + 150, y + 90))
    moved = editor.nodes_of("PrimitiveBoolean")[0]
    scale = editor.js("lgApp.canvas.scale")
    assert moved["pos"][0] == pytest.approx(node["pos"][0] + 150 / scale, abs=1)
    assert moved["pos"][1] == pytest.approx(node["pos"][1] + 90 / scale, abs=1)

    corner = editor.js("(id) => { const n = lgApp.graph.getNode(id);"
                       " return lgApp.canvas.toClient(n.pos[0] + n.size[0] - 4, n.pos[1] + n.size[1] - 4); }", node["id"])
    editor.drag(corner, (corner[0] + 80, corner[1] + 50))
    resized = editor.nodes_of("PrimitiveBoolean")[0]
    assert resized["size"][0] == pytest.approx(moved["size"][0] + 80 / scale, abs=1)
    assert resized["size"][1] == pytest.approx(moved["size"][1] + 50 / scale, abs=1)

    dot = editor.js("(id) => { const n = lgApp.graph.getNode(id); return lgApp.canvas.toClient(n.pos[0] + 14, n.pos[1] - 15); }",
                    node["id"])
    page.mouse.click(*dot)  # the dot in the title bar collapses the node
    assert editor.nodes_of("PrimitiveBoolean")[0]["collapsed"] is True
    page.keyboard.press("Control+z")
    assert editor.nodes_of("PrimitiveBoolean")[0]["collapsed"] is False
    page.keyboard.press("Control+z")
    assert editor.nodes_of("PrimitiveBoolean")[0]["size"] == moved["size"]
