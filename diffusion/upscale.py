"""Resizing of image and latent batches, with ComfyUI's methods and centre-crop rule.

Tensors are channel-first [B, C, H, W]. "bislerp" interpolates each pixel's channel vector
spherically (direction by slerp, length linearly), which keeps latent statistics better than
plain bilinear when upscaling latents.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Trim the longer side equally on both ends so the aspect ratio becomes width:height."""
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos filter, image by image, through 8-bit as Pillow requires."""
    out = []
    # 8-bit as ComfyUI makes it: uint8(clip(255 * x)), truncating (nodes.image.to_uint8)
    for image in samples.movedim(1, -1).float().mul(255).nan_to_num(0.0).clamp(0, 255).to(torch.uint8).cpu():
        channels = image.shape[-1]
        pil = Image.fromarray(image.squeeze(-1).numpy() if channels == 1 else image.numpy())
        resized = torch.from_numpy(np.array(pil.resize((width, height), Image.LANCZOS)))
        out.append(resized.reshape(height, width, channels))
    return torch.stack(out).to(samples.device, samples.dtype).div(255).movedim(-1, 1)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows of a and b (shape [N, C]) by t ([N, 1])."""
    a_len = a.norm(dim=-1, keepdim=True)
    b_len = b.norm(dim=-1, keepdim=True)
    a_dir = torch.where(a_len == 0, torch.zeros_like(a), a / a_len)
    b_dir = torch.where(b_len == 0, torch.zeros_like(b), b / b_len)
    cos = (a_dir * b_dir).sum(-1)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    w = t.squeeze(1)
    out = (torch.sin((1 - w) * angle) / sin).unsqueeze(1) * a_dir + (torch.sin(w * angle) / sin).unsqueeze(1) * b_dir
    out = out * (a_len * (1 - t) + b_len * t)
    same = cos > 1 - 1e-5  # parallel: slerp is undefined, the rows are already equal in direction
    opposite = cos < 1e-5 - 1  # antiparallel: fall back to the straight line
    out[same] = a[same]
    out[opposite] = (a * (1 - t) + b * t)[opposite]
    return out


def _bilinear_taps(old: int, new: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each new position: the fraction between taps, the left tap and the right tap indices."""
    grid = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)
    pos = F.interpolate(grid, size=(1, new), mode="bilinear")
    right = grid + 1
    right[..., -1] -= 1  # the last tap has no right neighbour
    right = F.interpolate(right, size=(1, new), mode="bilinear")
    return (pos - pos.floor()).flatten(), pos.flatten().long(), right.flatten().long()


def _slerp_along(samples: torch.Tensor, new: int, dim: int) -> torch.Tensor:
    n, c = samples.shape[:2]
    ratio, left, right = _bilinear_taps(samples.shape[dim], new, samples.device)
    view = [1, 1, 1, 1]
    view[dim] = new
    target = list(samples.shape)
    target[dim] = new
    left = left.reshape(view).expand(target)
    right = right.reshape(view).expand(target)
    t = ratio.reshape(view).expand([n, 1] + target[2:])
    a = samples.gather(dim, left).movedim(1, -1).reshape(-1, c)
    b = samples.gather(dim, right).movedim(1, -1).reshape(-1, c)
    mixed = _slerp(a, b, t.movedim(1, -1).reshape(-1, 1))
    return mixed.reshape([n] + target[2:] + [c]).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Separable spherical-linear resize: along width first, then height."""
    dtype = samples.dtype
    out = _slerp_along(samples.float(), width, 3)
    return _slerp_along(out, height, 2).to(dtype)
