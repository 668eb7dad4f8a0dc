"""Alpha compositing (ComfyUI's mask/compositing menu): split an image's alpha off as a mask, join a
mask on as alpha, and Porter-Duff composites of two images with their masks.

MASK values here are inverted alpha (1 = transparent), as LoadImage produces them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from diffusion.upscale import upscale
from graph.contract import Choice, Node, Output, Socket
from nodes.image_tools import image_batch
from nodes.mask import as_mask_batch

COMPOSITING = "mask/compositing"
COMPOSITING_MODULE = "comfy_extras.nodes_compositing"

Tensor = torch.Tensor
# (source alpha, source colour, destination alpha, destination colour) -> (alpha, colour), all
# colours premultiplied by their alpha; the blend modes follow ComfyUI's formulas.
Operator = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _union(sa: Tensor, da: Tensor) -> Tensor:
    return sa + da - sa * da


PORTER_DUFF: dict[str, Operator] = {
    "ADD": lambda sa, s, da, d: (torch.clamp(sa + da, 0, 1), torch.clamp(s + d, 0, 1)),
    "CLEAR": lambda sa, s, da, d: (torch.zeros_like(da), torch.zeros_like(d)),
    "DARKEN": lambda sa, s, da, d: (_union(sa, da), (1 - da) * s + (1 - sa) * d + torch.min(s, d)),
    "DST": lambda sa, s, da, d: (da, d),
    "DST_ATOP": lambda sa, s, da, d: (sa, sa * d + (1 - da) * s),
    "DST_IN": lambda sa, s, da, d: (sa * da, d * sa),
    "DST_OUT": lambda sa, s, da, d: ((1 - sa) * da, (1 - sa) * d),
    "DST_OVER": lambda sa, s, da, d: (da + (1 - da) * sa, d + (1 - da) * s),
    "LIGHTEN": lambda sa, s, da, d: (_union(sa, da), (1 - da) * s + (1 - sa) * d + torch.max(s, d)),
    "MULTIPLY": lambda sa, s, da, d: (sa * da, s * d),
    "OVERLAY": lambda sa, s, da, d: (_union(sa, da), torch.where(2 * d < da, 2 * s * d,
                                                                 sa * da - 2 * (da - s) * (sa - d))),
    "SCREEN": lambda sa, s, da, d: (_union(sa, da), s + d - s * d),
    "SRC": lambda sa, s, da, d: (sa, s),
    "SRC_ATOP": lambda sa, s, da, d: (da, da * s + (1 - sa) * d),
    "SRC_IN": lambda sa, s, da, d: (sa * da, s * da),
    "SRC_OUT": lambda sa, s, da, d: ((1 - da) * sa, (1 - da) * s),
    "SRC_OVER": lambda sa, s, da, d: (sa + (1 - sa) * da, s + (1 - sa) * d),
    "XOR": lambda sa, s, da, d: ((1 - da) * sa + (1 - sa) * da, (1 - da) * s + (1 - sa) * d),
}


def porter_duff(source: Tensor, source_mask: Tensor, destination: Tensor, destination_mask: Tensor,
                mode: str) -> tuple[Tensor, Tensor]:
    """One [H, W, C] composite with [H, W, 1] masks (inverted alpha) -> (colour, mask)."""
    sa, da = 1 - source_mask, 1 - destination_mask
    alpha, colour = PORTER_DUFF[mode](sa, source * sa, da, destination * da)
    colour = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour))
    return torch.clamp(colour, 0, 1), 1 - alpha


def _fit(image: Tensor, height: int, width: int) -> Tensor:
    """[H, W, C] resized (bicubic, centre crop) to height x width."""
    return upscale(image.unsqueeze(0).movedim(-1, 1), width, height, "bicubic", "center").movedim(1, -1)[0]


class PorterDuffImageComposite(Node):
    display_name = "Porter-Duff Image Composite"
    comfy_function = "execute"
    category = COMPOSITING
    comfy_module = COMPOSITING_MODULE
    inputs = (
        Socket("source", "IMAGE"),
        Socket("source_alpha", "MASK"),
        Socket("destination", "IMAGE"),
        Socket("destination_alpha", "MASK"),
        Choice("mode", list(PORTER_DUFF), default="DST"),
    )
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx, source, source_alpha, destination, destination_alpha, mode):
        if mode not in PORTER_DUFF:
            raise ValueError(f"mode must be one of {list(PORTER_DUFF)}, got {mode!r}")
        source, destination = image_batch(source, "source"), image_batch(destination, "destination")
        source_alpha = as_mask_batch(source_alpha, "source_alpha")
        destination_alpha = as_mask_batch(destination_alpha, "destination_alpha")
        if source.shape[-1] != destination.shape[-1]:
            raise ValueError(f"source has {source.shape[-1]} channels and destination {destination.shape[-1]}; "
                             "they must match")
        images, masks = [], []
        for index in range(min(len(source), len(source_alpha), len(destination), len(destination_alpha))):
            src, dst = source[index], destination[index]
            src_mask, dst_mask = source_alpha[index].unsqueeze(2), destination_alpha[index].unsqueeze(2)
            if dst_mask.shape[:2] != dst.shape[:2]:
                dst_mask = _fit(dst_mask, dst.shape[0], dst.shape[1])
            if src.shape != dst.shape:
                src = _fit(src, dst.shape[0], dst.shape[1])
            if src_mask.shape != dst_mask.shape:
                src_mask = _fit(src_mask, dst_mask.shape[0], dst_mask.shape[1])
            image, mask = porter_duff(src, src_mask, dst, dst_mask, mode)
            images.append(image)
            masks.append(mask.squeeze(2))
        return (torch.stack(images), torch.stack(masks))


class SplitImageWithAlpha(Node):
    """The RGB channels, and the alpha channel as a mask (1 - alpha; all 0 without alpha)."""

    display_name = "Split Image with Alpha"
    comfy_function = "execute"
    category = COMPOSITING
    comfy_module = COMPOSITING_MODULE
    inputs = (Socket("image", "IMAGE"),)
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx, image):
        image = image_batch(image)
        alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
        return (image[..., :3], 1.0 - alpha)


class JoinImageWithAlpha(Node):
    """RGB plus 1 - mask as the alpha channel; the mask is resized (bilinear) to the image."""

    display_name = "Join Image with Alpha"
    comfy_function = "execute"
    category = COMPOSITING
    comfy_module = COMPOSITING_MODULE
    inputs = (Socket("image", "IMAGE"), Socket("alpha", "MASK"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, alpha):
        image = image_batch(image)
        masks = as_mask_batch(alpha, "alpha").unsqueeze(1)
        alpha = 1.0 - F.interpolate(masks, size=tuple(image.shape[1:3]), mode="bilinear").squeeze(1)
        count = min(len(image), len(alpha))
        return (torch.cat((image[:count, ..., :3], alpha[:count].unsqueeze(-1).to(image)), dim=-1),)


NODES = [PorterDuffImageComposite, SplitImageWithAlpha, JoinImageWithAlpha]
