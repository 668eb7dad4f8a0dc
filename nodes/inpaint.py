"""Inpainting and outpainting nodes with ComfyUI's names, widgets and semantics.

MASK values are [B, H, W] (or [H, W]) with 1 = repaint. A LATENT's "noise_mask" tells the
sampler which region to generate; everything outside it is pinned to the source latent.
Inpainting checkpoints (9 input channels) additionally see the mask and the latent of the image
with the masked region greyed out, which InpaintModelConditioning puts in the conditioning as
"concat_mask" / "concat_latent_image" (and VAEEncodeForInpaint supplies through the latent).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion.handles import VAE_SCALE, crop_to_multiple
from graph.contract import Boolean, Int, Node, Output, Socket
from nodes.conditioning_tools import set_values
from nodes.image import MAX_RESOLUTION

NEUTRAL_GREY = 0.5  # what masked pixels become before encoding: the middle of the 0..1 range
MAX_GROW = 64


# ---------------------------------------------------------------------------------------------
# mask and pixel helpers


def _require_image(pixels: torch.Tensor, name: str = "pixels") -> None:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"{name} must be an IMAGE tensor [B, H, W, C], got {shape}")


def mask_to_pixels(mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """A MASK as [B, 1, H, W] at the pixels' size (bilinear, as ComfyUI resizes it)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a MASK tensor [B, H, W] or [H, W], got {shape}")
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:])).float()
    if mask.shape[0] not in (1, pixels.shape[0]):
        raise ValueError(f"mask batch {mask.shape[0]} does not match the image batch {pixels.shape[0]} "
                         "(give one mask, or one per image)")
    return F.interpolate(mask, size=tuple(pixels.shape[1:3]), mode="bilinear")


