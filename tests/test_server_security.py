"""Safety defaults: Host/Origin/content-type guards, bad bodies, size limits, JSON errors."""
import json
import urllib.request

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.config import ServerConfig, listen_warning
from server.security import make_cors, make_error_middleware, make_guard, split_host
from tests.server_helpers import LiveServer, get_json, run, value_prompt, wait_history


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("sec"), "--max-upload-size", "1") as srv:
        yield srv
    assert "Traceback" not in srv.log()


def body(prompt_value: int = 1) -> str:
    return json.dumps({"prompt": value_prompt(prompt_value)})


async def post(s, url, data, headers=None) -> tuple[int, dict | None]:
    async with s.post(url, data=data, headers=headers or {}) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


JSON = {"Content-Type": "application/json"}


def test_foreign_host_headers_are_refused_while_on_loopback(server):
    port = server.port

    async def go():
        async with aiohttp.ClientSession() as s:
            for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"10.0.0.1:{port}",
                         f"localhost.evil.example:{port}", "[::2]", "bad[host"):
                status, doc = await get_json(s, server.url + "/history", headers={"Host": host})
                assert status == 403 and doc["error"]["type"] == "forbidden_host", host
                status, _ = await post(s, server.url + "/prompt", body(), {**JSON, "Host": host})
                assert status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(server.url + "/ws", headers={"Host": f"evil.example:{port}"})
            assert err.value.status == 403
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "LOCALHOST"):
                status, _ = await get_json(s, server.url + "/prompt", headers={"Host": host})
                assert status == 200, host
    run(go())


def test_cross_site_requests_are_refused(server):
    port = server.port

    async def go():
        async with aiohttp.ClientSession() as s:
            for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}",
                           "garbage", f"http://evil.example:{port}"):
                status, doc = await post(s, server.url + "/prompt", body(), {**JSON, "Origin": origin})
                assert status == 403 and doc["error"]["type"] == "forbidden_origin", origin
                status, _ = await get_json(s, server.url + "/history", headers={"Origin": origin})
                assert status == 403
                status, _ = await post(s, server.url + "/interrupt", b"", {"Origin": origin})
                assert status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(server.url + "/ws", origin="http://evil.example")
            assert err.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(server.url + "/ws", headers={"Sec-Fetch-Site": "cross-site"})
            status, _ = await post(s, server.url + "/prompt", body(), {**JSON, "Sec-Fetch-Site": "cross-site"})
            assert status == 403
            # the editor itself: same origin, under any of the loopback names
            for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                status, _ = await post(s, server.url + "/prompt", body(2),
                                       {**JSON, "Origin": origin, "Sec-Fetch-Site": "same-origin"})
                assert status == 200, origin
            async with s.ws_connect(server.url + "/ws", origin=f"http://localhost:{port}") as ws:
                assert (await ws.receive_json())["type"] == "status"
    run(go())


