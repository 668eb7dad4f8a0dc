"""server.PromptServer as packs use it, through a real server: routes a pack adds at import
time (and while running) answer, also under /api; messages a node sends reach the websocket client
that queued the prompt; on_prompt handlers see each prompt; prestartup scripts run first; the
pack's web folder is served. And the same object exists, inert, under `main.py run`."""
import asyncio
import io
import json
import struct
import subprocess
import sys

import aiohttp
import pytest
from PIL import Image

from tests.server_helpers import REPO, LiveServer, get_json, post_json, queue, run, until_done


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("compat_server"), packs=("lg_test_nodes.py", "lg_compat_pack")) as live:
        yield live


def test_routes_added_at_import_answer_with_and_without_api(server):
    async def go():
        async with aiohttp.ClientSession() as session:
            for prefix in ("", "/api"):
                status, doc = await get_json(session, f"{server.url}{prefix}/lg_compat/hello/bob")
                assert status == 200 and doc == {"hello": "bob", "prestartup": "ran before import"}
            status, doc = await post_json(session, f"{server.url}/lg_compat/echo", {"a": [1, 2]})
            assert status == 200 and doc == {"echo": {"a": [1, 2]}}
            async with session.get(f"{server.url}/lg_compat/direct") as resp:
                assert resp.status == 200 and await resp.text() == "straight on the app"
            # core routes still win, and unknown paths still fall through to the static files
            status, doc = await get_json(session, f"{server.url}/queue")
            assert status == 200 and "queue_running" in doc
            async with session.get(f"{server.url}/lg_compat/nothing_here") as resp:
                assert resp.status == 404
            async with session.get(f"{server.url}/lg_compat/late") as resp:
                assert resp.status == 404  # not added yet
    run(go())


def test_web_folder_is_served_under_comfyuis_names(server):
    async def go():
        async with aiohttp.ClientSession() as session:
            status, listing = await get_json(session, f"{server.url}/extensions")
            assert "/extensions/lg_compat_pack/lg_compat.js" in listing  # WEB_DIRECTORY, by pack name
            assert "/extensions/lg-compat-pack/lg_compat.js" in listing  # [tool.comfy] web, by project name
            async with session.get(f"{server.url}/extensions/lg_compat_pack/lg_compat.js") as resp:
                assert resp.status == 200 and "lg_compat" in await resp.text()
    run(go())


def test_a_node_messages_the_client_that_queued_it(server):
    prompt = {"1": {"class_type": "LgCompatMessage", "inputs": {"text": "hello"}}}

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId=me") as ws, \
                    session.ws_connect(f"{server.url}/ws?clientId=someone_else") as other:
                binary: list[bytes] = []
                prompt_id = await queue(session, server, prompt, client_id="me")
                messages = await until_done(ws, prompt_id, binary=binary)
                mine = [m for m in messages if m["type"] == "lg_compat.message"]
                assert mine == [{"type": "lg_compat.message", "data": {
                    "text": "hello (seen by on_prompt)", "client_id": "me", "node": "1", "prompt_id": prompt_id}}]
                executed = next(m for m in messages if m["type"] == "executed")
                assert executed["data"]["output"] == {"text": ["hello (seen by on_prompt)"]}
                # the PIL image arrives as ComfyUI's PREVIEW_IMAGE frame: type 1, format 2 (PNG), bytes
                previews = [b for b in binary if struct.unpack(">I", b[:4])[0] == 1]
                assert len(previews) == 1 and struct.unpack(">I", previews[0][4:8])[0] == 2
                image = Image.open(io.BytesIO(previews[0][8:]))
                assert image.size == (4, 4) and image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
                # progress text: type 3, then the node id's length and the node id, then the text
                [text] = [b for b in binary if struct.unpack(">I", b[:4])[0] == 3]
                assert struct.unpack(">I", text[4:8])[0] == 1 and text[8:9] == b"1" and text[9:] == b"working on it"
                # nothing of it reached the other client
                await asyncio.sleep(0.2)
                while True:
                    try:
                        msg = await asyncio.wait_for(other.receive(), 0.2)
                    except asyncio.TimeoutError:
                        break
                    assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "status"
            # the route the node added while the server was running answers now
            status, doc = await get_json(session, f"{server.url}/lg_compat/late")
            assert status == 200 and doc == {"late": True}
            status, doc = await get_json(session, f"{server.url}/api/lg_compat/late")
            assert status == 200 and doc == {"late": True}
    run(go())


def test_prompt_server_exists_under_main_py_run(tmp_path):
    """Packs import PromptServer.instance at import time; under `main.py run` it is there but inert."""
    import shutil
    shutil.copytree(REPO / "tests" / "packs" / "lg_compat_pack", tmp_path / "custom_nodes" / "lg_compat_pack")
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LgCompatMessage", "inputs": {"text": "offline"}}}))
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "run", str(workflow), "--base-directory",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "IMPORT FAILED" not in done.stderr


def test_prompt_server_in_process(runtime):
    from server import PromptServer
    instance = PromptServer.instance
    assert instance is runtime.plugin_server
    assert instance.client_id is None and instance.last_node_id is None
    assert instance.prompt_queue.get_tasks_remaining() == 0
    assert instance.prompt_queue.get_current_queue() == ([], [])
    assert instance.get_queue_info() == {"exec_info": {"queue_remaining": 0}}
    instance.send_sync("anything", {"x": 1})  # no server: goes nowhere, raises nothing
    assert instance.encode_bytes(7, b"ab") == b"\x00\x00\x00\x07ab"
    with pytest.raises(RuntimeError):
        instance.encode_bytes("text", b"ab")
    assert instance.trigger_on_prompt({"prompt": {}}) == {"prompt": {}}
    instance.add_on_prompt_handler(lambda doc: 1 / 0)  # a failing handler is skipped
    instance.add_on_prompt_handler(lambda doc: {**doc, "seen": True})
    assert instance.trigger_on_prompt({"prompt": {}}) == {"prompt": {}, "seen": True}
