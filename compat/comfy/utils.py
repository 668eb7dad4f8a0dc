"""ComfyUI's `comfy.utils` for plugins: resizing, batch helpers, model files, progress.

The resizes are the engine's own (diffusion/upscale.py), so a plugin's common_upscale gives what
our ImageScale and LatentUpscale nodes give. Model files are always read safely: pickles only
through torch's weights-only loader.

`ProgressBar(total, node_id=None)` reports to the node that is running in this task or thread
(or to `node_id`): a `progress` event, the node's `progress_state`, and a live preview when one
is passed. Like ComfyUI it goes through the module's PROGRESS_BAR_HOOK, read when the bar is
made, so a plugin that installs its own hook with set_progress_bar_global_hook sees every update.
"""
from __future__ import annotations

import logging
import math
import struct
from typing import Any, Callable

import torch

from diffusion import tiling as _tiling
from diffusion import upscale as _upscale
from diffusion.model import repeat_to_batch_size as _repeat_batch
from diffusion.model import resize_to_batch_size
from graph.context import NodeContext, current_context

log = logging.getLogger(__name__)

ALWAYS_SAFE_LOAD = True  # pickles are never unpickled beyond tensors here
MMAP_TORCH_FILES = False
DISABLE_MMAP = False

__all__ = [
    "ALWAYS_SAFE_LOAD", "ProgressBar", "bislerp", "calculate_parameters", "common_upscale", "convert_sd_to",
    "copy_to_param", "get_attr", "lanczos", "load_torch_file", "repeat_to_batch_size", "reshape_mask",
    "resize_list_to_batch_size", "resize_to_batch_size", "safetensors_header", "save_torch_file", "set_attr",
    "set_attr_param", "set_progress_bar_enabled", "set_progress_bar_global_hook", "state_dict_key_replace",
    "state_dict_prefix_replace", "weight_dtype", "get_tiled_scale_steps", "tiled_scale", "tiled_scale_multidim",
]


# ---------------------------------------------------------------------------------------------
# model files


def load_torch_file(ckpt: str, safe_load: bool = False, device=None, return_metadata: bool = False):
    """A model file's state dict (and the safetensors metadata with return_metadata=True).

    Pickled files (.ckpt, .pt, .pth, .bin) load with weights_only=True whatever safe_load says, as
    ComfyUI does on torch 2.4+; a wrapping {"state_dict": ...} or single-entry dict is unwrapped."""
    device = torch.device("cpu") if device is None else torch.device(device)
    metadata = None
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="pt", device=device.type) as f:
            sd = {key: f.get_tensor(key) for key in f.keys()}
            metadata = f.metadata() if return_metadata else None
    else:
        loaded = torch.load(ckpt, map_location=device, weights_only=True, mmap=MMAP_TORCH_FILES or None)
        if "state_dict" in loaded:
            sd = loaded["state_dict"]
        elif len(loaded) == 1 and isinstance(next(iter(loaded.values())), dict):
            sd = next(iter(loaded.values()))
        else:
            sd = loaded
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd: dict, ckpt: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file(sd, ckpt, metadata=metadata)


def safetensors_header(safetensors_path: str, max_size: int = 100 * 1024 * 1024) -> bytes | None:
    """The JSON header of a safetensors file, or None when it claims more than max_size bytes."""
    with open(safetensors_path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        return None if length > max_size else f.read(length)


def calculate_parameters(sd: dict, prefix: str = "") -> int:
    return sum(w.nelement() for k, w in sd.items() if k.startswith(prefix))


def weight_dtype(sd: dict, prefix: str = "") -> torch.dtype | None:
    """The dtype holding the most elements among the keys under prefix."""
    counts: dict[torch.dtype, int] = {}
    for k, w in sd.items():
        if k.startswith(prefix):
            counts[w.dtype] = counts.get(w.dtype, 0) + w.numel()
    return max(counts, key=counts.get) if counts else None


def state_dict_key_replace(state_dict: dict, keys_to_replace: dict) -> dict:
    for old, new in keys_to_replace.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
    return state_dict


def state_dict_prefix_replace(state_dict: dict, replace_prefix: dict, filter_keys: bool = False) -> dict:
    """Rename keys by prefix, in place; with filter_keys, return only the renamed keys."""
    out = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old):]] = state_dict.pop(key)
    return out


def convert_sd_to(state_dict: dict, dtype: torch.dtype) -> dict:
    for k in list(state_dict):
        state_dict[k] = state_dict[k].to(dtype)
    return state_dict


# ---------------------------------------------------------------------------------------------
# attributes by dotted path


def get_attr(obj: Any, attr: str) -> Any:
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    """Set a dotted attribute and return what it held before."""
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    previous = getattr(obj, last)
    setattr(obj, last, value)
    return previous


