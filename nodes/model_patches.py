"""Model patches that change how the UNet computes (ComfyUI's model_patches/unet menu and its
experimental neighbours): FreeU, HyperTile, Kohya Deep Shrink, Token Merging, Differential
Diffusion and torch.compile.

Each node returns a clone of its MODEL carrying hooks (block or attention patches, a denoise-mask
function, an apply_model wrapper) that the sampler and the UNet read at call time; the network
itself is shared and left unchanged. The maths lives in diffusion/ (freeu, hypertile,
deep_shrink, tome, differential_diffusion, torch_compile).
"""
from __future__ import annotations

from diffusion.deep_shrink import deep_shrink_patches
from diffusion.differential_diffusion import differential_denoise_mask
from diffusion.freeu import freeu_output_block_patch
from diffusion.hypertile import hypertile_patches
from diffusion.tome import tome_patches
from diffusion.torch_compile import set_torch_compile_wrapper
from graph.contract import Boolean, Choice, Float, Int, Node, Output, Socket

UNET_PATCHES = "model_patches/unet"
MODEL = (Output("MODEL"),)
RESIZE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def model_channels(model) -> int:
    return model.model.model_config.unet_config["model_channels"]


def FreeUScale(name: str, default: float) -> Float:
    return Float(name, default, min=0.0, max=10.0, step=0.01)


class _FreeUNode(Node):
    comfy_function = "patch"
    comfy_module = "comfy_extras.nodes_freelunch"
    category = UNET_PATCHES
    outputs = MODEL
    version = 1

    def run(self, ctx, model, b1, b2, s1, s2):
        patched = model.clone()
        patched.set_model_output_block_patch(
            freeu_output_block_patch(model_channels(model), b1, b2, s1, s2, version=self.version))
        return (patched,)


class FreeU(_FreeUNode):
    """FreeU: the decoder's backbone features at the two deepest levels amplified by b1 / b2 (on
    half of their channels) and the low frequencies of their skip features damped by s1 / s2."""

    comfy_function = "patch"
    comfy_module = "comfy_extras.nodes_freelunch"
    inputs = (Socket("model", "MODEL"), FreeUScale("b1", 1.1), FreeUScale("b2", 1.2), FreeUScale("s1", 0.9),
              FreeUScale("s2", 0.2))


class FreeU_V2(_FreeUNode):
    """FreeU v2: the backbone amplification follows the features' normalised channel mean per
    pixel (1 where it is lowest, b where it is highest)."""

    comfy_function = "patch"
    comfy_module = "comfy_extras.nodes_freelunch"
    inputs = (Socket("model", "MODEL"), FreeUScale("b1", 1.3), FreeUScale("b2", 1.4), FreeUScale("s1", 0.9),
              FreeUScale("s2", 0.2))
    version = 2


class HyperTile(Node):
    """Self-attention at the highest latent resolutions computed in tiles of about tile_size
    pixels (faster at large sizes); tile counts vary at random among swap_size choices."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_hypertile"
    category = UNET_PATCHES
    display_name = None
    inputs = (Socket("model", "MODEL"), Int("tile_size", 256, min=1, max=2048), Int("swap_size", 2, min=1, max=128),
              Int("max_depth", 0, min=0, max=10), Boolean("scale_depth", False))
    outputs = MODEL

    def run(self, ctx, model, tile_size, swap_size, max_depth, scale_depth):
        tile_in, tile_out = hypertile_patches(tile_size, swap_size, max_depth, scale_depth)
        patched = model.clone()
        patched.set_model_attn1_patch(tile_in)
        patched.set_model_attn1_output_patch(tile_out)
        return (patched,)


class PatchModelAddDownscale(Node):
    """Kohya Deep Shrink: between start_percent and end_percent of the sampling, the features
    after input block block_number are shrunk by downscale_factor (and grown back in the
    decoder), which keeps the composition coherent above the model's trained resolution."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_model_downscale"
    category = UNET_PATCHES
    display_name = "PatchModelAddDownscale (Kohya Deep Shrink)"
    inputs = (Socket("model", "MODEL"), Int("block_number", 3, min=1, max=32, step=1),
              Float("downscale_factor", 2.0, min=0.1, max=9.0, step=0.001),
              Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end_percent", 0.35, min=0.0, max=1.0, step=0.001),
              Boolean("downscale_after_skip", True),
              Choice("downscale_method", RESIZE_METHODS), Choice("upscale_method", RESIZE_METHODS))
    outputs = MODEL

    def run(self, ctx, model, block_number, downscale_factor, start_percent, end_percent, downscale_after_skip,
            downscale_method, upscale_method):
        shrink, restore = deep_shrink_patches(model.get_model_object("model_sampling"), block_number,
                                              downscale_factor, start_percent, end_percent, downscale_method,
                                              upscale_method)
        patched = model.clone()
        if downscale_after_skip:
            patched.set_model_input_block_patch_after_skip(shrink)
        else:
            patched.set_model_input_block_patch(shrink)
        patched.set_model_output_block_patch(restore)
        return (patched,)


class TomePatchModel(Node):
    """Token Merging: before self-attention at the full latent resolution, the `ratio` of query
    tokens most similar to a neighbour are merged into it (faster, slightly softer)."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_tomesd"
    category = UNET_PATCHES
    display_name = None
    inputs = (Socket("model", "MODEL"), Float("ratio", 0.3, min=0.0, max=1.0, step=0.01))
    outputs = MODEL

    def run(self, ctx, model, ratio):
        merge, unmerge = tome_patches(ratio)
        patched = model.clone()
        patched.set_model_attn1_patch(merge)
        patched.set_model_attn1_output_patch(unmerge)
        return (patched,)


class DifferentialDiffusion(Node):
    """Differential Diffusion: an inpainting mask's values become per-pixel strengths (a pixel
    with mask m is regenerated during the last m of the steps) rather than a hard edge."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_differential_diffusion"
    category = "_for_testing"
    display_name = "Differential Diffusion"
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"), Float("strength", 1.0, min=0.0, max=1.0, step=0.01, optional=True))
    outputs = MODEL

    def run(self, ctx, model, strength=1.0):
        patched = model.clone()
        patched.set_model_denoise_mask_function(differential_denoise_mask(strength))
        return (patched,)


class TorchCompileModel(Node):
    """Compiles the diffusion model with torch.compile on first use (the first sampling is slow
    while it traces and builds kernels; later ones at the same sizes are faster)."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_torch_compile"
    category = "_for_testing"
    display_name = None
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"), Choice("backend", ["inductor", "cudagraphs"]))
    outputs = MODEL

    def run(self, ctx, model, backend):
        patched = model.clone()
        set_torch_compile_wrapper(model=patched, backend=backend)
        return (patched,)


NODES = [FreeU, FreeU_V2, HyperTile, PatchModelAddDownscale, TomePatchModel, DifferentialDiffusion,
         TorchCompileModel]
