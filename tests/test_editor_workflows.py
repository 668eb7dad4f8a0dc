"""The graph editor's workflow files: ComfyUI UI-format workflows open, save and export to the
same API prompt that the server-side converter (graph/ui_convert.py) computes."""
from __future__ import annotations

import copy
import json

import pytest

from graph.ui_convert import ui_to_api
from tests.editor_helpers import (  # noqa: F401  (fixtures)
    SHARED_WORKFLOWS, browser, editor, editor_server, http_json, needs_browser, ui_node, ui_workflow,
)

pytestmark = needs_browser

SDXL = SHARED_WORKFLOWS / "image_sdxl_simple.json"


def out(name, type_, links=None, **extra):
    return {"name": name, "type": type_, "links": links or [], **extra}


def inp(name, type_, **extra):
    return {"name": name, "type": type_, "link": None, **extra}


def builtin_workflow() -> dict:
    """Built-in and test-pack nodes exercising what the converter resolves: converted widgets fed by
    a PrimitiveNode, reroutes, bypassed and muted nodes, notes, seed controls, the upload widget,
    dict-form widget values, newer saves that list every widget as an input, lists, and a node
    type that is not installed."""
    nodes = [
        ui_node(1, "EmptyImage", (0, 0), [64, 48, 1, 255], outputs=[out("IMAGE", "IMAGE")]),
        ui_node(2, "ImageScale", (300, 0), ["bilinear", 32, 24, "center"], mode=4,
                inputs=[inp("image", "IMAGE")], outputs=[out("IMAGE", "IMAGE")]),
        ui_node(3, "Reroute", (600, 0), None, inputs=[inp("", "*")], outputs=[out("", "IMAGE")],
                size=[75, 26]),
        ui_node(4, "SaveImage", (800, 0), ["wf_test"], inputs=[inp("images", "IMAGE")]),
        ui_node(5, "PrimitiveNode", (0, 300), [77, "fixed"],
                outputs=[out("INT", "INT", widget={"name": "value"})]),
        ui_node(6, "TestValue", (300, 300), [5], inputs=[inp("value", "INT", widget={"name": "value"})],
                outputs=[out("INT", "INT")], title="Answer"),
        ui_node(7, "TestOutput", (600, 300), [], inputs=[inp("value", "*")]),
        ui_node(8, "TestSampler", (0, 600), [1, 2, 3, 4, 99, "increment", "slow"], outputs=[out("INT", "INT")]),
        ui_node(9, "TestOutput", (300, 600), [], inputs=[inp("value", "*")]),
        ui_node(10, "TestAdd", (600, 600), [4], mode=2, inputs=[inp("a", "INT")], outputs=[out("sum", "INT")]),
        ui_node(11, "TestOutput", (900, 600), [], inputs=[inp("value", "*")]),
        ui_node(12, "Note", (1200, 0), ["remember the milk"]),
        ui_node(13, "LoadImage", (0, 900), ["example.png", "image"], outputs=[out("IMAGE", "IMAGE"), out("MASK", "MASK")]),
        ui_node(14, "PreviewImage", (300, 900), [], inputs=[inp("images", "IMAGE")]),
        ui_node(15, "StringConcatenate", (0, 1200), {"string_a": "multi\nline", "string_b": "x", "delimiter": "-"},
                outputs=[out("STRING", "STRING")]),
        ui_node(16, "ShowText", (300, 1200), [], inputs=[inp("text", "STRING")], outputs=[out("STRING", "STRING")]),
        ui_node(17, "TestSlow", (0, 1500), [3, 0.5], inputs=[inp("steps", "INT", widget={"name": "steps"}),
                                                             inp("delay", "FLOAT", widget={"name": "delay"})],
                outputs=[out("INT", "INT")]),
        ui_node(18, "TestListOut", (300, 1500), [2], outputs=[out("INT", "INT", shape=6), out("STRING", "STRING")]),
        ui_node(19, "TestListIn", (600, 1500), [3], inputs=[inp("values", "INT")], outputs=[out("INT", "INT")]),
        ui_node(20, "TestOutput", (900, 1500), [], inputs=[inp("value", "*")]),
        ui_node(21, "NotInstalledNode", (0, 1800), [1, "x", {"deep": [1, 2]}],
                inputs=[inp("image", "IMAGE")], outputs=[out("IMAGE", "IMAGE")], properties={"keep": "me"}),
        ui_node(22, "PreviewImage", (300, 1800), [], inputs=[inp("images", "IMAGE")]),
        ui_node(23, "TestOutput", (600, 1800), [], inputs=[inp("value", "*")]),
    ]
    links = [
        [1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
        [4, 5, 0, 6, 0, "INT"], [5, 6, 0, 7, 0, "INT"], [6, 8, 0, 9, 0, "INT"],
        [7, 6, 0, 10, 0, "INT"], [8, 10, 0, 11, 0, "INT"], [9, 13, 0, 14, 0, "IMAGE"],
        [10, 15, 0, 16, 0, "STRING"], [11, 18, 0, 19, 0, "INT"], [12, 19, 0, 20, 0, "INT"],
        [13, 1, 0, 21, 0, "IMAGE"], [14, 21, 0, 22, 0, "IMAGE"], [15, 17, 0, 23, 0, "INT"],
    ]
    return ui_workflow(nodes, links)


def compare_round_trip(editor, workflow: dict, object_info: dict) -> dict:
    """Open `workflow`; its export, and the export of its save, equal the server's conversion."""
    expected = ui_to_api(copy.deepcopy(workflow), object_info)
    editor.load(workflow)
    assert editor.js("lgApp.exportApi()") == expected
    saved = editor.js("lgApp.serialize()")
    assert ui_to_api(copy.deepcopy(saved), object_info) == expected
    assert saved["version"] == 0.4
    assert all(isinstance(link, list) and len(link) == 6 for link in saved["links"])
    # saving what was opened from our own save changes nothing
    editor.load(saved)
    again = editor.js("lgApp.serialize()")
    assert again["nodes"] == saved["nodes"] and again["links"] == saved["links"]
    return saved


def test_builtin_workflow_round_trips_to_the_converters_prompt(editor, editor_server):
    object_info = http_json(editor_server.url + "/object_info")
    workflow = builtin_workflow()
    saved = compare_round_trip(editor, workflow, object_info)
    prompt = ui_to_api(copy.deepcopy(workflow), object_info)
    # spot checks of what the conversion means
    assert prompt["4"]["inputs"]["images"] == ["1", 0]  # through the reroute and the bypassed scale
    assert prompt["6"]["inputs"]["value"] == 77 and prompt["6"]["_meta"]["title"] == "Answer"
    assert "value" not in prompt["11"]["inputs"]  # fed by a muted node
    assert prompt["8"]["inputs"]["seed"] == 99 and prompt["15"]["inputs"]["string_a"] == "multi\nline"
    assert "21" in prompt and prompt["21"]["inputs"] == {"image": ["1", 0]}
    unknown = next(n for n in saved["nodes"] if n["id"] == 21)
    assert unknown["type"] == "NotInstalledNode"
    assert unknown["widgets_values"] == [1, "x", {"deep": [1, 2]}]
    assert unknown["properties"] == {"keep": "me"}
    assert [i["name"] for i in unknown["inputs"]] == ["image"]
    summary = {n["id"]: n for n in editor.summary()["nodes"]}
    assert summary[21]["unknown"] and not summary[1]["unknown"]
    assert summary[8]["widgets"]["seed:control"] == "increment"
    assert summary[3]["outputs"][0]["type"] == "IMAGE"


def test_every_node_class_exports_like_the_converter(editor, editor_server):
    """A node of each class with its default widgets: the plan of widgets matches ui_convert's."""
    object_info = http_json(editor_server.url + "/object_info")
    editor.js("""() => {
        lgApp.clearGraph();
        let y = 0;
        for (const def of lgApp.defs.values()) {
            lgApp.commands.addNode(def, [0, y], { select: false, commit: false });
            y += 400;
        }
        lgApp.commit("test");
    }""")
    saved = editor.js("lgApp.serialize()")
    assert len(saved["nodes"]) >= len(object_info)
    assert editor.js("lgApp.exportApi()") == ui_to_api(copy.deepcopy(saved), object_info)


def test_comfyui_sdxl_workflow_opens_saves_and_exports(editor, editor_server):
    page = editor.page
    object_info = http_json(editor_server.url + "/object_info")
    original = json.loads(SDXL.read_text())
    with page.expect_file_chooser() as chooser:
        page.click("#open-button")
    chooser.value.set_files(str(SDXL))
    page.wait_for_function("(n) => lgApp.graph.nodes.length === n", arg=len(original["nodes"]))
    expected = ui_to_api(copy.deepcopy(original), object_info)
    assert editor.js("lgApp.exportApi()") == expected
    with page.expect_download() as download:
        page.click("#download-button")
    saved = json.loads(open(download.value.path()).read())
    assert ui_to_api(copy.deepcopy(saved), object_info) == expected
    with page.expect_download() as download:
        page.click("#export-button")
    assert json.loads(open(download.value.path()).read()) == expected
    # nodes this server does not have keep their ids, places, sockets and widget values
    for before in original["nodes"]:
        after = next(n for n in saved["nodes"] if n["id"] == before["id"])
        assert after["type"] == before["type"] and after["pos"] == before["pos"]
        if before["type"] not in object_info:
            assert after["widgets_values"] == before.get("widgets_values", [])
            assert [i["link"] for i in after["inputs"]] == [i["link"] for i in before["inputs"]]
    assert sorted(map(tuple, saved["links"])) == sorted(map(tuple, original["links"]))


def test_workflow_is_kept_in_the_browser_across_reloads(editor):
    page = editor.page
    editor.load(builtin_workflow())
    editor.js("lgApp.graph.getNode(1).widget('width').value = 123; lgApp.commit('test')")
    before = editor.js("lgApp.exportApi()")
    page.reload()
    page.wait_for_function("window.lgApp && lgApp.graph")
    page.evaluate("lgApp.ready")
    assert editor.js("lgApp.exportApi()") == before
    assert editor.js("lgApp.graph.getNode(1).widget('width').value") == 123
