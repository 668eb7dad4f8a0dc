"""Upscale-model nodes: load an ESRGAN-family (or other spandrel-supported) upscaler from
models/upscale_models/ and run it over an image."""
from __future__ import annotations

from diffusion.upscale_models import load_upscale_model, upscale_image
from graph.contract import Choice, Node, Output, Socket
from nodes.image_tools import image_batch
from nodes.loaders import model_file

UPSCALE_MODULE = "comfy_extras.nodes_upscale_model"


class UpscaleModelLoader(Node):
    display_name = "Load Upscale Model"
    comfy_function = "execute"
    category = "loaders"
    comfy_module = UPSCALE_MODULE
    inputs = (Choice("model_name", lambda env: env.folders.filenames("upscale_models")),)
    outputs = (Output("UPSCALE_MODEL"),)

    def run(self, ctx, model_name):
        path = model_file(ctx, "upscale_models", model_name)
        return (ctx.env.models.cache.get("upscale_model", path, load_upscale_model),)


class ImageUpscaleWithModel(Node):
    """Upscales by the model's own factor, in 512-pixel tiles blended over 32 pixels."""

    display_name = "Upscale Image (using Model)"
    comfy_function = "execute"
    category = "image/upscaling"
    comfy_module = UPSCALE_MODULE
    inputs = (Socket("upscale_model", "UPSCALE_MODEL"), Socket("image", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, upscale_model, image):
        image = image_batch(image)
        channels = getattr(upscale_model, "input_channels", image.shape[-1])
        if image.shape[-1] != channels:
            raise ValueError(f"the upscale model takes {channels}-channel images, got {image.shape[-1]} channels "
                             "(split off an alpha channel first)")
        device = ctx.env.models.policy.load_device if ctx is not None else "cpu"
        return (upscale_image(upscale_model, image, device, ctx.progress if ctx is not None else None),)


NODES = [UpscaleModelLoader, ImageUpscaleWithModel]
