"""The SQLite queue and history: ordering, windows, and surviving a killed server."""
import json
import time

import aiohttp
import pytest

from server.preview import Previewer
from server.queue import DuplicatePromptId, Job, PromptStore, StoreBusy
from server.worker import MAX_RESTARTS, Worker, restart_marker
from server.ws import Hub
from tests.conftest import make_runtime
from tests.server_helpers import (LiveServer, get_json, next_json, post_json, queue, run, slow_prompt, until_done,
                                  value_prompt, wait_history)


def job(store: PromptStore, pid: str, front: bool = False, number=None, client=None) -> Job:
    extra = {"client_id": client} if client else {}
    return Job(store.next_number(front) if number is None else number, pid, value_prompt(1), extra, ["2"])


def test_store_orders_by_number_then_arrival_and_survives_reopening(tmp_path):
    store = PromptStore(tmp_path / "q.db")
    for pid in ("a", "b"):
        store.enqueue(job(store, pid))
    store.enqueue(job(store, "front", front=True))
    store.enqueue(job(store, "tie", number=1))  # same number as "b": arrival breaks the tie
    try:
        store.enqueue(job(store, "a"))
        raise AssertionError("duplicate accepted")
    except DuplicatePromptId:
        pass
    assert [json.loads(i)[1] for i in store.queue_items("pending")] == ["front", "a", "b", "tie"]
    first = store.claim_next()
    assert first.prompt_id == "front" and first.prompt == value_prompt(1) and first.outputs == ["2"]
    assert store.remaining() == 4 and [json.loads(i)[1] for i in store.queue_items("running")] == ["front"]
    store.finish("front", {"2": {"text": ["1"]}}, {"status_str": "success", "completed": True, "messages": []}, {})
    assert store.delete_pending(["b", "front", "nope"]) == ["b"]
    store.close()

    reopened = PromptStore(tmp_path / "q.db")
    assert reopened.recovered == []
    assert json.loads(reopened.history_text()) == {"front": {
        "prompt": [-2, "front", value_prompt(1), {}, ["2"]], "outputs": {"2": {"text": ["1"]}},
        "status": {"status_str": "success", "completed": True, "messages": []}, "meta": {}}}
    reopened.enqueue(job(reopened, "after"))
    assert [json.loads(i)[1] for i in reopened.queue_items("pending")] == ["a", "tie", "after"]
    assert reopened.claim_next().prompt_id == "a"
    reopened.close()

    crashed = PromptStore(tmp_path / "q.db")  # "a" was running when the process went away
    assert crashed.recovered == ["a"]
    again = crashed.claim_next()
    assert again.prompt_id == "a" and again.restarts == 1


def test_history_windows_match_comfyui(tmp_path):
    store = PromptStore(tmp_path / "h.db")
    for i in range(5):
        pid = f"p{i}"
        store.enqueue(job(store, pid))
        store.claim_next()
        store.finish(pid, {}, {"status_str": "success", "completed": True, "messages": []}, {})
    ids = lambda text: list(json.loads(text))  # noqa: E731
    assert ids(store.history_text()) == ["p0", "p1", "p2", "p3", "p4"]
    assert ids(store.history_text(max_items=2)) == ["p3", "p4"]
    assert ids(store.history_text(offset=3)) == ["p3", "p4"]
    assert ids(store.history_text(max_items=2, offset=1)) == ["p1", "p2"]
    assert ids(store.history_text(max_items=0)) == []
    assert store.history_entry("p2")["prompt"][1] == "p2" and store.history_entry("zz") is None
    store.delete_history(["p0", "p4"])
    assert ids(store.history_text()) == ["p1", "p2", "p3"]
    store.delete_history(None)
    assert store.history_text() == "{}" and store.history_count() == 0


