"""The HTTP and websocket API against a real server process."""
import asyncio
import io
import subprocess
import sys
import time

import aiohttp
import pytest
from PIL import Image

from tests.server_helpers import (REPO, LiveServer, get_json, image_prompt, next_json, post_json, queue,
                                  raise_prompt, run, slow_prompt, until_done, value_prompt, wait_history)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    pack = base / "custom_nodes" / "lg_web_pack"
    (pack / "js" / "sub").mkdir(parents=True)
    (pack / "__init__.py").write_text('NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = "./js"\n')
    (pack / "js" / "hello.js").write_text("console.log('hello');\n")
    (pack / "js" / "sub" / "deep.js").write_text("export {};\n")
    with LiveServer(base) as srv:
        yield srv
    assert "Traceback" not in srv.log(), srv.log()


def test_prompt_is_followed_on_its_websocket_and_lands_in_history(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=alice") as ws:
            hello = await next_json(ws)
            assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                        "sid": "alice"}}
            pid = await queue(s, server, value_prompt(41), "alice", extra_data={"extra_pnginfo": {"workflow": {}}})
            messages = await until_done(ws, pid)
            ours = [(m["type"], m["data"].get("node")) for m in messages if m["type"] not in ("status", "progress_state")]
            assert ours == [("execution_start", None), ("execution_cached", None), ("executing", "1"),
                            ("executing", "2"), ("executed", "2"), ("execution_success", None), ("executing", None)]
            # ComfyUI's per-node states for the official frontend: each node running, then finished
            states = [{n: s["state"] for n, s in m["data"]["nodes"].items()}
                      for m in messages if m["type"] == "progress_state"]
            assert states == [{"1": "running"}, {"1": "finished"}, {"1": "finished", "2": "running"},
                              {"1": "finished", "2": "finished"}]
            executed = next(m for m in messages if m["type"] == "executed")
            assert executed["data"]["output"] == {"text": ["41"]} and executed["data"]["prompt_id"] == pid
            # status comes before the final executing, so the queue is already empty by then
            statuses = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages if m["type"] == "status"]
            assert statuses[-1] == 0
            status, history = await get_json(s, f"{server.url}/history/{pid}")
            entry = history[pid]
            assert entry["prompt"][1] == pid and entry["prompt"][2] == value_prompt(41)
            assert entry["prompt"][3] == {"extra_pnginfo": {"workflow": {}}, "client_id": "alice"}
            assert entry["prompt"][4] == ["2"]
            assert entry["outputs"] == {"2": {"text": ["41"]}}
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                   "execution_success"]
            assert entry["meta"]["2"]["node_id"] == "2"
    run(go())


def test_saved_image_is_listed_in_history_and_served_by_view(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=img") as ws:
            pid = await queue(s, server, image_prompt("api_test", 16, 8, 0x00FF00), "img")
            await until_done(ws, pid)
            entry = await wait_history(s, server, pid)
            images = entry["outputs"]["2"]["images"]
            assert images == [{"filename": "api_test_00001_.png", "subfolder": "", "type": "output"}]
            params = {"filename": images[0]["filename"], "subfolder": "", "type": "output"}
            async with s.get(server.url + "/view", params=params) as resp:
                assert resp.status == 200 and resp.content_type == "image/png"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                img = Image.open(io.BytesIO(await resp.read()))
                assert img.size == (16, 8) and img.convert("RGB").getpixel((0, 0)) == (0, 255, 0)
            async with s.get(server.url + "/api/view", params={**params, "preview": "webp;90"}) as resp:
                assert resp.status == 200 and resp.content_type == "image/webp"
                assert Image.open(io.BytesIO(await resp.read())).format == "WEBP"
            async with s.get(server.url + "/view", params={**params, "preview": "jpeg;50", "channel": "rgb"}) as resp:
                assert Image.open(io.BytesIO(await resp.read())).format == "JPEG"
            async with s.get(server.url + "/view", params={**params, "channel": "a"}) as resp:
                alpha = Image.open(io.BytesIO(await resp.read()))
                assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 255)
            async with s.get(server.url + "/view", params={"filename": "api_test_00001_.png [output]",
                                                          "type": "input"}) as resp:
                assert resp.status == 200  # the annotation picks the folder
            async with s.get(server.url + "/view", params={"filename": "missing.png"}) as resp:
                assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found"
    run(go())


