"""ComfyUI's `comfy.ldm.modules.attention`: the attention functions and the transformer blocks of
our UNet. `optimized_attention(q, k, v, heads, mask=None, ...)` takes and returns
[batch, tokens, heads * dim_head] (or head-split tensors with skip_reshape / skip_output_reshape);
attention replacement patches call it. A plugin that assigns a new `optimized_attention` here
changes the attention every CrossAttention of the UNet computes."""
from __future__ import annotations

from typing import Any, Callable

import torch

from diffusion.attention import (BasicTransformerBlock, CrossAttention, FeedForward, GEGLU, SpatialTransformer,
                                 attention_basic, attention_pytorch, attention_sub_quad, optimized_attention,
                                 optimized_attention_masked)

# No xformers here, and split attention gives the sub-quadratic attention's numbers on whole keys.
attention_split = attention_sub_quad
attention_xformers = attention_pytorch

REGISTERED_ATTENTION_FUNCTIONS: dict[str, Callable] = {"pytorch": attention_pytorch, "basic": attention_basic,
                                                       "sub_quad": attention_sub_quad}


def register_attention_function(name: str, func: Callable) -> None:
    REGISTERED_ATTENTION_FUNCTIONS.setdefault(name, func)


def get_attention_function(name: str, default: Any = ...) -> Callable | None:
    if name == "optimized":
        return optimized_attention
    if name in REGISTERED_ATTENTION_FUNCTIONS:
        return REGISTERED_ATTENTION_FUNCTIONS[name]
    if default is ...:
        raise KeyError(f"attention function {name!r} is not registered")
    return default


def optimized_attention_for_device(device, mask=False, small_input=False) -> Callable:
    """ComfyUI's choice: for small inputs (text encoders) basic attention on the CPU and SDPA
    elsewhere; on the CPU the sub-quadratic attention; otherwise what optimized_attention is now."""
    on_cpu = torch.device(device).type == "cpu"
    if small_input:
        return attention_basic if on_cpu else attention_pytorch
    if on_cpu:
        return attention_sub_quad
    return optimized_attention_masked if mask else optimized_attention


def exists(val) -> bool:
    return val is not None


def default(val, d):
    return val if val is not None else d


__all__ = ["BasicTransformerBlock", "CrossAttention", "FeedForward", "GEGLU", "SpatialTransformer",
           "attention_basic", "attention_pytorch", "attention_split", "attention_sub_quad", "attention_xformers",
           "default", "exists", "get_attention_function", "optimized_attention", "optimized_attention_for_device",
           "optimized_attention_masked", "register_attention_function"]