def crop_pixels_and_mask(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both centre-cropped to multiples of the VAE's 8, exactly where VAE encoding crops."""
    pixels = crop_to_multiple(pixels, VAE_SCALE)
    mask = crop_to_multiple(mask.movedim(1, -1), VAE_SCALE).movedim(-1, 1)
    return pixels, mask


def grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RGB of the pixels under the (rounded) mask set to neutral grey, so the encoder sees no trace
    of what is to be repainted; other channels are left alone."""
    keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
    out = pixels.clone()
    out[..., :3] = (pixels[..., :3] - NEUTRAL_GREY) * keep + NEUTRAL_GREY
    return out


def grow_mask(mask: torch.Tensor, by: int) -> torch.Tensor:
    """Dilates a [B, 1, H, W] mask with a `by` x `by` box, as ComfyUI does: a convolution of the
    rounded mask with ones, padded by ceil((by - 1) / 2), clamped, cut back to H x W and rounded.
    An even box grows the mask by by/2 - 1 pixels up and left and by/2 down and right."""
    if by < 0 or by > MAX_GROW:
        raise ValueError(f"grow_mask_by must be in 0..{MAX_GROW}, got {by}")
    if by == 0:
        return mask.round()
    kernel = torch.ones((1, 1, by, by), dtype=mask.dtype, device=mask.device)
    grown = F.conv2d(mask.round(), kernel, padding=math.ceil((by - 1) / 2)).clamp(0.0, 1.0)
    return grown[:, :, :mask.shape[2], :mask.shape[3]].round()


def outpaint_feather(height: int, width: int, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> torch.Tensor:
    """The mask over the original image when padding for outpainting: ((f - d) / f)^2 where d is
    the distance to the nearest padded edge and below f, else 0. As in ComfyUI, a pixel's distance
    is its index from the top/left edges but (size - index) from the bottom/right ones, so the
    last row/column before a bottom/right pad sits at distance 1, and nothing is feathered unless
    2 * f is below both sides."""
    if feathering <= 0 or feathering * 2 >= height or feathering * 2 >= width:
        return torch.zeros((height, width), dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float64).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float64).view(1, -1).expand(height, width)
    # An unpadded side contributes its full size, which is never below f.
    sides = [rows if top else None, height - rows if bottom else None,
             cols if left else None, width - cols if right else None]
    distance = torch.full((height, width), float(max(height, width)), dtype=torch.float64)
    for d in sides:
        if d is not None:
            distance = torch.minimum(distance, d)
    ramp = (feathering - distance) / feathering
    return torch.where(distance < feathering, ramp * ramp, torch.zeros_like(ramp)).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# nodes


class VAEEncodeForInpaint(Node):
    """Encodes the image with the masked region greyed out; the latent carries the grown mask as
    its noise mask, so sampling (at denoise 1.0) repaints only there."""

    display_name = "VAE Encode (for Inpainting)"
    comfy_function = "encode"
    category = "latent/inpaint"
    inputs = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"), Socket("mask", "MASK"),
              Int("grow_mask_by", 6, min=0, max=MAX_GROW, step=1))
    outputs = (Output("LATENT"),)

    def run(self, ctx, vae, pixels, mask, grow_mask_by=6):
        _require_image(pixels)
        pixels, mask = crop_pixels_and_mask(pixels, mask_to_pixels(mask, pixels))
        noise_mask = grow_mask(mask, grow_mask_by)
        return ({"samples": vae.encode(grey_out(pixels, mask)), "noise_mask": noise_mask},)


class SetLatentNoiseMask(Node):
    """Restricts sampling of this latent to the mask; outside it the latent is kept."""

    display_name = "Set Latent Noise Mask"
    comfy_function = "set_mask"
    category = "latent/inpaint"
    inputs = (Socket("samples", "LATENT"), Socket("mask", "MASK"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, mask):
        if not isinstance(mask, torch.Tensor) or mask.ndim < 2:
            raise ValueError("mask must be a MASK tensor [B, H, W] or [H, W]")
        out = dict(samples)
        out["noise_mask"] = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
        return (out,)


class InpaintModelConditioning(Node):
    """For inpainting checkpoints: puts the mask and the latent of the greyed-out image into both
    conditionings, and returns the latent of the untouched image (with the mask as noise mask
    unless noise_mask is off)."""

    comfy_function = "encode"
    category = "conditioning/inpaint"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
              Socket("pixels", "IMAGE"), Socket("mask", "MASK"),
              Boolean("noise_mask", True, tooltip="Add a noise mask to the latent so sampling will only happen "
                      "within the mask. Might improve results or completely break things depending on the model."))
    outputs = (Output("CONDITIONING", name="positive"), Output("CONDITIONING", name="negative"),
               Output("LATENT", name="latent"))

    def run(self, ctx, positive, negative, pixels, vae, mask, noise_mask=True):
        _require_image(pixels)
        cropped, mask = crop_pixels_and_mask(pixels, mask_to_pixels(mask, pixels))
        concat_latent = vae.encode(grey_out(cropped, mask))
        latent = {"samples": vae.encode(pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        extras = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return set_values(positive, extras, "positive"), set_values(negative, extras, "negative"), latent


class ImagePadForOutpaint(Node):
    """Pads the image with neutral grey; the mask is 1 over the padding and fades into the image
    over `feathering` pixels from the padded edges."""

    display_name = "Pad Image for Outpainting"
    comfy_function = "expand_image"
    category = "image"
    inputs = (Socket("image", "IMAGE"),
              Int("left", 0, min=0, max=MAX_RESOLUTION, step=8), Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("right", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1))
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx, image, left, top, right, bottom, feathering):
        _require_image(image, "image")
        for name, value in (("left", left), ("top", top), ("right", right), ("bottom", bottom),
                            ("feathering", feathering)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        b, h, w, c = image.shape
        padded = torch.full((b, h + top + bottom, w + left + right, c), NEUTRAL_GREY, dtype=torch.float32)
        padded[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        mask[top:top + h, left:left + w] = outpaint_feather(h, w, left, top, right, bottom, feathering)
        return padded, mask.unsqueeze(0)


NODES = [VAEEncodeForInpaint, SetLatentNoiseMask, InpaintModelConditioning, ImagePadForOutpaint]