def test_other_clients_see_queue_status_but_not_someone_elses_events(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=owner") as owner, \
                s.ws_connect(server.url + "/ws?clientId=watcher") as watcher:
            await next_json(owner)
            assert (await next_json(watcher))["data"]["sid"] == "watcher"
            pid = await queue(s, server, slow_prompt(3, 0.05), "owner")
            await until_done(owner, pid)
            seen = []
            while True:  # the watcher's status stream: up to 1 when queued, back to 0 when done
                msg = await next_json(watcher, timeout=10)
                seen.append(msg)
                if msg["type"] == "status" and msg["data"]["status"]["exec_info"]["queue_remaining"] == 0:
                    break
            assert {m["type"] for m in seen} == {"status"}
            assert any(m["data"]["status"]["exec_info"]["queue_remaining"] == 1 for m in seen)
    run(go())


def test_prompt_without_client_id_broadcasts_progress_but_not_execution_events(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws") as ws:
            sid = (await next_json(ws))["data"]["sid"]
            assert len(sid) == 32  # a fresh id when none is given
            pid = await queue(s, server, slow_prompt(4, 0.01))
            kinds = [m["type"] for m in await until_done(ws, pid)]
            assert "progress" in kinds and "executing" in kinds and "executed" in kinds
            assert not [k for k in kinds if k.startswith("execution_")]
    run(go())


def test_invalid_prompts_get_structured_400s(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            bad = value_prompt(5)
            bad["1"]["inputs"]["value"] = "lots"
            status, doc = await post_json(s, server.url + "/prompt", {"prompt": bad})
            assert status == 400
            assert doc["error"]["type"] == "prompt_outputs_failed_validation"
            errors = doc["node_errors"]["1"]["errors"]
            assert errors[0]["type"] == "invalid_input_type" and errors[0]["extra_info"]["input_name"] == "value"
            assert doc["node_errors"]["1"]["class_type"] == "TestValue"
            status, doc = await post_json(s, server.url + "/api/prompt", {"nothing": 1})
            assert status == 400 and doc["error"]["type"] == "no_prompt"
            status, doc = await post_json(s, server.url + "/prompt", {"prompt": {"1": {"class_type": "Nope"}}})
            assert status == 400 and doc["error"]["type"] == "invalid_prompt"
            status, doc = await post_json(s, server.url + "/prompt",
                                          {"prompt": {"1": {"class_type": "TestValue", "inputs": {"value": 1}}}})
            assert status == 400 and doc["error"]["type"] == "prompt_no_outputs"
            status, doc = await post_json(s, server.url + "/prompt", {"prompt": value_prompt(1), "number": "x"})
            assert status == 400 and "number" in doc["error"]["details"]
            status, doc = await post_json(s, server.url + "/prompt", {"prompt": value_prompt(1), "prompt_id": 7})
            assert status == 400 and "prompt_id" in doc["error"]["details"]
            status, _ = await get_json(s, server.url + "/prompt")
            assert status == 200
    run(go())


def test_chosen_prompt_id_and_duplicates(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            status, doc = await post_json(s, server.url + "/prompt",
                                          {"prompt": value_prompt(77), "prompt_id": "mine-1"})
            assert status == 200 and doc["prompt_id"] == "mine-1"
            await wait_history(s, server, "mine-1")
            status, doc = await post_json(s, server.url + "/prompt",
                                          {"prompt": value_prompt(78), "prompt_id": "mine-1"})
            assert status == 400 and "already" in doc["error"]["details"]
    run(go())


def test_a_raising_node_reports_execution_error_and_the_next_prompt_runs(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=errs") as ws:
            bad = await queue(s, server, raise_prompt("kaput"), "errs")
            good = await queue(s, server, value_prompt(1234), "errs")
            messages = await until_done(ws, bad)
            error = next(m["data"] for m in messages if m["type"] == "execution_error")
            assert error["node_id"] == "2" and error["node_type"] == "TestRaise"
            assert error["exception_message"] == "kaput" and error["exception_type"] == "RuntimeError"
            assert error["traceback"] and error["executed"] == ["1"]
            messages = await until_done(ws, good)
            assert any(m["type"] == "execution_success" for m in messages)
            entry = await wait_history(s, server, bad)
            assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
            assert entry["status"]["messages"][-1][0] == "execution_error"
            assert (await wait_history(s, server, good))["outputs"] == {"2": {"text": ["1234"]}}
    run(go())


def test_interrupt_stops_a_running_prompt_within_a_second(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=stopper") as ws:
            pid = await queue(s, server, slow_prompt(400, 0.05), "stopper")  # 20 s if left alone
            while (await next_json(ws))["type"] != "progress":
                pass
            status, doc = await post_json(s, server.url + "/interrupt", {"prompt_id": "someone-else"})
            assert status == 200 and doc is None  # an empty body, as ComfyUI's
            await asyncio.sleep(0.3)
            status, doc = await get_json(s, server.url + "/queue")
            assert [item[1] for item in doc["queue_running"]] == [pid]  # not that prompt: still running
            started = time.monotonic()
            async with s.post(server.url + "/interrupt") as resp:  # no body, as older frontends send
                assert resp.status == 200
            messages = await until_done(ws, pid, timeout=5)
            assert time.monotonic() - started < 1.0
            interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
            assert interrupted["node_id"] == "1" and interrupted["node_type"] == "TestSlow"
            entry = await wait_history(s, server, pid)
            assert entry["status"]["status_str"] == "error"
            assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    run(go())


def test_queue_lists_orders_deletes_and_clears_pending_prompts(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=q") as ws:
            slow = await queue(s, server, slow_prompt(400, 0.05), "q")
            while (await next_json(ws))["type"] != "progress":
                pass
            later = [await queue(s, server, value_prompt(900 + i)) for i in range(3)]
            first = await queue(s, server, value_prompt(999), front=True)
            status, doc = await get_json(s, server.url + "/queue")
            assert [item[1] for item in doc["queue_running"]] == [slow]
            assert [item[1] for item in doc["queue_pending"]] == [first] + later
            assert doc["queue_pending"][1][2] == value_prompt(900) and doc["queue_pending"][1][4] == ["2"]
            status, doc = await get_json(s, server.url + "/prompt")
            assert doc == {"exec_info": {"queue_remaining": 5}}
            status, doc = await post_json(s, server.url + "/queue", {"delete": [later[1], slow]})
            assert status == 200 and doc is None  # an empty body, as ComfyUI's
            status, doc = await get_json(s, server.url + "/api/queue")
            assert [item[1] for item in doc["queue_running"]] == [slow]  # the running one is not deletable
            assert [item[1] for item in doc["queue_pending"]] == [first, later[0], later[2]]
            status, doc = await post_json(s, server.url + "/queue", {"clear": True})
            status, doc = await get_json(s, server.url + "/queue")
            assert doc["queue_pending"] == []
            await post_json(s, server.url + "/interrupt", {"prompt_id": slow})
            await until_done(ws, slow)
            status, doc = await get_json(s, server.url + "/queue")
            assert doc == {"queue_running": [], "queue_pending": []}
            for pid in [first] + later:
                status, doc = await get_json(s, f"{server.url}/history/{pid}")
                assert doc == {}
    run(go())


def test_history_windows_and_deletion(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=h") as ws:
            ids = []
            for i in range(3):
                ids.append(await queue(s, server, value_prompt(500 + i), "h"))
            for pid in ids:
                await until_done(ws, pid)
            _, everything = await get_json(s, server.url + "/history")
            order = list(everything)
            assert order[-3:] == ids
            _, last_two = await get_json(s, server.url + "/history", params={"max_items": "2"})
            assert list(last_two) == ids[1:]
            start = len(order) - 3
            _, window = await get_json(s, server.url + "/history", params={"max_items": "1", "offset": str(start + 1)})
            assert list(window) == [ids[1]]
            status, doc = await get_json(s, server.url + "/history", params={"max_items": "many"})
            assert status == 400 and doc["error"]["type"] == "invalid_request"
            status, _ = await post_json(s, server.url + "/history", {"delete": [ids[0]]})
            assert status == 200
            _, doc = await get_json(s, f"{server.url}/history/{ids[0]}")
            assert doc == {}
            _, doc = await get_json(s, f"{server.url}/api/history/{ids[1]}")
            assert list(doc) == [ids[1]]
    run(go())


def test_partial_execution_targets_run_only_the_chosen_outputs(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=part") as ws:
            prompt = value_prompt(61)
            prompt["3"] = {"class_type": "TestOutput", "inputs": {"value": 62}}
            pid = await queue(s, server, prompt, "part", partial_execution_targets=["3"])
            await until_done(ws, pid)
            entry = await wait_history(s, server, pid)
            assert entry["outputs"] == {"3": {"text": ["62"]}} and entry["prompt"][4] == ["3"]
    run(go())


def test_feature_flags_are_answered_and_reconnects_replace_the_old_socket(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(server.url + "/ws?clientId=flags") as ws:
                await next_json(ws)
                await ws.send_str('{"type": "feature_flags", "data": {"supports_preview_metadata": false}}')
                reply = await next_json(ws)
                assert reply["type"] == "feature_flags"
                assert reply["data"]["max_upload_size"] == 100 * 1024 * 1024
                await ws.send_str("not json at all")  # ignored, the socket stays up
                async with s.ws_connect(server.url + "/ws?clientId=flags") as again:
                    await next_json(again)
                    msg = await asyncio.wait_for(ws.receive(), 5)
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
                    pid = await queue(s, server, value_prompt(3131), "flags")
                    await until_done(again, pid)
    run(go())


def test_information_routes(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            status, info = await get_json(s, server.url + "/object_info")
            assert status == 200
            node = info["TestValue"]
            assert node["input"]["required"]["value"][0] == "INT" and node["output"] == ["INT"]
            assert node["python_module"] == "custom_nodes.lg_test_nodes" and node["display_name"] == "Test Value"
            assert info["SaveImage"]["output_node"] is True
            _, one = await get_json(s, server.url + "/api/object_info/TestAdd")
            assert list(one) == ["TestAdd"]
            _, none = await get_json(s, server.url + "/object_info/NoSuchNode")
            assert none == {}
            _, keys = await get_json(s, server.url + "/models")
            assert "checkpoints" in keys and "vae_approx" in keys
            assert await get_json(s, server.url + "/models/checkpoints") == (200, [])
            status, doc = await get_json(s, server.url + "/models/not_a_folder")
            assert status == 404 and doc["error"]["type"] == "not_found"
            assert await get_json(s, server.url + "/embeddings") == (200, [])
            _, stats = await get_json(s, server.url + "/system_stats")
            assert stats["system"]["ram_total"] > 0 and stats["system"]["python_version"]
            assert stats["devices"] and "vram_total" in stats["devices"][0]
            _, features = await get_json(s, server.url + "/api/features")
            assert features == {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
            _, extensions = await get_json(s, server.url + "/extensions")
            assert "/extensions/lg_web_pack/hello.js" in extensions
            assert "/extensions/lg_web_pack/sub/deep.js" in extensions
            async with s.get(server.url + "/extensions/lg_web_pack/hello.js") as resp:
                assert resp.status == 200 and "hello" in await resp.text()
                assert "no-cache" in resp.headers["Cache-Control"]
            async with s.get(server.url + "/") as resp:
                assert resp.status == 200 and resp.content_type == "text/html"
            async with s.get(server.url + "/no/such/route") as resp:
                assert resp.status == 404
            status, doc = await post_json(s, server.url + "/free", {"free_memory": True})
            assert status == 200 and doc is None
    run(go())


def test_unknown_flags_fail_with_a_clear_message(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--base-directory", str(tmp_path), "--bogus"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def test_a_taken_port_is_reported_clearly(server, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--base-directory", str(tmp_path),
                           "--port", str(server.port)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and f"port {server.port} on 127.0.0.1 is already in use" in proc.stderr
    assert "To see the GUI" not in proc.stdout
