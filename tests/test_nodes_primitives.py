"""Value nodes: directly and through the engine (a PreviewAny output makes value graphs runnable)."""
import threading

import pytest
import torch

from app.env import Environment
from app.folders import FolderPaths
from graph.context import NodeContext
from graph.executor import Executor
from graph.registry import NodeRegistry
from graph.validation import validate_prompt
from nodes import register_builtin_nodes
from nodes.primitives import PreviewAny, StringConcatenate, render_value


@pytest.fixture
def registry(tmp_path):
    reg = NodeRegistry(Environment(FolderPaths(tmp_path)))
    register_builtin_nodes(reg)
    return reg


@pytest.fixture
def ctx(registry):
    return NodeContext("p", "1", "X", registry.env, {}, {}, threading.Event(), lambda e, d: None)


def preview(registry, source_node: dict) -> dict:
    """Run source_node into a PreviewAny and return what the editor would show."""
    prompt = {"1": source_node, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    result = Executor(registry).run(prompt)
    assert result.ok, result.error
    return result.outputs["2"]


@pytest.mark.parametrize("class_type, value, shown", [
    ("PrimitiveInt", 42, "42"),
    ("PrimitiveFloat", 1.5, "1.5"),
    ("PrimitiveString", "hello", "hello"),
    ("PrimitiveStringMultiline", "line 1\nline 2", "line 1\nline 2"),
    ("PrimitiveBoolean", True, "true"),
])
def test_primitives_pass_their_value_through_the_engine(registry, class_type, value, shown):
    assert preview(registry, {"class_type": class_type, "inputs": {"value": value}}) == {"text": [shown]}


def test_literals_are_cast_to_the_declared_type_before_the_node_sees_them(registry):
    assert preview(registry, {"class_type": "PrimitiveBoolean", "inputs": {"value": "false"}}) == {"text": ["false"]}
    assert preview(registry, {"class_type": "PrimitiveInt", "inputs": {"value": "7"}}) == {"text": ["7"]}


def test_primitives_carry_comfyui_names_categories_and_output_types(registry):
    expected = {
        "PrimitiveInt": ("Int", "INT"),
        "PrimitiveFloat": ("Float", "FLOAT"),
        "PrimitiveString": ("String", "STRING"),
        "PrimitiveStringMultiline": ("String (Multiline)", "STRING"),
        "PrimitiveBoolean": ("Boolean", "BOOLEAN"),
    }
    for name, (display, kind) in expected.items():
        info = registry.describe(name)[name]
        assert (info["display_name"], info["output"], info["category"]) == (display, [kind], "utils/primitive")
        assert info["python_module"] == "comfy_extras.nodes_primitive"
    multiline = registry.describe("PrimitiveStringMultiline")["PrimitiveStringMultiline"]
    assert multiline["input"]["required"]["value"][1]["multiline"] is True
    assert registry.describe("PrimitiveInt")["PrimitiveInt"]["input"]["required"]["value"][1]["control_after_generate"]


def test_string_concatenate_joins_with_the_delimiter(ctx):
    node = StringConcatenate()
    assert node.run(ctx, string_a="foo", string_b="bar", delimiter="") == ("foobar",)
    assert node.run(ctx, string_a="a cat", string_b="a hat", delimiter=", ") == ("a cat, a hat",)
    with pytest.raises(TypeError):  # required, as in ComfyUI's execute(string_a, string_b, delimiter)
        node.run(ctx, string_a="x", string_b="y")


def test_string_concatenate_through_the_engine_with_linked_strings(registry):
    prompt = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "masterpiece"}},
        "2": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a castle"}},
        "3": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": ["2", 0],
                                                            "delimiter": " | "}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    result = Executor(registry).run(prompt)
    assert result.ok and result.outputs["4"] == {"text": ["masterpiece | a castle"]}
    info = registry.describe("StringConcatenate")["StringConcatenate"]
    assert info["category"] == "utils/string"
    assert info["input_order"]["required"] == ["string_a", "string_b", "delimiter"]
    assert info["input"]["required"]["delimiter"][1]["default"] == ""


def test_string_concatenate_rejects_a_link_of_the_wrong_type(registry):
    prompt = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
        "2": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": "b"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    checked = validate_prompt(prompt, registry)
    assert not checked.ok
    assert checked.node_errors["2"]["errors"][0]["type"] == "return_type_mismatch"


def test_preview_any_renders_values_readably(ctx):
    shown = PreviewAny().run(ctx, source={"a": [1, 2]})["ui"]["text"]
    assert shown == ['{\n    "a": [\n        1,\n        2\n    ]\n}']
    assert render_value(torch.zeros(1, 8, 4, 3)) == "Tensor(shape=[1, 8, 4, 3], dtype=torch.float32)"
    assert render_value(object.__new__(StringConcatenate)).startswith("<nodes.primitives.StringConcatenate")