def test_form_content_types_are_refused_on_json_routes(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            same = {"Origin": server.url}
            for ctype in ("text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                          "application/xml"):
                for route in ("/prompt", "/queue", "/history", "/interrupt", "/free"):
                    status, doc = await post(s, server.url + route, body(), {"Content-Type": ctype, **same})
                    assert status == 415 and doc["error"]["type"] == "unsupported_media_type", (ctype, route)
            status, _ = await post(s, server.url + "/prompt", body(3), {"Content-Type": "text/plain"})
            assert status == 415
            status, _ = await post(s, server.url + "/prompt", body(4),
                                   {"Content-Type": "application/json; charset=utf-8"})
            assert status == 200
    run(go())


def test_comfyuis_urllib_example_still_works(server):
    # urllib labels POST data as a form; with no browser headers at all it is a script, not a page
    req = urllib.request.Request(server.url + "/prompt", data=body(5).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        pid = json.loads(resp.read())["prompt_id"]

    async def go():
        async with aiohttp.ClientSession() as s:
            assert (await wait_history(s, server, pid))["outputs"] == {"2": {"text": ["5"]}}
    run(go())


BAD_BODIES = [
    (b"{bad", "invalid_json"),
    (b"", "invalid_json"),
    (b"NaN", "invalid_json"),
    (b'{"prompt": NaN}', "invalid_json"),
    (b'{"prompt": {"1": {"class_type": "TestValue", "inputs": {"value": Infinity}}}}', "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'"text"', "invalid_json"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json"),
    (b'{"a": ' * 200 + b"1" + b"}" * 200, "invalid_json"),
    (b'{"prompt": ' + b"9" * 5000 + b"}", "invalid_json"),
    (b'{"prompt": "\xff\xfe"}', "invalid_json"),
    (b'{"prompt": {}}', "prompt_no_outputs"),
    (b'{"prompt": []}', "invalid_prompt"),
    (b'{"prompt": null}', "invalid_prompt"),
    (b'{"prompt": {"1": []}}', "invalid_prompt"),
]


def test_malformed_bodies_get_clear_4xx_json(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            for raw, kind in BAD_BODIES:
                status, doc = await post(s, server.url + "/prompt", raw, JSON)
                assert status == 400 and doc["error"]["type"] == kind, (raw[:60], status, doc)
                assert doc["error"]["message"]
            for route in ("/queue", "/history"):
                status, doc = await post(s, server.url + route, b"{bad", JSON)
                assert status == 400 and doc["error"]["type"] == "invalid_json"
            status, doc = await post(s, server.url + "/queue", json.dumps({"delete": "abc"}), JSON)
            assert status == 400
            status, doc = await post(s, server.url + "/interrupt", json.dumps({"prompt_id": 5}), JSON)
            assert status == 400
            status, _ = await get_json(s, server.url + "/prompt")
            assert status == 200
    run(go())


def test_bodies_over_the_upload_limit_are_refused_and_the_server_goes_on(server):
    big = b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    async def go():
        async with aiohttp.ClientSession() as s:
            status, doc = await post(s, server.url + "/prompt", big, JSON)
            assert status == 413 and "--max-upload-size" in doc["error"]["message"]
            form = aiohttp.FormData()
            form.add_field("image", b"\x89PNG" + b"0" * (2 * 1024 * 1024), filename="big.png")
            async with s.post(server.url + "/upload/image", data=form) as resp:
                assert resp.status == 413
            _, features = await get_json(s, server.url + "/features")
            assert features["max_upload_size"] == 1024 * 1024
            status, doc = await get_json(s, server.url + "/nothing/here")
            assert status == 404 and doc["error"]["type"] == "not_found"
            async with s.delete(server.url + "/history/abc") as resp:
                assert resp.status == 405 and (await resp.json())["error"]["type"] == "method_not_allowed"
    run(go())


def test_unexpected_handler_errors_become_json_500s_and_serving_continues():
    config = ServerConfig(hosts=["127.0.0.1"], port=0, max_upload_bytes=1024)

    async def broken(request):
        raise KeyError("wires crossed")

    async def fine(request):
        return web.json_response({"ok": True})

    async def go():
        app = web.Application(middlewares=[make_error_middleware(config)])
        app.router.add_get("/broken", broken)
        app.router.add_get("/fine", fine)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/broken")
            doc = await resp.json()
            assert resp.status == 500 and doc["error"]["type"] == "internal_error"
            assert "wires crossed" in doc["error"]["message"]
            resp = await client.get("/fine")
            assert resp.status == 200
    run(go())


def test_cors_flag_allows_the_named_origin_only():
    config = ServerConfig(hosts=["127.0.0.1"], port=0, max_upload_bytes=1024, cors_origin="http://app.example")

    async def handler(request):
        return web.json_response({"ok": True})

    async def go():
        app = web.Application(middlewares=[make_cors(config), make_guard(config)])
        app.router.add_post("/prompt", handler)
        async with TestClient(TestServer(app)) as client:
            config.port = client.port
            resp = await client.options("/prompt", headers={"Origin": "http://app.example",
                                                            "Access-Control-Request-Method": "POST"})
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            resp = await client.post("/prompt", json={}, headers={"Origin": "http://app.example"})
            assert resp.status == 200
            resp = await client.post("/prompt", json={}, headers={"Origin": "http://other.example"})
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    run(go())


def test_listen_warning_and_host_parsing():
    assert listen_warning(["127.0.0.1"]) is None and listen_warning(["::1", "localhost"]) is None
    warning = listen_warning(["0.0.0.0", "::"])
    assert "0.0.0.0" in warning and "no authentication" in warning
    assert split_host("[::1]:8188", None) == ("::1", 8188)
    assert split_host("LocalHost", 80) == ("localhost", 80)
    assert split_host("a:b", None) is None and split_host("[::1", None) is None
    assert ServerConfig(hosts=["0.0.0.0", "::"], port=8188, max_upload_bytes=1).urls() == \
        ["http://127.0.0.1:8188", "http://[::1]:8188"]
