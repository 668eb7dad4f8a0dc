"""A small pack in ComfyUI's V3 schema (comfy_api.latest), for the engine's V3 tests.

It only imports what ComfyUI provides, so the same folder loads in ComfyUI: its /object_info
entries there are the reference in tests/data/object_info_v3_packs.json. Its nodes cover the
widget types and their options, hidden values, output nodes with ui outputs, async execute,
lazy inputs, list inputs and outputs, expansion, validation and fingerprints.
"""
import asyncio
from enum import Enum

from comfy_api.latest import ComfyExtension, io, ui
from comfy_execution.graph_utils import GraphBuilder

anything = io.Custom("*")
CALLS = {"execute": 0, "fingerprint": 0}


class Mode(str, Enum):
    SUM = "sum"
    PRODUCT = "product"


class Arith(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Arith",
            display_name="LG V3 Arithmetic",
            category="testing/v3",
            description="a + b or a * b, scaled",
            inputs=[
                io.Int.Input("a", default=1, min=-100, max=100, step=1, tooltip="first operand"),
                io.Int.Input("b", default=2, min=-100, max=100, display_mode=io.NumberDisplay.slider),
                io.Float.Input("scale", default=1.0, min=0.0, max=10.0, step=0.1, round=0.001),
                io.Combo.Input("mode", options=Mode, default=Mode.SUM),
                io.Boolean.Input("negate", default=False, label_on="neg", label_off="pos", optional=True),
            ],
            outputs=[io.Int.Output("total", display_name="total"), io.Float.Output(tooltip="total * scale")],
        )

    @classmethod
    def validate_inputs(cls, a, b):
        return True if (a, b) != (7, 7) else "7 and 7 is not allowed"

    @classmethod
    def execute(cls, a, b, scale, mode, negate=False):
        CALLS["execute"] += 1
        total = a + b if mode == "sum" else a * b
        total = -total if negate else total
        return io.NodeOutput(total, total * scale)


class Show(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Show",
            display_name="LG V3 Show",
            category="testing/v3",
            inputs=[anything.Input("value"),
                    io.String.Input("label", default="", multiline=True, placeholder="label", optional=True)],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, value, label=""):
        return io.NodeOutput(ui=ui.PreviewText(f"{cls.hidden.unique_id}|{label}{value}"))


class Sleep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Sleep",
            category="testing/v3",
            inputs=[io.AnyType.Input("value"), io.Float.Input("seconds", default=0.1, min=0.0, max=10.0)],
            outputs=[io.AnyType.Output()],
            is_experimental=True,
        )

    @classmethod
    async def execute(cls, value, seconds):
        await asyncio.sleep(seconds)
        return io.NodeOutput(value)


class Switch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Switch",
            display_name="LG V3 Switch",
            category="testing/v3",
            inputs=[io.Boolean.Input("select", default=True),
                    anything.Input("on_true", lazy=True), anything.Input("on_false", lazy=True)],
            outputs=[anything.Output()],
        )

    @classmethod
    def check_lazy_status(cls, select, on_true=None, on_false=None):
        return ["on_true"] if select else ["on_false"]

    @classmethod
    def execute(cls, select, on_true=None, on_false=None):
        return io.NodeOutput(on_true if select else on_false)


class Count(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Count",
            display_name="LG V3 Count",
            category="testing/v3",
            inputs=[io.Int.Input("count", default=3, min=0, max=100)],
            outputs=[io.Int.Output(is_output_list=True)],
        )

    @classmethod
    def execute(cls, count):
        return io.NodeOutput(list(range(count)))


class Sum(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Sum",
            display_name="LG V3 Sum",
            category="testing/v3",
            is_input_list=True,
            inputs=[io.Int.Input("values", force_input=True)],
            outputs=[io.Int.Output()],
        )

    @classmethod
    def execute(cls, values):
        return io.NodeOutput(sum(values))


class Chain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Chain",
            display_name="LG V3 Chain",
            category="testing/v3",
            inputs=[io.Int.Input("value", force_input=True), io.Int.Input("length", default=2, min=1, max=10)],
            outputs=[io.Int.Output()],
            enable_expand=True,
        )

    @classmethod
    def execute(cls, value, length):
        graph = GraphBuilder()
        out = value
        for step in range(length):
            out = graph.node("LGV3Arith", a=out, b=step + 1, scale=1.0, mode="sum").out(0)
        return io.NodeOutput(out, expand=graph.finalize())


class Volatile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Volatile",
            category="testing/v3",
            is_deprecated=True,
            inputs=[io.String.Input("token", default="a")],
            outputs=[io.String.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, token):
        CALLS["fingerprint"] += 1
        return float("nan") if token == "always" else token.lower()

    @classmethod
    def execute(cls, token):
        CALLS["execute"] += 1
        return io.NodeOutput(token)


class Picture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Picture",
            display_name="LG V3 Picture",
            category="testing/v3",
            inputs=[io.Image.Input("images"), io.Mask.Input("mask", optional=True)],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, mask=None):
        if mask is not None:
            return io.NodeOutput(ui=ui.PreviewMask(mask, cls=cls))
        return io.NodeOutput(ui=ui.PreviewImage(images, cls=cls))


class Pick(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGV3Pick",
            display_name="LG V3 Pick",
            category="testing/v3",
            inputs=[io.Combo.Input("choice", options=["x", "y", "z"], default="y", control_after_generate=True),
                    io.MultiCombo.Input("many", options=["p", "q"], default=["p"], optional=True),
                    io.MultiType.Input("number", types=[io.Int, io.Float], optional=True)],
            outputs=[io.String.Output(), io.Combo.Output(options=["x", "y", "z"])],
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return True

    @classmethod
    def execute(cls, choice, many=None, number=None):
        return io.NodeOutput(f"{choice}{number}", choice)


class V3TestExtension(ComfyExtension):
    async def get_node_list(self):
        return [Arith, Show, Sleep, Switch, Count, Sum, Chain, Volatile, Picture, Pick]


async def comfy_entrypoint():
    return V3TestExtension()
