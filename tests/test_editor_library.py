"""The editor's workflows saved on the server (the Workflows tab) and settings kept on the server,
driven in Chromium against the real server."""
from __future__ import annotations

import urllib.parse

import pytest

from tests.editor_helpers import (VIEWPORT, EditorPage, browser, editor, editor_server,  # noqa: F401 (fixtures)
                                  needs_browser)
from tests.server_helpers import call

pytestmark = needs_browser


def user_files(server) -> list[str]:
    status, files = call(server.url + "/api/userdata?dir=workflows&recurse=true")
    assert status in (200, 404), files
    return files if status == 200 else []


def stored(server, name: str):
    status, doc = call(f"{server.url}/api/userdata/workflows%2F{urllib.parse.quote(name, safe='')}")
    assert status == 200, doc
    return doc


def put(server, name: str, doc: dict) -> None:
    assert call(f"{server.url}/api/userdata/workflows%2F{urllib.parse.quote(name, safe='')}", "POST", doc)[0] == 200


@pytest.fixture
def clean_store(editor_server):
    """The shared server's saved workflows and these settings as a new user has them, after the test too."""
    defaults = {"Comfy.PromptFilename": True, "Comfy.Workflow.ConfirmDelete": True, "Comfy.Graph.ZoomSpeed": 1.1,
                "Comfy.QueueButton.BatchCountLimit": 100}

    def reset():
        for name in user_files(editor_server):
            call(f"{editor_server.url}/api/userdata/workflows%2F{urllib.parse.quote(name, safe='')}", "DELETE")
        assert call(editor_server.url + "/api/settings", "POST", defaults)[0] == 200

    reset()
    yield
    reset()


def dialog_answer(page, text: str | None) -> None:
    """Type into the open dialog and press Enter (or Escape for None)."""
    page.locator(".dialog").wait_for()
    dialog = page.locator(".dialog").element_handle()
    if text is not None and page.locator(".dialog-input").count():
        page.locator(".dialog-input").fill(text)
    page.keyboard.press("Enter" if text is not None else "Escape")
    dialog.wait_for_element_state("hidden")  # this one: another may open right after


def test_workflows_are_saved_listed_reopened_renamed_and_deleted_on_the_server(editor, clean_store):
    page, server = editor.page, editor.server
    page.locator("#graph-canvas").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    dialog_answer(page, "portrait/first try")
    page.wait_for_function("lgApp.library.path === 'workflows/portrait/first try.json'")
    assert user_files(server) == ["portrait/first try.json"]
    saved = stored(server, "portrait/first try.json")
    assert saved["nodes"] and saved == editor.js("lgApp.serialize()")
    assert page.locator("#workflow-name").inner_text() == "portrait/first try"

    # a second save goes back to the same file without asking
    seed_before = editor.nodes_of("KSampler")[0]["widgets"]["seed"]
    editor.js("() => { const n = lgApp.graph.nodes.find(n => n.type === 'KSampler'); "
              "n.widget('seed').value = 7; lgApp.commit('test'); }")
    page.click("#save-button")
    page.wait_for_function("() => !document.querySelector('.dialog')")
    page.wait_for_timeout(300)
    assert stored(server, "portrait/first try.json")["nodes"] != saved["nodes"]

    # another document, then open the saved one from the Workflows tab
    page.click("#new-button")
    assert editor.summary()["nodes"] == [] and page.locator("#workflow-name").inner_text() == ""
    page.click("#workflows-button")
    row = page.locator(".q-item.workflow", has_text="portrait/first try")
    row.get_by_role("button", name="Open").click()
    page.wait_for_function("lgApp.graph.nodes.length > 0")
    assert editor.nodes_of("KSampler")[0]["widgets"]["seed"] == 7 != seed_before
    assert page.locator("#workflow-name").inner_text() == "portrait/first try"

    # rename it; the open workflow follows
    row.get_by_role("button", name="Rename").click()
    dialog_answer(page, "final")
    page.wait_for_function("lgApp.library.path === 'workflows/final.json'")
    assert user_files(server) == ["final.json"]
    assert page.locator(".q-item.workflow.current").inner_text().startswith("final")

    # delete asks first; cancelling keeps it
    page.locator(".q-item.workflow", has_text="final").get_by_role("button", name="Delete").click()
    dialog_answer(page, None)
    assert user_files(server) == ["final.json"]
    page.locator(".q-item.workflow", has_text="final").get_by_role("button", name="Delete").click()
    dialog_answer(page, "")
    page.wait_for_function("lgApp.library.path === null")
    assert user_files(server) == []
    page.locator(".q-empty", has_text="no saved workflows").wait_for()


