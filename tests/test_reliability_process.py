"""Reliability of the server process: the folders' lock, slow and stalled clients, websocket
clients that stop reading, kill -9 under load, hostile model files (issue 17)."""
import asyncio
import base64
import http.client
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import aiohttp
import pytest

from server import ws as wsmod
from tests.server_helpers import REPO, LiveServer, get_json, post_json, run, value_prompt

PACKS = ("lg_test_nodes.py", "lg_hostile_nodes.py")


def get(server, path: str) -> tuple[int, dict]:
    async def go():
        async with aiohttp.ClientSession() as s:
            return await get_json(s, server.url + path)
    return run(go())


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory):
    """A server with a 1 s header/idle timeout."""
    srv = LiveServer(tmp_path_factory.mktemp("timeouts"), "--http-timeout", "1", packs=PACKS).start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log()


def test_a_second_server_stops_before_touching_the_first_ones_files(quick_server):
    base = quick_server.base
    preview = base / "temp" / "preview_00001_.png"
    preview.write_bytes(b"the running server's preview")
    (base / "temp" / "sub").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--base-directory", str(base), "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 1
    assert "another LatentGraph server" in proc.stderr and "Traceback" not in proc.stderr
    assert preview.read_bytes() == b"the running server's preview" and (base / "temp" / "sub").is_dir()
    assert get(quick_server, "/queue")[0] == 200
    # the command line still runs beside a server, and leaves its temp/ alone too
    (base / "wf.json").write_text(json.dumps(value_prompt(7)))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", str(base / "wf.json"),
                           "--base-directory", str(base)], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0 and proc.stdout.strip() == "2: 7", proc.stderr
    assert preview.exists()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_never_finish_their_headers_are_closed(quick_server):
    slow = []
    for i in range(30):
        sock = socket.create_connection(("127.0.0.1", quick_server.port))
        sock.sendall(b"GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * i)  # and never the end
        slow.append(sock)
    idle = socket.create_connection(("127.0.0.1", quick_server.port))  # sends nothing at all
    kept = socket.create_connection(("127.0.0.1", quick_server.port))  # one request, then idles
    kept.sendall(f"GET /prompt HTTP/1.1\r\nHost: 127.0.0.1:{quick_server.port}\r\n\r\n".encode())
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    try:
        for sock in slow + [idle, kept]:
            assert closed_within(sock, max(0.1, started + 4 - time.monotonic())), "a slow connection stayed open"
    finally:
        for sock in slow + [idle, kept]:
            sock.close()
    assert get(quick_server, "/queue")[0] == 200


def ws_handshake(port: int, cid: str) -> socket.socket:
    """A websocket client by hand, so it can stop reading (aiohttp's client always reads)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId={cid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return sock


def test_a_websocket_client_that_stops_reading_is_dropped_and_the_others_get_everything(quick_server):
    stalled = ws_handshake(quick_server.port, "stalled")  # and never reads again
    tags = list(range(1, 13))

    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(quick_server.url + "/ws?clientId=reader",
                                                             max_msg_size=0) as reader:
            seen, slowest = [], 0.0
            for tag in tags:  # no client_id: each 4 MB `executed` event goes to every client
                status, doc = await post_json(s, quick_server.url + "/prompt", {"prompt": {
                    "1": {"class_type": "HostileBigOutput", "inputs": {"size": 4 << 20, "tag": tag}}}})
                assert status == 200, doc
                while True:
                    msg = await asyncio.wait_for(reader.receive(), 30)
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    doc = json.loads(msg.data)
                    if doc["type"] == "executed":
                        seen.append(int(doc["data"]["output"]["text"][0].split(":")[0]))
                        break
                started = time.monotonic()
                status, _ = await get_json(s, quick_server.url + "/prompt")
                slowest = max(slowest, time.monotonic() - started)
                assert status == 200
            return seen, slowest

    seen, slowest = run(go())
    assert seen == tags  # the reading client got every event, in order
    assert slowest < 2.0  # nobody waited for the stalled client
    assert "websocket client stalled is not reading" in quick_server.log()
    assert closed_within(stalled, 10), "the stalled client was never disconnected"
    stalled.close()


class FakeTransport:
    """Counts what is written; keeps the bytes when `keep`; its buffer drains unless stalled."""

    def __init__(self, keep: bool = False, stalled: bool = False):
        self.keep, self.stalled = keep, stalled
        self.data: list[bytes] = []
        self.writes = self.written = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.written += len(data)
        if self.keep:
            self.data.append(data)

    def get_write_buffer_size(self) -> int:
        return self.written if self.stalled else 0

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class FakeSocket:
    closed = False


def test_broadcasting_encodes_once_and_batches_each_clients_writes():
    """What keeps API latency flat as clients are added: an event costs the event loop one list
    append per client, and each client one socket write per flush, however many events."""
    async def go():
        hub = wsmod.Hub({})
        hub.bind_loop(asyncio.get_running_loop())
        transports = [FakeTransport(keep=i == 0) for i in range(20)]
        for i, transport in enumerate(transports):
            hub.clients[f"c{i}"] = wsmod.Connection(f"c{i}", FakeSocket(), transport)
        stalled = FakeTransport(stalled=True)
        hub.clients["stalled"] = wsmod.Connection("stalled", FakeSocket(), stalled)
        done = threading.Event()

        def worker():  # the prompt worker's thread: 18 MB of events in a burst
            for i in range(400):
                hub.post("progress", {"value": i, "max": 400, "pad": "x" * 45_000})
            done.set()

        threading.Thread(target=worker).start()
        while not done.is_set():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        return transports, stalled

    transports, stalled = run(go())
    assert all(t.writes < 400 for t in transports)  # batched
    texts = [json.loads(payload) for payload in split_frames(b"".join(transports[0].data))]
    assert [t["data"]["value"] for t in texts] == list(range(400))  # all of them, in order
    assert len({t.written for t in transports}) == 1
    assert stalled.aborted and stalled.written <= wsmod.BUFFER_LIMIT  # dropped, never waited for


def split_frames(data: bytes) -> list[bytes]:
    """The payloads of unmasked server frames."""
    out, pos = [], 0
    while pos < len(data):
        length, head = data[pos + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
        out.append(data[pos + head:pos + head + length])
        pos += head + length
    return out


def test_kill_9_under_posting_clients_loses_no_acknowledged_prompt(tmp_path):
    server = LiveServer(tmp_path).start()
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    killed = threading.Event()

    def poster(first: int) -> None:
        value = first
        while not killed.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                conn.request("POST", "/prompt", json.dumps({"prompt": value_prompt(value)}),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                doc = json.loads(resp.read())
            except (OSError, http.client.HTTPException, ValueError):
                return  # the server is gone
            finally:
                conn.close()
            assert resp.status == 200, doc
            with lock:
                acknowledged[doc["prompt_id"]] = value
            value += 1

    try:
        threads = [threading.Thread(target=poster, args=(k * 100_000,)) for k in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.8)
        server.kill()  # SIGKILL while prompts are being posted, queued and run
        killed.set()
        for t in threads:
            t.join(15)
        assert len(acknowledged) > 50
        server.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and get(server, "/prompt")[1]["exec_info"]["queue_remaining"]:
            time.sleep(0.2)
        _, history = get(server, "/history")
    finally:
        server.stop()
    missing = set(acknowledged) - set(history)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged prompts were lost"
    for pid, value in acknowledged.items():
        entry = history[pid]
        assert entry["status"]["status_str"] == "success" and entry["outputs"] == {"2": {"text": [str(value)]}}
        kinds = [m[0] for m in entry["status"]["messages"]]
        assert kinds.count("execution_start") == 1, kinds  # each run once (a cut-short run is marked)
    assert "Traceback" not in server.log()


def test_pickled_checkpoints_never_run_code_through_the_server(quick_server, tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = quick_server.base / "models" / "checkpoints"
    for name in ("evil.ckpt", "evil.safetensors", "evil.pt"):
        (folder / name).write_bytes(pickle.dumps({"state_dict": {"w": Payload()}}, protocol=2))
    for name in ("evil.ckpt", "evil.safetensors", "evil.pt"):
        status, doc = run(queue_and_wait(quick_server, {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}))
        assert status == "error", doc
        assert name in doc["exception_message"], doc["exception_message"]
    assert not marker.exists()
    pickle.loads((folder / "evil.ckpt").read_bytes())  # control: the payload is live
    assert marker.exists()


async def queue_and_wait(server, prompt: dict) -> tuple[str, dict]:
    async with aiohttp.ClientSession() as s:
        status, doc = await post_json(s, server.url + "/prompt", {"prompt": prompt})
        assert status == 200, doc
        pid = doc["prompt_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, entry = await get_json(s, f"{server.url}/history/{pid}")
            if pid in entry:
                status = entry[pid]["status"]
                return status["status_str"], status["messages"][-1][1]
            await asyncio.sleep(0.05)
    raise AssertionError("the prompt never finished")
