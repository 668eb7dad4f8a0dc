"""Nodes that behave as badly as real plugins sometimes do, for the reliability tests.

Loaded like any custom node pack (next to lg_test_nodes.py), in ComfyUI's classic contract.
"""
import torch


class HostileBrokenDeclaration:
    """A plugin whose INPUT_TYPES raises (a missing dependency, a typo)."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        raise KeyError("model_list_not_loaded")

    def run(self):
        return (1,)


class HostileFloat:
    """A FLOAT with no min or max, as many plugins declare it; echoes what it got."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 1.0})}}

    def run(self, value):
        return {"ui": {"text": [repr(value)]}}


class HostileOutOfMemory:
    """Runs out of device memory the way torch reports it; succeeds when `allocate` is 0."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"allocate": ("INT", {"default": 0, "min": 0, "max": 1 << 40})}}

    def run(self, allocate):
        if allocate:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {allocate} bytes.")
        return {"ui": {"text": ["ok"]}}


class HostileBigOutput:
    """An output node whose `executed` event carries `size` bytes of text to every client."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 1, "min": 1, "max": 1 << 26}),
                             "tag": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    def run(self, size, tag):
        return {"ui": {"text": [f"{tag}:" + "x" * size]}}


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in [HostileBrokenDeclaration, HostileFloat, HostileOutOfMemory,
                                                     HostileBigOutput]}
