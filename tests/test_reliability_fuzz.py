"""Hypothesis against a live server's other routes: POST /queue and /history, GET /history, /view
and uploads, plus POST /prompt bodies with lone surrogates, huge numbers and deep nesting.
Whatever arrives, the answer is a JSON 4xx or a success, never a 500 (issue 17).
(test_server_fuzz.py fuzzes the prompt graph itself.)"""
import http.client
import io
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.server_helpers import LiveServer, value_prompt


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("fuzz2"), "--max-upload-size", "1").start()
    yield srv
    srv.stop()
    log = srv.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

surrogates = st.characters(codec=None, categories=["Cs"])
texts = st.one_of(
    st.text(max_size=12),
    st.text(st.one_of(st.characters(), surrogates), max_size=12),  # lone surrogates included
    st.sampled_from(["", "\x00", "../..", "a/../../b", "\ud800", "\udfff\ud800", "\U0001F600", "x" * 300,
                     "1e999", "inf", "NaN", "-0", " [output]", "C:\\x"]),
)
numbers = st.one_of(st.integers(-(2 ** 80), 2 ** 80), st.floats(), st.sampled_from([2 ** 63, -(2 ** 63) - 1, 10 ** 40]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=4)), max_leaves=16)


def encode(doc) -> bytes:
    """JSON text as a client might send it: escaped, or raw UTF-8 (with surrogates as such bytes);
    NaN/Infinity appear as bare tokens."""
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw, keys: dict) -> bytes:
    """A JSON object over `keys` (name -> strategy), or a mangled one: deep, huge, broken."""
    mode = draw(st.sampled_from(["object"] * 6 + ["deep", "digits", "raw"]))
    if mode == "deep":
        depth = draw(st.integers(100, 20_000))
        key = draw(st.sampled_from(list(keys)))
        return ('{"' + key + '": ' + "[" * depth + "]" * depth + "}").encode()
    if mode == "digits":
        return ('{"' + draw(st.sampled_from(list(keys))) + '": ' + "9" * draw(st.integers(20, 6000)) + "}").encode()
    if mode == "raw":
        return draw(st.binary(max_size=40))
    doc = {k: draw(v) for k, v in keys.items() if draw(st.booleans())}
    return encode(doc) if draw(st.booleans()) else json.dumps(doc).encode()


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check(status: int, raw: bytes, what) -> None:
    assert status < 500, (status, what, raw[:300])
    doc = json.loads(raw) if raw else None
    if status >= 400:
        assert isinstance(doc["error"]["type"], str) and doc["error"]["message"], (status, what, doc)


JSON = {"Content-Type": "application/json"}
ids = st.one_of(texts, numbers, st.lists(st.one_of(texts, numbers), max_size=4))
prompt_keys = {"prompt": st.one_of(st.just(value_prompt(1)), values,
                                   st.fixed_dictionaries({"1": st.fixed_dictionaries({
                                       "class_type": st.sampled_from(["TestValue", "PrimitiveFloat",
                                                                      "PrimitiveString"]),
                                       "inputs": st.fixed_dictionaries({"value": scalars})})})),
               "client_id": st.one_of(texts, values), "prompt_id": st.one_of(texts, values),
               "number": numbers, "front": scalars, "extra_data": values,
               "partial_execution_targets": ids}


