"""progress_state over the websocket: ComfyUI sends each node's state (running, its value and
max, finished) to the client that queued the prompt, and to no other client."""
import asyncio

import aiohttp

from tests.server_helpers import LiveServer, queue, run, until_done


def test_progress_state_goes_to_the_queuing_client_only(tmp_path):
    prompt = {"1": {"class_type": "TestSlow", "inputs": {"steps": 3, "delay": 0.05}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}

    async def go(server):
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(server.url + "/ws?clientId=alice") as alice, \
                s.ws_connect(server.url + "/ws?clientId=bob") as bob:
            pid = await queue(s, server, prompt, "alice")
            messages = await until_done(alice, pid)
            await asyncio.sleep(0.3)  # anything misdirected to bob has arrived by now
            seen_by_bob = []
            while True:
                try:
                    msg = await asyncio.wait_for(bob.receive(), 0.2)
                except asyncio.TimeoutError:
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    seen_by_bob.append(msg.json())
            return pid, messages, seen_by_bob

    with LiveServer(tmp_path) as server:
        pid, messages, seen_by_bob = run(go(server))
    states = [m["data"] for m in messages if m["type"] == "progress_state"]
    assert states and all(set(d) == {"prompt_id", "nodes"} and d["prompt_id"] == pid for d in states)
    slow = [d["nodes"]["1"] for d in states if "1" in d["nodes"]]
    assert [(n["state"], n["value"], n["max"]) for n in slow[:5]] == [
        ("running", 0, 1), ("running", 1, 3), ("running", 2, 3), ("running", 3, 3), ("finished", 3, 3)]
    assert slow[0] == {"value": 0, "max": 1, "state": "running", "node_id": "1", "prompt_id": pid,
                       "display_node_id": "1", "parent_node_id": None, "real_node_id": "1"}
    assert [m["type"] for m in seen_by_bob if m["type"] != "status"] == []
