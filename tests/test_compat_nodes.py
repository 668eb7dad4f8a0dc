"""The project's `nodes` package as ComfyUI's `nodes` module: every core node class under its
ComfyUI name, called, subclassed and inspected as plugins do with ComfyUI's."""
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from app.compat import bound
from graph.context import Interrupted, current_context
from tests.node_helpers import node_context

FUNCTIONS = json.loads((Path(__file__).parent / "data" / "comfy_node_functions.json").read_text())["nodes"]


def ours_and_comfy():
    return [(name, cls, FUNCTIONS[name]) for name, cls in sorted(nodes.builtin_classes().items()) if name in FUNCTIONS]


def _given_optional_defaults(name: str, params: list) -> list:
    """ComfyUI's parameters, where one without a default stands for an optional input: with that
    input's default, which ours takes (ComfyUI's own call fails when a prompt leaves it out)."""
    from tests.paths import SHARED
    info = _OBJECT_INFO.setdefault("info", json.loads((SHARED / "spec" / "object_info_full.json").read_text()))
    optional = info.get(name, {}).get("input", {}).get("optional", {})
    out = []
    for param, default in params:
        spec = optional.get(param)
        if default is None and spec is not None and len(spec) > 1 and "default" in spec[1]:
            default = repr(spec[1]["default"])
        out.append([param, default])
    return out


_OBJECT_INFO: dict = {}


