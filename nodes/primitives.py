"""Model-free value nodes: constants, string helpers and a text preview.

Names, display names and categories follow ComfyUI's so workflows saved there load here.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from graph.contract import Boolean, Float, Int, Node, Output, Socket, String

# ComfyUI bounds these constants by the platform word size rather than leaving them open.
_WORD_MIN, _WORD_MAX = -sys.maxsize, sys.maxsize


class PrimitiveInt(Node):
    """An integer constant, with the seed-style control widget so it can drive seeds."""

    display_name = "Int"
    comfy_function = "execute"
    category = "utils/primitive"
    comfy_module = "comfy_extras.nodes_primitive"
    inputs = (Int("value", None, min=_WORD_MIN, max=_WORD_MAX, control_after_generate=True),)
    outputs = (Output("INT"),)

    def run(self, ctx, value: int):
        return (value,)


class PrimitiveFloat(Node):
    """A floating-point constant."""

    display_name = "Float"
    comfy_function = "execute"
    category = "utils/primitive"
    comfy_module = "comfy_extras.nodes_primitive"
    inputs = (Float("value", None, min=_WORD_MIN, max=_WORD_MAX, step=None),)
    outputs = (Output("FLOAT"),)

    def run(self, ctx, value: float):
        return (value,)


class PrimitiveString(Node):
    """A one-line string constant."""

    display_name = "String"
    comfy_function = "execute"
    category = "utils/primitive"
    comfy_module = "comfy_extras.nodes_primitive"
    inputs = (String("value", None),)
    outputs = (Output("STRING"),)

    def run(self, ctx, value: str):
        return (value,)


class PrimitiveStringMultiline(Node):
    """A multi-line string constant (a text box in the editor)."""

    display_name = "String (Multiline)"
    comfy_function = "execute"
    category = "utils/primitive"
    comfy_module = "comfy_extras.nodes_primitive"
    inputs = (String("value", None, multiline=True),)
    outputs = (Output("STRING"),)

    def run(self, ctx, value: str):
        return (value,)


class PrimitiveBoolean(Node):
    """A true/false constant."""

    display_name = "Boolean"
    comfy_function = "execute"
    category = "utils/primitive"
    comfy_module = "comfy_extras.nodes_primitive"
    inputs = (Boolean("value", None),)
    outputs = (Output("BOOLEAN"),)

    def run(self, ctx, value: bool):
        return (value,)


class StringConcatenate(Node):
    """Joins two strings with an optional delimiter between them."""

    display_name = "Concatenate"
    comfy_function = "execute"
    category = "utils/string"
    comfy_module = "comfy_extras.nodes_string"
    inputs = (
        String("string_a", None, multiline=True),
        String("string_b", None, multiline=True),
        String("delimiter", ""),
    )
    outputs = (Output("STRING"),)

    def run(self, ctx, string_a: str, string_b: str, delimiter: str):
        return (delimiter.join((string_a, string_b)),)


class PreviewAny(Node):
    """Shows any value as text in the editor; an output node, so value-only graphs can run."""

    display_name = "Preview Any"
    comfy_function = "main"
    category = "utils"
    comfy_module = "comfy_extras.nodes_preview_any"
    output_node = True
    inputs = (Socket("source", "*"),)
    outputs = ()

    def run(self, ctx, source: Any = None):
        return {"ui": {"text": [render_value(source)]}}


def render_value(value: Any) -> str:
    """A readable rendering: strings verbatim, JSON for plain data, shape/dtype for tensors."""
    if isinstance(value, str):
        return value
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        # Printing a whole image tensor would flood the editor; its geometry is what matters.
        return f"{type(value).__name__}(shape={list(shape)}, dtype={value.dtype})"
    try:
        return json.dumps(value, indent=4)
    except (TypeError, ValueError):
        return str(value)


NODES = [
    PrimitiveInt,
    PrimitiveFloat,
    PrimitiveString,
    PrimitiveStringMultiline,
    PrimitiveBoolean,
    StringConcatenate,
    PreviewAny,
]
