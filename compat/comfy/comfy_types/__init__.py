"""`comfy.comfy_types`: ComfyUI's type names for node authors (IO, InputTypeDict, ComfyNodeABC, ...)."""
from typing import Callable, List, Optional, Protocol, TypedDict

import torch

from .node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator, InputTypeDict


class UnetApplyFunction(Protocol):
    """The signature of a model's apply_model (what a unet function wrapper calls)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor: ...


class UnetApplyConds(TypedDict):
    c_concat: Optional[torch.Tensor]
    c_crossattn: Optional[torch.Tensor]
    control: Optional[torch.Tensor]
    transformer_options: Optional[dict]


class UnetParams(TypedDict):
    input: torch.Tensor  # [B, C, H, W]
    timestep: torch.Tensor  # [B]
    c: UnetApplyConds
    cond_or_uncond: List[int]  # per batch chunk: 0 conditional, 1 unconditional


UnetWrapperFunction = Callable[[UnetApplyFunction, UnetParams], torch.Tensor]

__all__ = ["UnetWrapperFunction", "UnetApplyConds", "UnetParams", "UnetApplyFunction", "IO", "InputTypeDict",
           "ComfyNodeABC", "CheckLazyMixin", "FileLocator"]
