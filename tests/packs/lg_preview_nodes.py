"""Model-free nodes that send live previews, as a sampler would, for the server's preview tests."""
import time

import torch
from PIL import Image

from comfy.utils import ProgressBar
from graph.context import LatentPreview


class TestPreviewSampler:
    """Reports `steps` progress updates, each with a random 4-channel latent as its preview."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
            "delay": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0}),
            "family": (["sd1", "sd2", "sdxl"],),
            "size": ("INT", {"default": 8, "min": 1, "max": 256}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
        }}

    def run(self, steps, delay, family, size, seed):
        bar = ProgressBar(steps)
        generator = torch.Generator().manual_seed(seed)
        for step in range(steps):
            time.sleep(delay)
            latent = torch.randn(1, 4, size, size, generator=generator)
            bar.update_absolute(step + 1, steps, LatentPreview(latent, family))
        return (steps,)


class TestImagePreview:
    """Sends ComfyUI plugins' preview shape: ("JPEG", PIL image, max size)."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 1, "max": 4096}),
                             "max_size": ("INT", {"default": 32, "min": 1, "max": 4096})}}

    def run(self, width, max_size):
        bar = ProgressBar(1)
        bar.update_absolute(1, 1, ("JPEG", Image.new("RGB", (width, width), (200, 10, 10)), max_size))
        return (width,)


NODE_CLASS_MAPPINGS = {"TestPreviewSampler": TestPreviewSampler, "TestImagePreview": TestImagePreview}
