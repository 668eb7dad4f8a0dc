"""Weight patches (LoRA and the like) carried by MODEL / CLIP handles and applied per call.

A handle holds a tuple of `WeightPatch`es; the networks in the model cache are never modified.
For the duration of one sampling or encoding call, `applied(module, patches)` swaps each
patched parameter for a new tensor W' = W + sum_i strength_i * delta_i (float32 arithmetic,
patches in the order they were added, cast back to W's dtype) and afterwards puts the original
Parameter objects back. Only the affected tensors are copied, only while the call runs, and the
originals are untouched, so the unpatched handle gives bit-identical results afterwards.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch
from torch import nn

_ACTIVE = "_latentgraph_active_patches"


class Delta(Protocol):
    def add_to(self, weight: torch.Tensor, strength: float) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class WeightPatch:
    key: str  # parameter name in the patched module's named_parameters()
    delta: Delta
    strength: float = 1.0


def patches_of(handle) -> tuple[WeightPatch, ...]:
    """The patches a MODEL handle carries (none for a plain DiffusionModel)."""
    return tuple(getattr(handle, "weight_patches", ()) or ())


def grouped(patches: Sequence[WeightPatch]) -> dict[str, list[WeightPatch]]:
    """Patches per parameter, in the order they were added; zero strengths dropped (W + 0 * d is W)."""
    out: dict[str, list[WeightPatch]] = {}
    for p in patches:
        if p.strength != 0:
            out.setdefault(p.key, []).append(p)
    return out


def patched_weight(weight: torch.Tensor, patches: Sequence[WeightPatch]) -> torch.Tensor:
    """W + the patches' deltas, summed in float32 on W's device, returned in W's dtype and layout."""
    work = weight.detach().to(dtype=torch.float32, copy=True)
    for p in patches:
        p.delta.add_to(work, p.strength)
    return work.to(weight.dtype)


def _owner(module: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, name = key.rpartition(".")
    try:
        owner = module.get_submodule(path) if path else module
    except AttributeError:
        owner = None
    if owner is None or not isinstance(owner._parameters.get(name), nn.Parameter):
        raise KeyError(f"weight patch for {key!r}: the {type(module).__name__} has no such parameter")
    return owner, name


@contextlib.contextmanager
def applied(module: nn.Module, patches: Sequence[WeightPatch]) -> Iterator[nn.Module]:
    """Run a block with `patches` applied to `module`'s parameters; restored however it exits.

    Nesting with the same patches is a no-op (already applied); nesting with different ones is an
    error, since the inner set would otherwise be applied on top of the outer one.
    """
    patches = tuple(patches)
    by_key = grouped(patches)
    active = getattr(module, _ACTIVE, None)
    if not by_key or active == patches:
        yield module
        return
    if active is not None:
        raise RuntimeError("the model's weights are already patched by another LoRA set in this call")
    originals: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        # Normal (not inference-mode) tensors: the UNet re-lays conv weights out in place later.
        with torch.inference_mode(False), torch.no_grad():
            for key, items in by_key.items():
                owner, name = _owner(module, key)
                original = owner._parameters[name]
                replacement = nn.Parameter(patched_weight(original, items), requires_grad=False)
                originals.append((owner, name, original))
                owner._parameters[name] = replacement
        object.__setattr__(module, _ACTIVE, patches)
        yield module
    finally:
        for owner, name, original in reversed(originals):
            owner._parameters[name] = original
        if getattr(module, _ACTIVE, None) is patches:
            object.__delattr__(module, _ACTIVE)