def test_every_shared_node_has_comfyuis_function_name_and_signature():
    checked = 0
    for name, cls, comfy in ours_and_comfy():
        assert cls.FUNCTION == comfy["function"], name
        method = getattr(cls, cls.FUNCTION)
        params = list(inspect.signature(method).parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
        ours = [[stars.get(p.kind, "") + p.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
                for p in params]
        assert ours == _given_optional_defaults(name, comfy["params"]), name
        if comfy["v3"]:  # ComfyUI's V3 nodes are called on the class
            assert isinstance(inspect.getattr_static(cls, "execute"), classmethod), name
        checked += 1
    assert checked == len(nodes.builtin_classes())  # ComfyUI has every node we have


def test_every_builtin_node_that_comfyui_has_is_importable_from_nodes_or_comfy_extras():
    import importlib
    for name, cls, comfy in ours_and_comfy():
        module = "nodes" if comfy["module"] == "nodes" else comfy["module"]
        if module.startswith("comfy_extras.") and vars(cls).get("comfy_module") == module:
            assert getattr(importlib.import_module(module), name) is cls
        assert getattr(nodes, name) is cls
    from nodes import CLIPTextEncode, KSampler, VAEDecode  # noqa: F401 - the import itself is the check


def test_module_level_names(runtime):
    assert nodes.MAX_RESOLUTION == 16384
    assert nodes.ImageScale.upscale_methods == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert nodes.ImageScale.crop_methods == ["disabled", "center"]
    assert nodes.LatentUpscale.upscale_methods == ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
    mappings = nodes.NODE_CLASS_MAPPINGS
    assert mappings["KSampler"] is nodes.KSampler
    assert mappings["TestValue"] is runtime.registry.get("TestValue").cls  # a pack's node, as in ComfyUI
    assert "KSampler" in mappings and len(mappings) == len(runtime.registry.names())
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["CheckpointLoaderSimple"] == "Load Checkpoint"
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["TestValue"] == "Test Value"
    assert nodes.get_module_name("/x/custom_nodes/my_pack/") == "my_pack"
    with pytest.raises(AttributeError):
        nodes.NoSuchNode  # noqa: B018


def test_a_pack_registered_through_node_class_mappings_is_a_node(runtime):
    class Double:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"x": ("INT", {"default": 1})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        def go(self, x):
            return (2 * x,)

    nodes.NODE_CLASS_MAPPINGS["Double"] = Double
    assert runtime.registry.get("Double").cls is Double


def test_interrupt_processing_and_before_node_execution(runtime):
    flag = runtime.executor.interrupt_flag
    nodes.interrupt_processing()
    assert flag.is_set()
    ctx = node_context(runtime.registry)
    ctx.interrupt = flag
    token = current_context.set(ctx)
    try:
        with pytest.raises(Interrupted):
            nodes.before_node_execution()
        nodes.interrupt_processing(False)
        nodes.before_node_execution()
    finally:
        current_context.reset(token)
    assert not flag.is_set()


def test_calls_with_comfyuis_positional_arguments(runtime):
    latent = nodes.EmptyLatentImage().generate(64, 32)[0]
    assert torch.equal(latent["samples"], torch.zeros(1, 4, 4, 8))
    image = torch.rand(1, 8, 8, 3)
    assert torch.equal(nodes.ImageInvert().invert(image)[0], 1.0 - image)
    scaled = nodes.ImageScale().upscale(image, "nearest-exact", 4, 2, "disabled")[0]
    assert scaled.shape == (1, 2, 4, 3)
    with pytest.raises(TypeError):
        nodes.EmptyLatentImage().generate(64)  # height is required, as in ComfyUI
    combined = nodes.ConditioningCombine().combine([[torch.ones(1), {}]], [[torch.zeros(1), {}]])[0]
    assert [c[0].item() for c in combined] == [1.0, 0.0]
    # a V3 node in ComfyUI is called on the class
    assert nodes.StringConcatenate.execute("a", "b", "-")[0] == "a-b"
    assert nodes.PrimitiveInt.execute(7)[0] == 7


def test_input_types_without_arguments_reads_the_running_engine(runtime, tmp_path):
    (tmp_path / "models" / "checkpoints" / "m.safetensors").write_bytes(b"x")
    assert nodes.CheckpointLoaderSimple.INPUT_TYPES()["required"]["ckpt_name"][0] == ["m.safetensors"]
    assert nodes.KSampler.INPUT_TYPES()["required"]["seed"][1]["control_after_generate"] is True
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "input" / "red.png")
    import hashlib
    expected = hashlib.sha256((tmp_path / "input" / "red.png").read_bytes()).hexdigest()
    assert nodes.LoadImage.IS_CHANGED(image="red.png") == expected
    assert nodes.LoadImage.VALIDATE_INPUTS(image="red.png") is True
    # ComfyUI's words, then where the file was looked for and what to do
    assert nodes.LoadImage.VALIDATE_INPUTS(image="missing.png").startswith("Invalid image file: missing.png (")
    image, mask = nodes.LoadImage().load_image("red.png")
    assert image.shape == (1, 4, 4, 3) and torch.equal(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


class MaskPreview(nodes.SaveImage):
    """A plugin's preview node as ComfyUI_essentials writes it: ComfyUI's SaveImage attributes
    set in __init__, its own inputs and function, and SaveImage's save_images called."""

    def __init__(self):
        import folder_paths
        self.output_dir = folder_paths.get_temp_directory()
        self.type = "temp"
        self.prefix_append = "_temp_abcde"
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    FUNCTION = "execute"
    CATEGORY = "essentials/mask"

    def execute(self, mask, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        preview = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        return self.save_images(preview, filename_prefix, prompt, extra_pnginfo)


class BigLatent(nodes.EmptyLatentImage):
    """A plugin's subclass that changes the inputs and wraps the parent's method."""

    @classmethod
    def INPUT_TYPES(cls):
        types = super().INPUT_TYPES()
        types["required"]["factor"] = ("INT", {"default": 2, "min": 1})
        return types

    RETURN_NAMES = ("big",)

    def generate(self, width, height, batch_size=1, factor=2):
        return super().generate(width * factor, height * factor, batch_size)


def test_plugin_subclasses_of_core_nodes_run_through_the_engine(runtime, tmp_path):
    registry = runtime.registry
    registry.register("MaskPreviewPlugin", MaskPreview, python_module="custom_nodes.test")
    registry.register("BigLatent", BigLatent, python_module="custom_nodes.test")
    info = registry.describe("MaskPreviewPlugin")["MaskPreviewPlugin"]
    assert info["input"]["required"] == {"mask": ("MASK",)} and info["output"] == [] and info["output_node"]
    assert info["category"] == "essentials/mask"
    big = registry.describe("BigLatent")["BigLatent"]
    assert big["input_order"]["required"] == ["width", "height", "batch_size", "factor"]
    assert big["output_name"] == ["big"] and big["output"] == ["LATENT"]

    prompt = {"1": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 8, "height": 4}},
              "2": {"class_type": "MaskPreviewPlugin", "inputs": {"mask": ["1", 0]}},
              "3": {"class_type": "BigLatent", "inputs": {"width": 64, "height": 32, "batch_size": 1, "factor": 3}},
              "4": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                                "scale_by": 1.0}},
              "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}}
    result = runtime.executor.run(prompt)
    assert result.ok, result.error
    [saved] = result.outputs["2"]["images"]
    assert saved == {"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}
    pixels = Image.open(tmp_path / "temp" / saved["filename"])
    assert pixels.size == (8, 4) and pixels.getpixel((0, 0)) == (127, 127, 127)  # 0.5 * 255, truncated
    assert bound() is runtime


def test_comfyui_methods_on_a_real_checkpoint_match_the_engine(tiny_checkpoint, tmp_path):
    import shutil

    from tests.conftest import make_runtime
    runtime = make_runtime(tmp_path)
    shutil.copy(tiny_checkpoint("sd15"), tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny.safetensors")
        positive = nodes.CLIPTextEncode().encode(clip, "a red cube")[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(64, 64)[0]
        samples = nodes.KSampler().sample(model, 5, 2, 6.0, "euler", "normal", positive, negative, latent)[0]
        again = nodes.common_ksampler(model, 5, 2, 6.0, "euler", "normal", positive, negative, latent)[0]
        image = nodes.VAEDecode().decode(vae, samples)[0]
        encoded = nodes.VAEEncode().encode(vae, image)[0]
        by_name = runtime.registry.get("VAEEncode")
        engine_encoded = by_name.call(by_name.instantiate(), node_context(runtime.registry), {"pixels": image,
                                                                                            "vae": vae})[0]
        tiled = nodes.VAEDecodeTiled().decode(vae, samples, 64, 32)[0]
        combined = nodes.ConditioningCombine().combine(positive, negative)[0]
    assert torch.equal(samples["samples"], again["samples"])
    assert torch.equal(encoded["samples"], engine_encoded["samples"]) and encoded["samples"].shape == (1, 4, 8, 8)
    assert tiled.shape == image.shape == (1, 64, 64, 3)
    assert len(combined) == 2 and combined[0][0] is positive[0][0] and combined[1][0] is negative[0][0]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red cube"}},
              "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
              "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 5, "steps": 2, "cfg": 6.0,
                                                         "sampler_name": "euler", "scheduler": "normal",
                                                         "positive": ["2", 0], "negative": ["3", 0],
                                                         "latent_image": ["4", 0], "denoise": 1.0}},
              "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
              "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "engine"}}}
    result = runtime.executor.run(prompt)
    assert result.ok, result.error
    saved = Image.open(tmp_path / "output" / result.outputs["7"]["images"][0]["filename"])
    ours = nodes.SaveImage().save_images(image, "plugin")["ui"]["images"][0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "output" / ours["filename"])), np.asarray(saved))
