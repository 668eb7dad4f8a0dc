"""Property-based fuzzing: any prompt document ends in a structured error or a successful run."""
import io
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli import run_workflows
from graph.errors import PromptError

SAFE_TYPES = ["TestValue", "TestAdd", "TestSampler", "TestOutput", "TestRaise", "TestListOut", "TestListIn",
              "TestVolatile", "TestFingerprint", "TestHidden", "TestValidated", "TestAnyType", "PrimitiveInt",
              "PrimitiveString", "StringConcatenate"]
INPUT_NAMES = ["value", "a", "b", "model", "positive", "negative", "latent", "seed", "mode", "count", "values",
               "scale", "token", "message", "string_a", "string_b", "delimiter"]
IDS = st.sampled_from(["1", "2", "3", "4", "10", "", " ", "é", "🙂", "9" * 40, "1:2"])

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
    st.sampled_from(["fast", "slow", "abc", "x" * 500]),
)
links = st.tuples(st.one_of(IDS, st.integers(-3, 5)), st.one_of(st.integers(-2, 4), st.floats(), st.text(max_size=2))
                  ).map(list)
values = st.recursive(scalars | links, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=12)
nodes = st.fixed_dictionaries(
    {"class_type": st.one_of(st.sampled_from(SAFE_TYPES), st.text(max_size=8), st.integers(), st.none())},
    optional={"inputs": st.one_of(st.dictionaries(st.one_of(st.sampled_from(INPUT_NAMES), st.text(max_size=6)),
                                                  values, max_size=6), values),
              "_meta": values},
)
prompts = st.one_of(
    st.dictionaries(IDS, nodes | values, max_size=8),
    values,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(doc=prompts)
def test_validation_and_execution_never_raise(runtime, doc):
    try:
        result = runtime.executor.run(doc)
    except PromptError as exc:
        body = exc.as_dict()
        assert body["error"]["type"] and isinstance(body["node_errors"], dict)
        json.dumps(body, allow_nan=False, default=str)  # the error document is plain data
        return
    assert result.status in ("success", "error")
    if result.status == "error":
        assert result.error["node_id"] in doc and result.error["traceback"]


def _jsonable(doc) -> bool:
    try:
        json.dumps(doc)
        return True
    except (TypeError, ValueError):
        return False


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=prompts)
def test_command_line_always_exits_cleanly(runtime, tmp_path, doc):
    path = tmp_path / "fuzz.json"
    text = json.dumps(doc) if _jsonable(doc) else str(doc)  # non-JSON text exercises the parser's errors
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    code = run_workflows(runtime, [str(path)], out, err)
    assert code in (0, 1)
    assert "Traceback" not in err.getvalue() or "error in node" in err.getvalue()


def test_huge_and_odd_numbers_are_refused_with_structure(runtime):
    for value in [2**64, -(2**64), math.inf, -math.inf, math.nan, 1e308]:
        try:
            runtime.executor.run({"1": {"class_type": "TestValue", "inputs": {"value": value}},
                                  "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}})
        except PromptError as exc:
            assert exc.node_errors["1"]["errors"][0]["extra_info"]["input_name"] == "value"
        else:
            raise AssertionError(f"{value} was accepted")


def test_deeply_nested_literals_do_not_break_anything(runtime):
    deep = 0
    for _ in range(5000):
        deep = {"__value__": [deep]} if isinstance(deep, dict) else [deep]
    doc = {"1": {"class_type": "TestOutput", "inputs": {"value": {"x": deep}}}}
    result = runtime.executor.run(doc)
    assert result.status in ("success", "error")
