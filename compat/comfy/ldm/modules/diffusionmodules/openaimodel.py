"""ComfyUI's `comfy.ldm.modules.diffusionmodules.openaimodel`: the UNet and its blocks (ours,
diffusion/unet.py and unet_blocks.py, with ComfyUI's attribute paths)."""
from diffusion.unet import UNetModel
from diffusion.unet_blocks import Downsample, ResBlock, TimestepSequential, Upsample, timestep_embedding

TimestepEmbedSequential = TimestepSequential


def forward_timestep_embed(ts, x, emb, context=None, transformer_options=None, output_shape=None, **kwargs):
    size = tuple(output_shape[-2:]) if output_shape is not None else None
    return ts(x, emb, context, transformer_options if transformer_options is not None else {}, size)


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            h += ctrl
    return h


__all__ = ["Downsample", "ResBlock", "TimestepEmbedSequential", "UNetModel", "Upsample", "apply_control",
           "forward_timestep_embed", "timestep_embedding"]