def set_attr_param(obj: Any, attr: str, value: torch.Tensor) -> Any:
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def copy_to_param(obj: Any, attr: str, value: torch.Tensor) -> None:
    """Copy into an existing parameter in place (its storage is kept)."""
    get_attr(obj, attr).data.copy_(value)


# ---------------------------------------------------------------------------------------------
# batches, masks, resizing


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cycle or trim `dim` to batch_size."""
    if dim == 0:
        return _repeat_batch(tensor, batch_size)
    return _repeat_batch(tensor.movedim(dim, 0), batch_size).movedim(0, dim)


def resize_list_to_batch_size(items: list, batch_size: int) -> list:
    """resize_to_batch_size's index rule on a list."""
    if len(items) in (0, batch_size):
        return items
    index = resize_to_batch_size(torch.arange(len(items)), batch_size)
    return [items[int(i)] for i in index]


def reshape_mask(input_mask: torch.Tensor, output_shape) -> torch.Tensor:
    """A mask resized (bilinear; linear or trilinear for 1-D/3-D) and repeated to output_shape
    ([B, C, *spatial])."""
    dims = len(output_shape) - 2
    if dims == 2:
        input_mask = input_mask.reshape((-1, 1) + tuple(input_mask.shape[-2:]))
    elif dims == 3 and input_mask.dim() < 5:
        input_mask = input_mask.reshape((1, 1, -1) + tuple(input_mask.shape[-2:]))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
    mask = torch.nn.functional.interpolate(input_mask, size=tuple(output_shape[2:]), mode=mode)
    if mask.shape[1] < output_shape[1]:
        mask = mask.repeat((1, output_shape[1]) + (1,) * dims)[:, :output_shape[1]]
    return repeat_to_batch_size(mask, output_shape[0])


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return _upscale.bislerp(samples, width, height)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return _upscale.lanczos(samples, width, height)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize [B, C, H, W] (or [B, C, T, H, W], frame by frame) with ComfyUI's methods
    ("nearest-exact", "bilinear", "area", "bicubic", "bislerp", "lanczos") and crop rule
    ("disabled" or "center")."""
    shape = tuple(samples.shape)
    if len(shape) <= 4:
        return _upscale.upscale(samples, width, height, upscale_method, crop)
    frames = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
    out = _upscale.upscale(frames.reshape(-1, shape[1], shape[-2], shape[-1]), width, height, upscale_method, crop)
    out = out.reshape((shape[0], -1, shape[1], height, width)).movedim(2, 1)
    return out.reshape(shape[:-2] + (height, width))


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    """ComfyUI's estimate of the tiles tiled_scale runs over one image (to size a ProgressBar)."""
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def tiled_scale_multidim(samples: torch.Tensor, function: Callable, tile=(64, 64), overlap: int = 8,
                         upscale_amount=4, out_channels: int = 3, output_device="cpu", downscale: bool = False,
                         index_formulas=None, pbar=None) -> torch.Tensor:
    """function over overlapping tiles of samples [B, C, *spatial], blended as ComfyUI blends them
    (diffusion/tiling.py); pbar.update(1) after each tile. One scale for every dimension."""
    amounts = set(upscale_amount) if isinstance(upscale_amount, (tuple, list)) else {upscale_amount}
    if len(amounts) != 1 or index_formulas is not None:
        raise ValueError("tiled_scale_multidim: per-dimension scales and index_formulas are not supported")
    scale = amounts.pop()
    progress = (lambda done, total: pbar.update(1)) if pbar is not None else None
    return _tiling.tiled_scale(samples, function, tuple(tile), overlap, 1 / scale if downscale else scale,
                               out_channels, progress=progress, output_device=output_device)


def tiled_scale(samples: torch.Tensor, function: Callable, tile_x: int = 64, tile_y: int = 64, overlap: int = 8,
                upscale_amount=4, out_channels: int = 3, output_device="cpu", pbar=None) -> torch.Tensor:
    return tiled_scale_multidim(samples, function, (tile_y, tile_x), overlap=overlap, upscale_amount=upscale_amount,
                                out_channels=out_channels, output_device=output_device, pbar=pbar)


# ---------------------------------------------------------------------------------------------
# progress


def _running_context() -> NodeContext | None:
    """The context of the node that called us; from a thread a node started (which does not
    inherit it), the node that started last, as ComfyUI falls back to its last node id."""
    ctx = current_context.get()
    if ctx is not None:
        return ctx
    from app import compat

    return compat.bound().executor.active if compat.is_bound() else None


def _report_progress(value: float, total: float, preview_image: Any = None, prompt_id: str | None = None,
                     node_id: str | None = None) -> None:
    ctx = _running_context()
    if ctx is not None:  # outside any prompt there is nobody to tell
        ctx.progress(value, total, preview_image, node_id=node_id)


PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK: Callable[..., None] | None = _report_progress


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(function: Callable[..., None] | None) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total: float, node_id: str | None = None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)
