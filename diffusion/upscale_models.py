"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, ...) through spandrel, which
detects the architecture and its hyperparameters from the weights, as ComfyUI does.

Files are read without running code: safetensors directly, pickles (.pth, .pt, .ckpt, .bin) only
through torch's weights-only unpickler. Running a model tiles the image as ComfyUI does (512-pixel
tiles, 32 pixels of overlap, halved on running out of device memory down to 128).
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from diffusion.checkpoint import CheckpointError, read_state_dict, sniff_format
from diffusion.tiling import tiled_scale

TILE, OVERLAP, SMALLEST_TILE = 512, 32, 128
# Swin-style models saved from a DataParallel wrapper: ComfyUI strips "module." when it sees this.
DATAPARALLEL_SWIN_KEY = "module.layers.0.residual_group.blocks.0.norm1.weight"


def read_weights(path: str | Path) -> dict[str, Any]:
    """The state dict in a model file, unwrapped as ComfyUI's loader does ("state_dict", or a
    single entry holding a dict); nested dicts (spandrel looks for "params_ema" and the like) stay."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "safetensors" or path.suffix.lower() in (".safetensors", ".sft"):
        return read_state_dict(path)  # also refuses a pickle renamed to .safetensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "zip")
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(path, f"refused: the pickle needs more than plain tensors ({first})") from None
    except Exception as exc:
        raise CheckpointError(path, f"damaged {fmt} file: {type(exc).__name__}: {exc}"[:500]) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    if "state_dict" in obj:
        obj = obj["state_dict"]
    elif len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
        obj = next(iter(obj.values()))
    return dict(obj)


def load_upscale_model(path: str | Path):
    """A spandrel ImageModelDescriptor (callable on [1, C, H, W] in 0..1; `.scale`, `.model`) in
    eval mode on the CPU."""
    try:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    except ImportError as exc:
        raise ImportError(f"upscale models are read by spandrel, which could not be imported ({exc}); install it "
                          "with the same torch version pinned, e.g. pip install spandrel torch==<your version>") from exc

    state_dict = read_weights(path)
    if DATAPARALLEL_SWIN_KEY in state_dict:
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    try:
        model = ModelLoader().load_from_state_dict(state_dict).eval()
    except UnsupportedModelError:
        raise CheckpointError(path, "not an upscale model architecture spandrel knows") from None
    if not isinstance(model, ImageModelDescriptor):
        raise CheckpointError(path, f"a {type(model).__name__} model; an upscaler must be a single-image model")
    return model


def upscale_image(model, image: torch.Tensor, device: torch.device | str = "cpu",
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """IMAGE [B, H, W, C] through the model in overlapping tiles, clamped to 0..1, on the CPU."""
    pixels = image.movedim(-1, -3).to(device)
    tile = TILE
    model.to(device)
    try:
        while True:
            try:
                out = tiled_scale(pixels, lambda part: model(part), (tile, tile), OVERLAP, model.scale,
                                  getattr(model, "output_channels", 3), progress)
                break
            except torch.OutOfMemoryError:
                tile //= 2
                if tile < SMALLEST_TILE:
                    raise
    finally:
        model.to("cpu")
    return torch.clamp(out.movedim(-3, -1), min=0, max=1.0)
