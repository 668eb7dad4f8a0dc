"""The graph editor in a real browser: queueing, progress, previews, results, errors, the queue
panel, uploads and dropped files, and reconnecting to a restarted server."""
from __future__ import annotations

import base64
import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.editor_helpers import (  # noqa: F401  (fixtures)
    PlaywrightTimeout,
    EditorPage, artifact, browser, editor, editor_server, http_json, needs_browser, ui_node, ui_workflow,
)

pytestmark = needs_browser

RUN_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 0x3366CC}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "editor_run"}},
    "3": {"class_type": "TestSlow", "inputs": {"steps": 6, "delay": 0.05}},
    "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}},
    "5": {"class_type": "TestPreviewSampler", "inputs": {"steps": 4, "delay": 0.05, "family": "sd1", "size": 8,
                                                         "seed": 0}},
    "6": {"class_type": "TestOutput", "inputs": {"value": ["5", 0]}},
    "7": {"class_type": "TestSampler", "inputs": {"model": 1, "positive": 2, "negative": 3, "latent": 4, "seed": 10,
                                                  "mode": "fast"}},
    "8": {"class_type": "TestOutput", "inputs": {"value": ["7", 0]}},
}


def png_bytes(text_chunks: dict | None = None, color=(200, 40, 40)) -> bytes:
    info = PngInfo()
    for key, value in (text_chunks or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def drop_file(editor: EditorPage, data: bytes, name: str, mime: str, at: tuple[float, float]) -> None:
    """Drop a file on the canvas as a person would from the file manager (a DragEvent with files)."""
    editor.js("""async ([b64, name, mime, x, y]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: mime }));
        const stage = document.getElementById("stage");
        for (const type of ["dragenter", "dragover", "drop"]) {
            stage.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true,
                                                      clientX: x, clientY: y }));
        }
    }""", [base64.b64encode(data).decode(), name, mime, at[0], at[1]])


def test_queue_runs_with_progress_preview_and_results(editor, editor_server):
    page = editor.page
    editor.load_prompt(RUN_PROMPT)
    editor.js("lgApp.graph.getNode(7).widgets.find((w) => w.kind === 'control').value = 'increment'")
    page.click("#queue-button")
    page.wait_for_function("['2', '4', '6', '8'].every((id) => lgApp.runState.outputs.has(id))", timeout=20000)
    editor.wait_idle()

    events = editor.js("lgApp.runState.events")
    kinds = {e["type"] for e in events}
    assert {"execution_start", "executing", "progress", "executed", "execution_success", "preview"} <= kinds
    assert any(e["type"] == "progress" and e["node"] == "3" and e["max"] == 6 for e in events)
    assert any(e["type"] == "executing" and e["node"] == "3" for e in events)  # the running node was highlighted
    assert any(e["type"] == "preview" and e["node"] == "5" for e in events)  # a live preview on the sampler node
    assert editor.js("lgApp.runState.outputs.get('4').text") == ["6"]
    assert editor.js("lgApp.runState.outputs.get('8').text") == ["20"]

    images = editor.js("lgApp.runState.outputs.get('2').images")
    assert len(images) == 1 and images[0]["filename"].startswith("editor_run")
    page.wait_for_function("(url) => { const i = lgApp.canvas.images.get(url); return i && i.naturalWidth === 96; }",
                           arg=images[0]["url"])
    # the seed's control_after_generate ("increment") was applied after queueing
    assert editor.nodes_of("TestSampler")[0]["widgets"]["seed"] == 11

    page.click("#panel-button")
    page.locator(".q-item.done").first.wait_for()
    page.click(".tabs button:has-text('Gallery')")
    page.locator(".gallery img").first.wait_for()
    assert page.locator(".gallery img").count() >= 1
    page.click(".tabs button:has-text('Queue')")
    editor.js("lgApp.canvas.fitView()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifact("editor.png")))

    # the saved PNG carries the workflow: dropping it on the canvas opens that workflow again
    png = page.evaluate("async (url) => { const r = await fetch(url); const b = new Uint8Array(await r.arrayBuffer());"
                        " let s = ''; for (const x of b) s += String.fromCharCode(x); return btoa(s); }",
                        images[0]["url"])
    editor.js("lgApp.clearGraph()")
    drop_file(editor, base64.b64decode(png), "editor_run.png", "image/png", (600, 400))
    page.wait_for_function("lgApp.graph.nodes.length === 8")
    assert editor.nodes_of("TestSampler")[0]["widgets"]["seed"] == 10  # as it was queued


def test_batch_count_queues_several_prompts(editor):
    page = editor.page
    editor.load_prompt({"1": RUN_PROMPT["7"], "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}})
    editor.js("lgApp.graph.getNode(1).widgets.find((w) => w.kind === 'control').value = 'increment'")
    page.fill("#batch-count", "3")
    page.locator("#graph-canvas").focus()
    page.keyboard.press("Control+Enter")
    page.wait_for_function("lgApp.runState.ownPrompts.size === 3")
    assert editor.nodes_of("TestSampler")[0]["widgets"]["seed"] == 13
    editor.wait_idle()


def test_validation_errors_show_on_the_offending_nodes_and_inputs(editor):
    editor.allowed_errors = ["status of 400"]
    page = editor.page
    editor.load_prompt({
        "1": {"class_type": "TestValue", "inputs": {"value": 5_000_000}},
        "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "TestOutput", "inputs": {}},
    })
    page.click("#queue-button")
    page.wait_for_function("lgApp.runState.errors.size === 2")
    errors = editor.js("[...lgApp.runState.errors].map(([id, e]) => [id, [...e.inputs], e.messages])")
    by_id = {node: (inputs, messages) for node, inputs, messages in errors}
    assert set(by_id) == {"1", "3"}
    assert by_id["1"][0] == ["value"] and "1000000" in " ".join(by_id["1"][1])
    assert by_id["3"][0] == ["value"]
    listing = page.locator(".error-list")
    listing.wait_for()
    assert "#1" in listing.inner_text() and "#3" in listing.inner_text()

    # fixing the value clears that node's mark
    rect = editor.widget_rect(1, "value")
    page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2)
    page.keyboard.press("Control+A")
    page.keyboard.type("7")
    page.keyboard.press("Enter")
    assert editor.js("[...lgApp.runState.errors.keys()]") == ["3"]


def test_execution_errors_show_on_the_node(editor):
    page = editor.page
    editor.load_prompt({
        "1": {"class_type": "TestValue", "inputs": {"value": 1}},
        "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "kaboom"}},
        "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
    })
    page.click("#queue-button")
    page.wait_for_function("lgApp.runState.errors.has('2')")
    messages = editor.js("lgApp.runState.errors.get('2').messages")
    assert any("kaboom" in m for m in messages)
    assert "kaboom" in page.locator(".error-list").inner_text()
    editor.wait_idle()


def test_queue_panel_cancels_and_reloads_past_workflows(editor):
    page = editor.page
    slow = {"1": {"class_type": "TestSlow", "inputs": {"steps": 100, "delay": 0.05}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    editor.load_prompt(slow)
    page.click("#panel-button")
    page.click("#queue-button")
    page.wait_for_function("lgApp.runState.runningNode === '1'")
    editor.js("lgApp.graph.getNode(1).widgets[0].value = 99")  # a different prompt, so not a cache hit
    page.click("#queue-button")
    page.locator(".q-item.pending").wait_for()
    page.locator(".q-item.pending button:has-text('Cancel')").click()
    page.locator(".q-item.pending").wait_for(state="detached")
    page.locator(".q-item.running button:has-text('Cancel')").click()
    editor.wait_idle()
    page.wait_for_function("lgApp.runState.events.some((e) => e.type === 'execution_interrupted')")

    editor.js("lgApp.clearGraph()")
    page.click(".panel-actions button:has-text('Refresh')")
    page.locator(".q-item.error button:has-text('Load'), .q-item.done button:has-text('Load')").first.click()
    page.wait_for_function("lgApp.graph.nodes.length === 2")
    assert editor.nodes_of("TestSlow")[0]["widgets"]["steps"] == 100


def test_images_upload_by_button_drop_and_paste(editor, tmp_path):
    page = editor.page
    page.click("#new-button")
    load = editor.search_add((300, 300), "load image")
    assert load["type"] == "LoadImage"
    picture = tmp_path / "red square.png"
    picture.write_bytes(png_bytes())
    chooser = None
    for _attempt in range(3):  # the node may still be settling its layout under load: measure again
        rect = editor.widget_rect(load["id"], "upload")
        try:
            with page.expect_file_chooser(timeout=5000) as chooser:
                page.mouse.click(rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] / 2)
            break
        except PlaywrightTimeout:
            chooser = None
    assert chooser is not None, "the upload button never opened a file chooser"
    chooser.value.set_files(str(picture))
    page.wait_for_function("(id) => lgApp.graph.getNode(id).widget('image').value === 'red square.png'", arg=load["id"])
    url = editor.js("lgApp.api.inputImageUrl('red square.png')")
    page.wait_for_function("(url) => { const i = lgApp.canvas.images.get(url); return i && i.naturalWidth === 32; }",
                           arg=url)

    # a different image dropped on the node replaces it
    x, y = editor.title(load["id"])
    drop_file(editor, png_bytes(color=(10, 200, 10)), "green.png", "image/png", (x, y + 60))
    page.wait_for_function("(id) => lgApp.graph.getNode(id).widget('image').value === 'green.png'", arg=load["id"])

    # a pasted image goes to the selected LoadImage node
    page.mouse.click(x, y)
    editor.js("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "image.png", { type: "image/png" }));
        document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
    }""", base64.b64encode(png_bytes(color=(0, 0, 250))).decode())
    page.wait_for_function("(id) => lgApp.graph.getNode(id).widget('image').value === 'image.png'", arg=load["id"])
    prompt = editor.js("lgApp.exportApi()")
    assert prompt[str(load["id"])]["inputs"] == {"image": "image.png"}

    # a PNG without a workflow dropped on empty canvas becomes a new LoadImage node
    drop_file(editor, png_bytes(color=(5, 5, 5)), "plain.png", "image/png", (900, 650))
    page.wait_for_function("lgApp.graph.nodes.filter((n) => n.type === 'LoadImage').length === 2")


def test_dropped_pngs_and_json_files_open_their_workflow(editor):
    page = editor.page
    workflow = ui_workflow([
        ui_node(1, "TestValue", (100, 100), [41], outputs=[{"name": "INT", "type": "INT", "links": []}]),
        ui_node(2, "TestOutput", (500, 100), [], inputs=[{"name": "value", "type": "*", "link": None}]),
    ], [[1, 1, 0, 2, 0, "INT"]])
    drop_file(editor, png_bytes({"workflow": json.dumps(workflow), "prompt": "{}"}), "wf.png", "image/png", (600, 400))
    page.wait_for_function("lgApp.graph.nodes.length === 2 && lgApp.graph.getNode(1).type === 'TestValue'")
    assert editor.nodes_of("TestValue")[0]["widgets"]["value"] == 41

    prompt = {"5": {"class_type": "TestValue", "inputs": {"value": 3}},
              "6": {"class_type": "TestOutput", "inputs": {"value": ["5", 0]}}}
    drop_file(editor, png_bytes({"prompt": json.dumps(prompt)}), "api.png", "image/png", (600, 400))
    page.wait_for_function("lgApp.graph.getNode(5) && lgApp.graph.getNode(6)")
    exported = editor.js("lgApp.exportApi()")
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in exported.items()} == prompt

    drop_file(editor, json.dumps(workflow).encode(), "wf.json", "application/json", (600, 400))
    page.wait_for_function("lgApp.graph.getNode(1) && lgApp.graph.getNode(2) && lgApp.graph.nodes.length === 2")


def test_reconnects_by_itself_when_the_server_restarts(editor, editor_server):
    editor.allowed_errors = ["ERR_CONNECTION_REFUSED", "WebSocket"]  # logged while the server is down
    editor.load_prompt({"1": {"class_type": "TestValue", "inputs": {"value": 5}},
                        "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}})
    port = editor_server.port
    editor_server.stop()
    editor.page.wait_for_function("lgApp.api.state === 'reconnecting'")
    assert "reconnecting" in editor.page.inner_text("#connection-status")
    if "--port" not in editor_server.flags:
        editor_server.flags += ["--port", str(port)]  # the same address as before
    editor_server.start()
    editor.page.wait_for_function("lgApp.api.state === 'connected'", timeout=20000)
    editor.page.click("#queue-button")
    editor.page.wait_for_function("lgApp.runState.outputs.has('2')")
    assert editor.js("lgApp.runState.outputs.get('2').text") == ["5"]
