"""Reliability through a real server: hostile or careless requests get a clear 4xx naming what
is wrong, cost other requests nothing, and the server goes on (issue 17).

Broad path-traversal and cross-site cases are in test_server_files.py and
test_server_security.py; fuzzing in test_reliability_fuzz.py; the command line in
test_reliability_cli.py; locks, timeouts, slow clients and kill -9 in test_reliability_process.py.
"""
import http.client
import io
import json
import pickle
import socket
import struct
import threading
import time
import zlib

import aiohttp
import pytest
from PIL import Image

from tests.server_helpers import LiveServer, gzip_bomb, run, value_prompt

PACKS = ("lg_test_nodes.py", "lg_hostile_nodes.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("reliability"), "--max-upload-size", "1", packs=PACKS).start()
    yield srv
    srv.stop()
    log = srv.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]


# -- plain HTTP, by hand where the test needs control over the bytes -------------------------

def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict | bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


def post(server, path: str, raw: bytes | str) -> tuple[int, dict]:
    return request(server, "POST", path, raw.encode() if isinstance(raw, str) else raw,
                   {"Content-Type": "application/json"})


def raw_exchange(server, head: bytes, body: bytes = b"", wait_close: float = 6.0) -> tuple[int, dict, float]:
    """Send a request byte for byte; returns (status, JSON reply, seconds from the reply until the
    server closed the connection; inf if it was still open after wait_close)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(head)
        try:
            sock.sendall(body)
        except OSError:
            pass  # the server may stop reading a body it refused
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        answered = time.monotonic()
        lines = header.decode("latin-1").split("\r\n")
        length = int(next(line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
        sock.settimeout(wait_close)
        closed_after = float("inf")
        try:
            while sock.recv(65536):
                pass
            closed_after = time.monotonic() - answered
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed_after = time.monotonic() - answered
        return int(lines[0].split()[1]), json.loads(rest[:length]), closed_after
    finally:
        sock.close()


class Poller(threading.Thread):
    """GET /queue over and over on fresh connections, recording each latency."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            status, _ = request(self.server, "GET", "/queue")
            assert status == 200
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(30)


