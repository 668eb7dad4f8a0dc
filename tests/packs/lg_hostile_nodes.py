"""Nodes that behave as badly as real plugins sometimes do, for the reliability tests.

Loaded like any custom node pack (next to lg_test_nodes.py), in ComfyUI's classic contract.
"""
import comfy.model_management
import comfy.model_patcher
import torch

HELD = []


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
    """Runs out of device memory the way torch reports it (when `allocate` is not 0), after loading
    a model through comfy.model_management as plugins do (when `load`)."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"allocate": ("INT", {"default": 0, "min": 0, "max": 1 << 40}),
                             "load": ("BOOLEAN", {"default": False})}}

    def run(self, allocate, load):
        if load:
            patcher = comfy.model_patcher.ModelPatcher(torch.nn.Linear(4, 4), torch.device("cpu"),
                                                       torch.device("cpu"))
            HELD.append(patcher)  # as a loader's cache would hold it
            comfy.model_management.load_models_gpu([patcher])
        if allocate:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {allocate} bytes.")
        return {"ui": {"text": ["ok"]}}


class HostileLoadedModels:
    """Reports how many models comfy.model_management has loaded."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tag": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    def run(self, tag):
        return {"ui": {"text": [str(len(comfy.model_management.loaded_models()))]}}


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
                                                     HostileLoadedModels, HostileBigOutput]}
