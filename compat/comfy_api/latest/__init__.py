"""`comfy_api.latest`: ComfyUI's newest plugin API.

- `io`: the V3 node schema (ComfyNode, Schema, the socket types with their Input/Output options,
  Hidden, NodeOutput); `ui`: what a node shows (PreviewImage, PreviewText, ...).
- `ComfyExtension`: what a pack's `comfy_entrypoint()` (sync or async) returns; the loader
  awaits on_load() and registers get_node_list()'s classes under their schema's node_id.
- `ComfyAPI` / `ComfyAPISync`: `execution.set_progress(value, max_value, node_id=None,
  preview_image=None)` reports a node's progress (its progress_state and a preview).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from graph.context import NodeContext, current_context
from nodes.image import tensor_to_pil

from . import _io as io
from . import _ui as ui

PREVIEW_SIZE = 512  # ComfyUI's --preview-size default


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called once when the extension is loaded, before its nodes are listed."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this extension provides."""


def _running_context() -> NodeContext | None:
    ctx = current_context.get()
    if ctx is None:
        from app import compat

        ctx = compat.bound().executor.active if compat.is_bound() else None
    return ctx


def _preview(image: Any, ignore_size_limit: bool) -> tuple | None:
    """A PIL image or an IMAGE tensor as the (format, image, max size) a preview is sent as."""
    if image is None:
        return None
    if isinstance(image, torch.Tensor):
        image = tensor_to_pil(image[0] if image.dim() == 4 else image)
    return (image.format or "JPEG", image, None if ignore_size_limit else PREVIEW_SIZE)


def _set_progress(value: float, max_value: float, node_id: str | None = None, preview_image: Any = None,
                  ignore_size_limit: bool = False) -> None:
    ctx = _running_context()
    if ctx is None:
        if node_id is None:
            raise ValueError("node_id must be provided if not in executing context")
        return  # no prompt is running: nobody to tell
    ctx.set_progress(value, max_value, node_id, _preview(preview_image, ignore_size_limit))


class ComfyAPI_latest:
    VERSION = "latest"
    STABLE = False

    class Execution:
        async def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                               preview_image: Any = None, ignore_size_limit: bool = False) -> None:
            """Update the progress of the running node (or `node_id`) shown in the editor."""
            _set_progress(value, max_value, node_id, preview_image, ignore_size_limit)

    def __init__(self):
        self.execution = self.Execution()


class ComfyAPISync_latest:
    """ComfyAPI with plain (not async) methods, for synchronous node code."""

    VERSION = "latest"
    STABLE = False

    class Execution:
        def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                         preview_image: Any = None, ignore_size_limit: bool = False) -> None:
            _set_progress(value, max_value, node_id, preview_image, ignore_size_limit)

    def __init__(self):
        self.execution = self.Execution()


class Input:
    """Type names for node inputs."""

    Image = torch.Tensor
    Mask = torch.Tensor
    Latent = dict
    Audio = dict


ComfyAPI = ComfyAPI_latest
ComfyAPISync = ComfyAPISync_latest
comfy_io = io

__all__ = ["ComfyAPI", "ComfyAPISync", "Input", "ComfyExtension", "io", "comfy_io", "ui"]