def history_entry(server, prompt_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, doc = request(server, "GET", f"/history/{prompt_id}")
        if status == 200 and prompt_id in doc:
            return doc[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} never reached the history")


def queue_prompt(server, prompt: dict) -> str:
    status, doc = post(server, "/prompt", json.dumps({"prompt": prompt}))
    assert status == 200, doc
    return doc["prompt_id"]


# -- bodies ------------------------------------------------------------------------------------

def test_a_gzip_bomb_is_refused_unread_and_other_requests_go_on(server):
    bomb = gzip_bomb()  # 2 MB that would inflate to 2 GiB
    with Poller(server) as poller:
        for route in ("/prompt", "/queue", "/upload/image"):
            head = (f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
                    f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n").encode()
            status, doc, closed_after = raw_exchange(server, head, bomb)
            assert status == 415 and doc["error"]["type"] == "unsupported_media_type", (route, doc)
            assert "Content-Encoding: gzip" in doc["error"]["message"]
            assert closed_after < 3, f"the connection stayed open {closed_after:.1f} s after the answer"
        time.sleep(0.3)
    # the bombs were never inflated: nothing else waited for them (inflating one takes seconds)
    assert len(poller.latencies) >= 5 and max(poller.latencies) < 1.0, poller.latencies
    head = (f"GET /queue HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Encoding: br\r\n"
            f"Content-Length: 4\r\n\r\n").encode()
    assert raw_exchange(server, head, b"abcd")[0] == 415  # any route, any encoding
    assert post(server, "/prompt", json.dumps({"prompt": value_prompt(1)}))[0] == 200


def test_an_oversized_body_is_answered_and_its_connection_closed(server):
    declared, sent = 3 << 20, (3 << 20) // 2  # the client stops sending halfway and waits
    head = (f"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    status, doc, closed_after = raw_exchange(server, head, b'{"prompt": "' + b"x" * sent)
    assert status == 413 and "--max-upload-size" in doc["error"]["message"]
    assert closed_after < 4.5, f"the refused body's connection stayed open {closed_after:.1f} s"


# -- parsing -----------------------------------------------------------------------------------

SURROGATE_BODIES = [
    ("/prompt", {"prompt": value_prompt(1), "client_id": "\ud800"}, "$.client_id"),
    ("/prompt", {"prompt": value_prompt(1), "prompt_id": "id-\udfff"}, "$.prompt_id"),
    ("/prompt", {"prompt": {"1": {"class_type": "PrimitiveString", "inputs": {"value": "a\udc80b"}}}},
     '$.prompt["1"].inputs.value'),
    ("/prompt", {"prompt": value_prompt(1), "extra_data": {"\ud83d": 1}}, "$.extra_data"),
    ("/queue", {"delete": ["\ud800"]}, "$.delete[0]"),
    ("/history", {"delete": ["ok", "x\udbff"]}, "$.delete[1]"),
    ("/interrupt", {"prompt_id": "\udfff"}, "$.prompt_id"),
    ("/free", {"unload_models": "\ud800"}, "$.unload_models"),
]


@pytest.mark.parametrize("route, body, where", SURROGATE_BODIES, ids=[f"{r}-{w}" for r, _, w in SURROGATE_BODIES])
def test_lone_surrogates_are_refused_naming_the_field(server, route, body, where):
    status, doc = post(server, route, json.dumps(body))  # ensure_ascii: the surrogate travels as \\udXXX
    assert status == 400 and doc["error"]["type"] == "invalid_json", doc
    assert where in doc["error"]["message"] and "surrogate" in doc["error"]["message"]


def test_paired_surrogates_and_odd_websocket_ids_are_fine(server):
    status, doc = post(server, "/prompt", json.dumps({"prompt": value_prompt(2), "client_id": "\ud83d\ude00"}))
    assert status == 200, doc
    assert history_entry(server, doc["prompt_id"])["prompt"][3]["client_id"] == "\U0001F600"


HISTORY_QUERIES = ["max_items=1e20", "max_items=100000000000000000000", "offset=9223372036854775808",
                   "offset=-9223372036854775809", "max_items=-1", "offset=" + "9" * 5000, "max_items=abc",
                   "max_items=%C2%B2", "max_items=9223372036854775808"]


def test_history_paging_numbers_out_of_range_are_4xx(server):
    for query in HISTORY_QUERIES:
        status, doc = request(server, "GET", "/history?" + query)
        name = query.split("=")[0]
        assert status == 400 and f"'{name}'" in doc["error"]["message"], (query, status, doc)
    for query in ("max_items=9223372036854775807", "offset=-1", "offset=9223372036854775807&max_items=5",
                  "max_items=0"):
        status, doc = request(server, "GET", "/history?" + query)
        assert status == 200 and isinstance(doc, dict), (query, doc)


def multipart(filename_header: bytes, data: bytes, fields: dict | None = None) -> tuple[bytes, dict]:
    boundary = b"lg-reliability-7f3a"
    body = b""
    for key, value in (fields or {}).items():
        body += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + key.encode() + b'"\r\n\r\n' + \
            value + b"\r\n"
    body += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; ' + filename_header + \
        b"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def png_bytes(size=(4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 99, 199)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_upload_names_are_4xx_and_write_nothing(server):
    before = sorted(p.name for p in (server.base / "input").iterdir())
    cases = [
        (b'filename="a\x00b.png"', {}),                       # NUL in the raw header
        (b'filename="\xed\xa0\x80.png"', {}),                 # a UTF-8-encoded surrogate
        (b"filename*=UTF-8''%ED%A0%80.png", {}),               # the same, percent-encoded
        (b'filename="ok.png"', {"subfolder": b"a\x00b"}),      # NUL in a field
        (b'filename="ok.png"', {"subfolder": b"\xed\xbf\xbf"}),
    ]
    for header, fields in cases:
        body, headers = multipart(header, png_bytes(), fields)
        status, doc = request(server, "POST", "/upload/image", body, headers)
        assert status == 400 and doc["error"]["message"], (header, fields, status, doc)
    # a pickle dressed as an image is never unpickled, just refused
    payload = pickle.dumps({"state_dict": {}})
    body, headers = multipart(b'filename="model.png"', payload)
    status, doc = request(server, "POST", "/upload/image", body, headers)
    assert status == 400 and doc["error"]["type"] == "invalid_image"
    assert sorted(p.name for p in (server.base / "input").iterdir()) == before


def test_mask_references_and_websocket_messages_are_parsed_strictly(server):
    (server.base / "input" / "base.png").write_bytes(png_bytes())
    for ref in (b"[" * 10_000 + b"]" * 10_000, b'{"filename": "\\ud800.png"}', b'{"filename": "a\\u0000.png"}'):
        body, headers = multipart(b'filename="mask.png"', png_bytes(), {"original_ref": ref})
        status, doc = request(server, "POST", "/upload/mask", body, headers)
        assert status == 400 and doc["error"]["message"], (ref[:40], status, doc)

    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=strict") as ws:
            assert (await ws.receive_json())["type"] == "status"
            await ws.send_str("[" * 100_000 + "]" * 100_000)
            await ws.send_str('{"type": "feature_flags", "data": {"x": "\\ud800"}}')
            await ws.send_str('{"type": "feature_flags", "data": {}}')
            assert (await ws.receive_json(timeout=10))["type"] == "feature_flags"  # still served
    run(go())


def test_a_node_whose_declaration_raises_is_reported_as_that_nodes_error(server):
    status, doc = request(server, "GET", "/object_info/HostileBrokenDeclaration")
    assert status == 422 and doc["error"]["type"] == "node_declaration_failed"
    assert "HostileBrokenDeclaration" in doc["error"]["message"] and "KeyError" in doc["error"]["message"]
    status, info = request(server, "GET", "/object_info")
    assert status == 200 and "HostileFloat" in info and "HostileBrokenDeclaration" not in info
    status, doc = post(server, "/prompt", json.dumps(
        {"prompt": {"1": {"class_type": "HostileBrokenDeclaration", "inputs": {}},
                    "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}}))
    assert status == 400 and "KeyError" in json.dumps(doc)


def float_prompt(raw_value: str) -> str:
    return '{"prompt": {"1": {"class_type": "HostileFloat", "inputs": {"value": ' + raw_value + "}}}}"


def test_non_finite_numbers_never_reach_a_float_input(server):
    for raw in ("1e999", "-1e999", "Infinity", "-Infinity", "NaN"):  # refused while parsing
        status, doc = post(server, "/prompt", float_prompt(raw))
        assert status == 400 and doc["error"]["type"] == "invalid_json", (raw, doc)
        assert '$.prompt["1"].inputs.value' in doc["error"]["message"]
    for raw in ('"inf"', '"-inf"', '"nan"', '"Infinity"', '"1e999"'):  # refused by the FLOAT input
        status, doc = post(server, "/prompt", float_prompt(raw))
        assert status == 400 and doc["node_errors"]["1"]["errors"][0]["extra_info"]["input_name"] == "value", doc
        assert "finite" in doc["node_errors"]["1"]["errors"][0]["details"]
    status, doc = post(server, "/prompt", float_prompt("1e308"))
    assert status == 200
    assert history_entry(server, doc["prompt_id"])["outputs"]["1"]["text"] == ["1e+308"]


def test_deep_nesting_and_giant_integers_are_refused_naming_where(server):
    deep = "[" * 10_000 + "]" * 10_000
    status, doc = post(server, "/prompt", float_prompt(deep))
    assert status == 400 and "nested deeper than 128 levels" in doc["error"]["message"]
    status, doc = post(server, "/prompt", '{"prompt": {"1": {"inputs": {"x": ' + "[" * 200 + "]" * 200 + "}}}}")
    assert status == 400 and '$.prompt["1"].inputs.x' in doc["error"]["message"]
    for raw in ("9" * 5000, str(2 ** 64 + 1), "-" + "1" * 30):
        status, doc = post(server, "/prompt", float_prompt(raw))
        assert status == 400 and '$.prompt["1"].inputs.value' in doc["error"]["message"], (raw[:30], doc)
        assert "too large" in doc["error"]["message"]
    assert post(server, "/prompt", json.dumps({"prompt": value_prompt(3)}))[0] == 200


# -- running -----------------------------------------------------------------------------------

def loaded_models(server, tag: int) -> str:
    entry = history_entry(server, queue_prompt(server, {"1": {"class_type": "HostileLoadedModels",
                                                              "inputs": {"tag": tag}}}))
    return entry["outputs"]["1"]["text"][0]


def test_out_of_memory_gets_a_hint_models_are_unloaded_and_the_next_prompt_runs(server):
    ok = queue_prompt(server, {"1": {"class_type": "HostileOutOfMemory", "inputs": {"allocate": 0, "load": True}}})
    assert history_entry(server, ok)["status"]["status_str"] == "success"
    assert loaded_models(server, 1) == "1"  # control: a loaded model stays loaded between prompts
    failed = queue_prompt(server, {"1": {"class_type": "HostileOutOfMemory",
                                         "inputs": {"allocate": 10 ** 12, "load": True}}})
    entry = history_entry(server, failed)
    assert entry["status"]["status_str"] == "error"
    error = entry["status"]["messages"][-1][1]
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert "Tried to allocate" in error["exception_message"]
    for hint in ("ran out of memory", "batch_size", "--lowvram"):
        assert hint in error["exception_message"]
    assert loaded_models(server, 2) == "0"  # everything was unloaded through the lifetime service
    ok = queue_prompt(server, {"1": {"class_type": "HostileOutOfMemory", "inputs": {"allocate": 0, "load": False}}})
    assert history_entry(server, ok)["status"]["status_str"] == "success"


# -- images ------------------------------------------------------------------------------------

def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height, all black: a few KB that decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000)) + comp.compress(
        row * (height % 1000)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_images_over_the_pixel_limit_are_refused_before_decoding(server):
    data = huge_png(13000, 13000)
    assert len(data) < 100_000
    body, headers = multipart(b'filename="huge.png"', data)
    status, doc = request(server, "POST", "/upload/image", body, headers)
    assert status == 400 and "13000x13000" in doc["error"]["message"], doc
    assert not (server.base / "input" / "huge.png").exists()
    (server.base / "output" / "huge.png").write_bytes(data)  # made by some other tool
    for query in ("channel=rgb", "channel=a", "preview=webp;90"):
        started = time.monotonic()
        status, doc = request(server, "GET", f"/view?filename=huge.png&type=output&{query}")
        assert status == 400 and doc["error"]["type"] == "image_too_large", (query, doc)
        assert time.monotonic() - started < 1.0  # refused from the header, not after decoding
    status, raw = request(server, "GET", "/view?filename=huge.png&type=output")
    assert status == 200 and raw == data  # as it is, it is only bytes
    (server.base / "input" / "fine.png").write_bytes(png_bytes((64, 32)))
    status, raw = request(server, "GET", "/view?filename=fine.png&type=input&channel=rgb")
    assert status == 200 and Image.open(io.BytesIO(raw)).size == (64, 32)
