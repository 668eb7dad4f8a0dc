"""ComfyUI's `node_helpers` for plugins: conditioning edits, tolerant image opening, hashing."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
from PIL import ImageFile, UnidentifiedImageError

from nodes.conditioning_tools import set_values

_HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


def conditioning_set_values(conditioning: list, values: dict = {}, append: bool = False) -> list:  # noqa: B006
    """A copy of conditioning whose entries carry values in their extras dicts; with append,
    a value is added to the one already there (lists extend, tensors add). The input's dicts are
    left untouched."""
    if not append:
        return set_values(conditioning, values)
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        for key, value in values.items():
            old = extras.get(key)
            extras[key] = value if old is None else old + value
        out.append([cond, extras])
    return out


def pillow(fn: Callable, arg: Any) -> Any:
    """fn(arg) for a PIL operation, retried with truncated images allowed when PIL refuses one."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable:
    """The hashlib constructor named by --default-hashing-function (sha256 by default)."""
    from comfy.cli_args import args
    return _HASHES[args.default_hashing_function]


def string_to_torch_dtype(string: str) -> torch.dtype | None:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make two [.., C] images agree on channels: source loses extra channels, or destination
    gains an opaque alpha."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = torch.nn.functional.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source