def test_a_killed_server_loses_nothing_and_marks_the_interrupted_prompt(tmp_path):
    server = LiveServer(tmp_path).start()
    try:
        async def before_kill():
            async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=k") as ws:
                done = await queue(s, server, value_prompt(10), "k")
                await until_done(ws, done)
                running = await queue(s, server, slow_prompt(12, 0.05), "k")
                pending = [await queue(s, server, value_prompt(20 + i), "k") for i in range(3)]
                while (await next_json(ws))["type"] != "progress":
                    pass
                return done, running, pending

        done, running, pending = run(before_kill())
        server.kill()
        assert "Traceback" not in server.log()

        server.start()  # same base directory: same database

        async def after_restart():
            async with aiohttp.ClientSession() as s:
                entries = {pid: await wait_history(s, server, pid) for pid in [done, running] + pending}
                _, history = await get_json(s, server.url + "/history")
                _, queued = await get_json(s, server.url + "/queue")
                return entries, history, queued

        entries, history, queued = run(after_restart())
        assert queued == {"queue_running": [], "queue_pending": []}
        assert list(history) == [done, running] + pending  # completion order; nothing lost, nothing doubled
        for pid, entry in entries.items():
            kinds = [m[0] for m in entry["status"]["messages"]]
            assert entry["status"]["status_str"] == "success", (pid, entry["status"])
            assert kinds.count("execution_start") == 1, (pid, kinds)
        marked = entries[running]["status"]["messages"]
        assert marked[0][0] == "execution_interrupted" and marked[0][1]["reason"] == "server_restart"
        assert [m[0] for m in marked[1:]][-1] == "execution_success"
        assert entries[running]["outputs"] == {"2": {"text": ["12"]}}
        assert all(entries[p]["status"]["messages"][0][0] == "execution_start" for p in [done] + pending)
        assert [entries[p]["outputs"]["2"]["text"] for p in pending] == [["20"], ["21"], ["22"]]

        async def stop_while_running():
            async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=k") as ws:
                pid = await queue(s, server, slow_prompt(400, 0.05), "k")
                while (await next_json(ws))["type"] != "progress":
                    pass
                return pid

        slow = run(stop_while_running())
        assert server.stop() == 0  # SIGTERM: a clean stop also leaves the prompt to run again
        server.start()

        async def after_clean_stop():
            async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=k") as ws:
                await next_json(ws)
                _, queued = await get_json(s, server.url + "/queue")
                assert [item[1] for item in queued["queue_running"] + queued["queue_pending"]] == [slow]
                await post_json(s, server.url + "/interrupt", {"prompt_id": slow})
                entry = await wait_history(s, server, slow)
                assert entry["status"]["messages"][0][1]["reason"] == "server_restart"
                assert entry["status"]["messages"][-1][0] == "execution_interrupted"
                await post_json(s, server.url + "/history", {"clear": True})
                _, history = await get_json(s, server.url + "/history")
                assert history == {}
        run(after_clean_stop())
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_restart_marker_shape():
    name, data = restart_marker("p")
    assert name == "execution_interrupted" and data["prompt_id"] == "p" and data["reason"] == "server_restart"


def test_worker_gives_up_on_prompts_that_keep_killing_the_server(tmp_path):
    runtime = make_runtime(tmp_path / "base")
    path = tmp_path / "w.db"
    store = PromptStore(path)
    store.enqueue(job(store, "crashy"))
    store.enqueue(Job(store.next_number(False), "gone", {"1": {"class_type": "UninstalledNode", "inputs": {}}},
                      {}, ["1"]))
    store.enqueue(job(store, "fine"))
    for _ in range(MAX_RESTARTS):  # "crashy" takes the process down each time it starts
        store.claim_next()
        store.close()
        store = PromptStore(path)
    worker = Worker(runtime.executor, store, Hub({}), Previewer("none", []), lambda: None)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while store.history_count() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    crashy = store.history_entry("crashy")
    kinds = [m[0] for m in crashy["status"]["messages"]]
    assert kinds == ["execution_interrupted"] * MAX_RESTARTS + ["execution_error"]
    assert crashy["status"]["messages"][-1][1]["exception_type"] == "server_restart"
    gone = store.history_entry("gone")["status"]
    assert gone["status_str"] == "error" and "UninstalledNode" in gone["messages"][-1][1]["exception_message"]
    assert store.history_entry("fine")["status"]["status_str"] == "success"


def test_one_server_per_queue(tmp_path):
    first = PromptStore(tmp_path / "one.db")
    with pytest.raises(StoreBusy, match="another LatentGraph server"):
        PromptStore(tmp_path / "one.db")
    first.close()
    PromptStore(tmp_path / "one.db").close()  # free again once the owner is gone