def test_saving_under_an_existing_name_asks_before_replacing(editor, clean_store):
    page, server = editor.page, editor.server
    editor.allowed_errors = ["409 (Conflict)"]  # Chromium logs the server's answer to the first try
    put(server, "taken.json", {"nodes": [], "links": [], "version": 0.4})
    page.click("#workflows-button")
    page.get_by_role("button", name="Save as…").click()
    dialog_answer(page, "taken")
    page.locator(".dialog", has_text="Replace").wait_for()
    dialog_answer(page, None)  # no: the file stays as it was
    assert stored(server, "taken.json")["nodes"] == []
    page.get_by_role("button", name="Save as…").click()
    dialog_answer(page, "taken")
    dialog_answer(page, "")  # yes
    page.wait_for_function("lgApp.library.path === 'workflows/taken.json'")
    assert stored(server, "taken.json")["nodes"]


def test_settings_are_kept_on_the_server_for_the_next_browser(editor, browser, clean_store):
    page, server = editor.page, editor.server
    page.click("#settings-button")
    page.uncheck("#setting-Comfy\\.Workflow\\.ConfirmDelete")
    page.fill("#setting-Comfy\\.Graph\\.ZoomSpeed", "2")
    page.locator("#setting-Comfy\\.Graph\\.ZoomSpeed").dispatch_event("change")
    page.fill("#setting-Comfy\\.Graph\\.ZoomSpeed", "9")  # out of range: refused, not stored
    page.locator("#setting-Comfy\\.Graph\\.ZoomSpeed").dispatch_event("change")
    page.wait_for_function("lgApp.notifier.history.some(t => t.message.includes('1.01 to 2.5'))")
    page.wait_for_timeout(300)
    settings = call(server.url + "/api/settings")[1]
    assert settings["Comfy.Workflow.ConfirmDelete"] is False and settings["Comfy.Graph.ZoomSpeed"] == 2

    # another browser (nothing in its storage) gets the same settings from the server
    context = browser.new_context(viewport=VIEWPORT)
    other = EditorPage(context.new_page(), server.url + "/").open()
    other.page.click("#settings-button")
    assert not other.page.is_checked("#setting-Comfy\\.Workflow\\.ConfirmDelete")
    assert other.page.input_value("#setting-Comfy\\.Graph\\.ZoomSpeed") == "2"
    scale = other.js("lgApp.canvas.scale")
    other.page.mouse.move(400, 400)
    other.page.mouse.wheel(0, -100)  # one notch in: twice as large
    other.page.wait_for_function("s => lgApp.canvas.scale > s * 1.5", arg=scale)
    assert other.js("lgApp.canvas.scale") == pytest.approx(scale * 2, rel=1e-6)
    # without the confirmation, Delete removes at once
    put(server, "gone.json", {"nodes": [], "links": [], "version": 0.4})
    other.page.click("#workflows-button")
    other.page.locator(".q-item.workflow", has_text="gone").get_by_role("button", name="Delete").click()
    other.page.locator(".q-empty", has_text="no saved workflows").wait_for()
    assert other.page.locator(".dialog").count() == 0
    assert not other.errors, other.errors
    context.close()