@SETTINGS
@given(raw=bodies(prompt_keys))
@example(raw=json.dumps({"prompt": value_prompt(1), "client_id": "\ud800"}).encode())
@example(raw=b'{"prompt": {"1": {"class_type": "PrimitiveFloat", "inputs": {"value": 1e999}}}}')
@example(raw=b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")
def test_post_prompt(server, raw):
    check(*call(server, "POST", "/prompt", raw, JSON), raw)


@SETTINGS
@given(route=st.sampled_from(["/queue", "/history", "/interrupt", "/free"]),
       raw=bodies({"delete": ids, "clear": scalars, "prompt_id": ids, "unload_models": scalars,
                   "free_memory": scalars}))
@example(route="/queue", raw=b'{"delete": ["\\udfff"]}')
@example(route="/history", raw=b'{"delete": ["\xed\xa0\x80"]}')
def test_post_queue_history_interrupt_free(server, route, raw):
    check(*call(server, "POST", route, raw, JSON), (route, raw))


def query_text() -> st.SearchStrategy:
    """Query values as sent on the wire: percent-encoded text, including invalid UTF-8 bytes."""
    return st.one_of(texts.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
                     numbers.map(str), st.binary(max_size=6).map(lambda b: quote(b, safe="")))


@SETTINGS
@given(max_items=query_text(), offset=query_text(), entry=query_text())
@example(max_items="1e20", offset="", entry="x").via("the issue")
@example(max_items="5", offset=str(2 ** 63), entry="%ED%A0%80").via("the issue")
def test_get_history(server, max_items, offset, entry):
    check(*call(server, "GET", f"/history?max_items={max_items}&offset={offset}"), (max_items, offset))
    check(*call(server, "GET", f"/history/{entry or 'x'}"), entry)


@SETTINGS
@given(filename=query_text(), subfolder=query_text(), kind=st.one_of(query_text(), st.sampled_from(
    ["input", "output", "temp"])), channel=st.sampled_from(["rgb", "a", "rgba", "x", ""]),
       preview=st.one_of(query_text(), st.sampled_from(["webp;90", "jpeg;" + "9" * 5000, "webp;%C2%B2"])))
@example(filename="x" * 300, subfolder="", kind="output", channel="rgb", preview="").via("a name too long")
@example(filename="a/" * 3000 + "x.png", subfolder="", kind="output", channel="", preview="").via("a path too long")
def test_get_view(server, filename, subfolder, kind, channel, preview):
    path = f"/view?filename={filename}&subfolder={subfolder}&type={kind}&channel={channel}&preview={preview}"
    status, raw = call(server, "GET", path)
    assert status < 500, (status, path, raw[:300])


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    return buf.getvalue()


PNG = tiny_png()


@SETTINGS
@given(name=st.one_of(texts.map(lambda t: t + ".png"), texts),
       how=st.sampled_from(["quoted", "star", "raw"]),
       fields=st.dictionaries(st.sampled_from(["subfolder", "type", "overwrite"]), texts, max_size=3),
       data=st.one_of(st.just(PNG), st.binary(max_size=64)))
@example(name="a\x00b.png", how="quoted", fields={}, data=PNG).via("the issue")
def test_upload_image(server, name, how, fields, data):
    boundary = b"fz-boundary-91"
    encoded = name.encode("utf-8", "surrogatepass")
    if how == "star":
        disposition = b"filename*=UTF-8''" + quote(encoded, safe="").encode()
    elif how == "quoted":
        disposition = b'filename="' + encoded.replace(b'"', b"%22").replace(b"\r", b"").replace(b"\n", b"") + b'"'
    else:
        disposition = b"filename=" + encoded
    body = b""
    for key, value in fields.items():
        body += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + key.encode() + b'"\r\n\r\n'
                 + value.encode("utf-8", "surrogatepass") + b"\r\n")
    body += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; ' + disposition
             + b"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    status, raw = call(server, "POST", "/upload/image", body,
                       {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})
    check(status, raw, (name, how, fields))
    if status == 200:
        doc = json.loads(raw)
        assert (server.base / doc["type"] / doc["subfolder"] / doc["name"]).resolve().is_relative_to(server.base)


ROUTE_TEMPLATES = [
    ("GET", "/userdata?dir={a}&recurse=true&full_info={b}"), ("GET", "/v2/userdata?path={a}"),
    ("GET", "/userdata/{a}"), ("POST", "/userdata/{a}?overwrite={b}"), ("DELETE", "/userdata/{a}"),
    ("POST", "/userdata/{a}/move/{b}"), ("GET", "/settings/{a}"), ("POST", "/settings/{a}"), ("POST", "/settings"),
    ("POST", "/users"), ("GET", "/experiment/models/{a}"), ("GET", "/experiment/models/preview/{a}/{b}/{a}"),
    ("GET", "/object_info/{a}"), ("GET", "/models/{a}"), ("GET", "/extensions/{a}/{b}"), ("GET", "/{a}"),
    ("GET", "/internal/files/{a}"), ("GET", "/api/workflow_templates/{a}/{b}"), ("GET", "/docs/{a}"),
]


@SETTINGS
@given(template=st.sampled_from(ROUTE_TEMPLATES), a=query_text(), b=query_text(),
       raw=bodies({"username": texts, "Comfy.Setting": values, "x": values}))
@example(template=("POST", "/userdata/{a}?overwrite={b}"), a="a%2F" * 2000 + "x", b="true", raw=b"{}")
@example(template=("GET", "/experiment/models/preview/{a}/{b}/{a}"), a="checkpoints", b="%C2%B2", raw=b"")
@example(template=("GET", "/experiment/models/preview/{a}/{b}/{a}"), a="checkpoints", b="9" * 5000, raw=b"")
def test_every_other_route(server, template, a, b, raw):
    method, path = template
    path = path.format(a=a or "x", b=b or "y")
    status, answer = call(server, method, path, raw if method == "POST" else None, JSON if method == "POST" else {})
    assert status < 500, (status, method, path[:200], answer[:300])
