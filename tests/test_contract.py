"""One registry describes classic plugin nodes and declarative built-ins in /object_info's shape."""
from graph.contract import Boolean, Combo, Float, Int, Node, Output, Socket, String, types_compatible
from graph.registry import NodeRegistry

OBJECT_INFO_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                    "description", "python_module", "category", "output_node"}


def test_classic_plugin_node_is_described_like_comfyui(runtime):
    info = runtime.registry.describe("TestSampler")["TestSampler"]
    assert OBJECT_INFO_KEYS <= set(info)
    assert info["input"]["required"]["mode"] == (["fast", "slow"],)
    assert info["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["input_order"] == {"required": ["model", "positive", "negative", "latent", "seed", "mode"]}
    assert info["output"] == ["INT"] and info["output_name"] == ["INT"] and info["output_is_list"] == [False]
    assert info["python_module"] == "custom_nodes.lg_test_nodes" and info["category"] == "testing"
    assert info["output_node"] is False
    listing = runtime.registry.describe("TestListOut")["TestListOut"]
    assert listing["output_is_list"] == [True, False]
    assert runtime.registry.describe("TestValue")["TestValue"]["display_name"] == "Test Value"
    assert runtime.registry.describe("TestOutput")["TestOutput"]["output_node"] is True
    assert runtime.registry.describe("Nope") == {}


class Blend(Node):
    """Mixes two values."""

    display_name = "Blend Values"
    category = "math"
    inputs = [Socket("a", "FLOAT"), Float("factor", default=0.5, min=0.0, max=1.0, step=0.01, tooltip="how much"),
              Int("steps", default=4, min=1, max=10), String("label", multiline=True, optional=True),
              Boolean("clamp", default=True), Combo("mode", ["linear", "smooth"], default="linear")]
    outputs = [Output("FLOAT", name="mixed", tooltip="the result"), Output("STRING", is_list=True)]
    hidden = {"unique_id": "UNIQUE_ID"}

    def run(self, ctx, a, factor, steps, clamp, mode, unique_id, label=""):
        return (a * factor, [label] * steps)


def test_declarative_node_emits_the_same_description():
    registry = NodeRegistry()
    registry.register_nodes([Blend], "nodes")
    info = registry.describe("Blend")["Blend"]
    assert OBJECT_INFO_KEYS <= set(info)
    assert info["input"]["required"]["factor"] == (
        "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "how much"})
    assert info["input"]["required"]["mode"] == (["linear", "smooth"], {"default": "linear"})
    assert info["input"]["optional"]["label"] == ("STRING", {"default": "", "multiline": True})
    assert info["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert info["input_order"]["required"] == ["a", "factor", "steps", "clamp", "mode"]
    assert info["output"] == ["FLOAT", "STRING"] and info["output_name"] == ["mixed", "STRING"]
    assert info["output_is_list"] == [False, True] and info["output_tooltips"] == ["the result", ""]
    assert info["display_name"] == "Blend Values" and info["category"] == "math"
    assert info["description"] == "Mixes two values."
    # and the classic attributes a ComfyUI-style caller would read
    assert Blend.RETURN_TYPES == ("FLOAT", "STRING") and Blend.FUNCTION == "run"


def test_declarative_combo_lists_are_read_fresh_from_the_environment():
    class Env:
        files = ["a.safetensors"]

    class Loader(Node):
        inputs = [Combo("ckpt_name", lambda env: env.files)]
        outputs = [Output("MODEL")]

        def run(self, ctx, ckpt_name):
            return (ckpt_name,)

    env = Env()
    registry = NodeRegistry(env)
    registry.register_nodes([Loader], "nodes")
    assert registry.describe("Loader")["Loader"]["input"]["required"]["ckpt_name"] == (["a.safetensors"],)
    env.files = ["a.safetensors", "b.safetensors"]
    assert registry.describe("Loader")["Loader"]["input"]["required"]["ckpt_name"] == (
        ["a.safetensors", "b.safetensors"],)


def test_builtins_cannot_be_replaced_by_plugins_but_plugins_can_replace_each_other():
    registry = NodeRegistry()
    registry.register_nodes([Blend], "nodes")
    assert registry.register("Blend", object, python_module="custom_nodes.evil") is False
    assert registry.get("Blend").cls is Blend
    assert registry.register("X", int, python_module="custom_nodes.one")
    assert registry.register("X", float, python_module="custom_nodes.two")
    assert registry.get("X").cls is float


def test_link_type_rules():
    assert types_compatible("IMAGE", "IMAGE")
    assert types_compatible("*", "MODEL") and types_compatible("LATENT", "*")
    assert types_compatible("INT,FLOAT", "FLOAT") and not types_compatible("INT,FLOAT", "STRING")
    assert types_compatible(["a", "b"], ["a", "b"]) and types_compatible("COMBO", ["x"])
    assert not types_compatible("IMAGE", "MASK")


def test_a_describe_failure_in_one_plugin_does_not_hide_the_others():
    class Broken:
        @classmethod
        def INPUT_TYPES(cls):
            raise RuntimeError("bad plugin")
        RETURN_TYPES = ()
        FUNCTION = "f"

    registry = NodeRegistry()
    registry.register_nodes([Blend], "nodes")
    registry.register("Broken", Broken)
    assert set(registry.describe_all()) == {"Blend"}
