"""Hypothesis throws odd POST /prompt bodies at a live server: always a JSON 4xx or a 200."""
import http.client
import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.server_helpers import LiveServer

# Nodes that are cheap whatever their inputs (no huge tensors or images, no long sleeps).
CLASSES = ["TestValue", "TestAdd", "TestOutput", "TestRaise", "TestSampler", "TestListOut", "TestListIn",
           "TestValidated", "TestAnyType", "TestVolatile", "TestFingerprint", "TestHidden"]
INPUT_NAMES = ["value", "a", "b", "model", "seed", "mode", "count", "values", "scale", "token", "message", "x"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("fuzz")).start()
    yield srv
    srv.stop()
    log = srv.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "../../etc/passwd", "\ud7ff\U0001F600", "fast", "slow", "1e999"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
node_ids = st.one_of(st.sampled_from(["1", "2", "3", "4", "", "0", "-1", "1:2", "\u00e9", " "]), st.text(max_size=6))


@st.composite
def prompts(draw) -> object:
    ids = draw(st.lists(node_ids, min_size=0, max_size=6, unique=True))
    prompt: dict = {}
    for node_id in ids:
        if draw(st.integers(0, 9)) == 0:
            prompt[node_id] = draw(json_values)  # not even a node
            continue
        inputs = {}
        for name in draw(st.lists(st.sampled_from(INPUT_NAMES), max_size=4, unique=True)):
            kind = draw(st.integers(0, 5))
            if kind == 0 and ids:
                inputs[name] = [draw(st.sampled_from(ids)), draw(st.integers(-1, 3))]  # links, cycles included
            elif kind == 1:
                inputs[name] = [draw(node_ids), draw(st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=3)))]
            elif kind == 2:
                inputs[name] = {"__value__": draw(st.lists(scalars, max_size=3))}
            else:
                inputs[name] = draw(scalars)
        node = {"class_type": draw(st.one_of(st.sampled_from(CLASSES), st.text(max_size=8), scalars)),
                "inputs": inputs if draw(st.integers(0, 9)) else draw(json_values)}
        if draw(st.booleans()):
            node["_meta"] = {"title": draw(st.text(max_size=10))}
        prompt[node_id] = node
    return prompt if draw(st.integers(0, 19)) else draw(json_values)


@st.composite
def plausible_prompts(draw) -> dict:
    """Value -> Add -> Output with odd literals and the occasional dangling or circular link, so
    the validator's deeper checks (types, ranges, links, cycles) are reached, and some run."""
    a, b, c = draw(st.permutations(["1", "2", "3", "10", "a", "5:1", "", "\u00e9\u00e8"]))[:3]
    small = st.integers(-2000, 2000)
    odd = draw(st.integers(0, 3)) == 0  # one prompt in four gets an odd literal
    value = draw(st.one_of(st.integers(-2000000, 2000000), scalars) if odd else small)
    source = draw(st.sampled_from([a] * 8 + [c, "nowhere"]))
    prompt = {a: {"class_type": "TestValue", "inputs": {"value": value}},
              b: {"class_type": "TestAdd", "inputs": {"a": [source, draw(st.sampled_from([0] * 8 + [1, -1]))],
                                                      "b": draw(st.one_of(st.integers(), scalars) if odd else small)}},
              c: {"class_type": draw(st.sampled_from(["TestOutput", "TestOutput", "TestOutput", "TestAdd"])),
                  "inputs": {"value": [b, 0]}}}
    if draw(st.integers(0, 3)) == 0:
        prompt[draw(node_ids)] = {"class_type": "TestValidated", "inputs": {"value": draw(st.integers(-3, 12))}}
    return prompt


EXTRA_KEYS = (("client_id", st.one_of(st.text(max_size=10), scalars)),
              ("prompt_id", st.one_of(st.text(max_size=10), scalars)),
              ("number", st.one_of(st.floats(allow_nan=False), st.integers(-(2 ** 80), 2 ** 80), scalars)),
              ("front", scalars),
              ("extra_data", st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=3), json_values)),
              ("partial_execution_targets", st.one_of(st.lists(node_ids, max_size=3), json_values)))


@st.composite
def bodies(draw) -> bytes:
    mode = draw(st.sampled_from(["plausible"] * 4 + ["random"] * 2 + ["mangled"] * 2 + ["any"]))
    if mode == "any":
        return json.dumps(draw(json_values)).encode()
    body: dict = {}
    if draw(st.integers(0, 19)):
        body["prompt"] = draw(plausible_prompts() if mode == "plausible" else prompts())
    for key, values in EXTRA_KEYS:
        if draw(st.integers(0, 15)) == 0:
            body[key] = draw(values)
    text = json.dumps(body)
    if mode != "mangled":
        return text.encode()
    mangle = draw(st.integers(0, 4))
    if mangle == 0:
        text = text.replace("0", "NaN", 1) if "0" in text else "NaN"
    elif mangle == 1:
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]  # truncated
    elif mangle == 2:
        depth = draw(st.integers(50, 3000))
        text = '{"prompt": ' + "[" * depth + "]" * depth + "}"
    elif mangle == 3:
        text = '{"prompt": {"1": {"class_type": "TestValue", "inputs": {"value": ' + "9" * draw(
            st.integers(300, 6000)) + "}}}}"
    else:
        return text.encode() + draw(st.binary(max_size=8))
    return text.encode()


def post(server: LiveServer, raw: bytes, content_type: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/prompt", body=raw, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(raw=bodies(), content_type=st.sampled_from(["application/json"] * 18 + ["text/plain", "application/xml"]))
def test_post_prompt_never_fails_with_a_server_error(server, raw, content_type):
    status, body = post(server, raw, content_type)
    assert status in (200, 400, 413, 415), (status, raw[:300], body[:300])
    doc = json.loads(body)
    event(f"{status} {doc['error']['type'] if status != 200 else 'queued'}")
    if status == 200:
        assert isinstance(doc["prompt_id"], str) and isinstance(doc["node_errors"], dict)
    else:
        assert isinstance(doc["error"]["type"], str) and isinstance(doc["error"]["message"], str)


def test_server_still_answers_after_the_fuzzing(server):
    status, _ = post(server, b'{"prompt": {"1": {"class_type": "TestValue", "inputs": {"value": 1}}, '
                             b'"2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}}',
                     "application/json")
    assert status == 200
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/queue")
    assert conn.getresponse().status == 200
    conn.close()
