"""Tiled VAE nodes: decode and encode in overlapping tiles, for images too large to do in one piece.

Tiles are blended as ComfyUI blends them (diffusion/tiling.py). The temporal widgets only matter
to video VAEs; the image VAEs here take and ignore them, as ComfyUI's do.
"""
from __future__ import annotations

from diffusion.handles import VAE_SCALE
from graph.contract import Int, Node, Output, Socket

TEMPORAL_SIZE_TIP = "Only used for video VAEs: Amount of frames to {} at a time."
TEMPORAL_OVERLAP_TIP = "Only used for video VAEs: Amount of frames to overlap."


def temporal_inputs(verb: str) -> tuple:
    return (Int("temporal_size", 64, min=8, max=4096, step=4, tooltip=TEMPORAL_SIZE_TIP.format(verb)),
            Int("temporal_overlap", 8, min=4, max=4096, step=4, tooltip=TEMPORAL_OVERLAP_TIP))


class VAEDecodeTiled(Node):
    """Decodes latents tile by tile; `tile_size` and `overlap` are in pixels."""

    display_name = "VAE Decode (Tiled)"
    comfy_function = "decode"
    category = "_for_testing"
    inputs = (
        Socket("samples", "LATENT"),
        Socket("vae", "VAE"),
        Int("tile_size", 512, min=64, max=4096, step=32),
        Int("overlap", 64, min=0, max=4096, step=32),
        *temporal_inputs("decode"),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, vae, samples, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        # An overlap above a quarter of the tile would leave the narrow passes without a core.
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        cell = tile_size // VAE_SCALE
        return (vae.decode_tiled(samples["samples"], tile_x=cell, tile_y=cell, overlap=overlap // VAE_SCALE,
                                 progress=ctx.progress if ctx else None),)


class VAEEncodeTiled(Node):
    """Encodes pixels tile by tile; `tile_size` and `overlap` are in pixels."""

    display_name = "VAE Encode (Tiled)"
    comfy_function = "encode"
    category = "_for_testing"
    inputs = (
        Socket("pixels", "IMAGE"),
        Socket("vae", "VAE"),
        Int("tile_size", 512, min=64, max=4096, step=64),
        Int("overlap", 64, min=0, max=4096, step=32),
        *temporal_inputs("encode"),
    )
    outputs = (Output("LATENT"),)

    def run(self, ctx, vae, pixels, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        latent = vae.encode_tiled(pixels[..., :3], tile_x=tile_size, tile_y=tile_size, overlap=overlap,
                                  progress=ctx.progress if ctx else None)
        return ({"samples": latent},)


NODES = [VAEDecodeTiled, VAEEncodeTiled]
