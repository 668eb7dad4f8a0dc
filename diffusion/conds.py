"""Model inputs built from one conditioning entry, and how entries share a UNet call.

A conditioning entry becomes a dict of these objects ("model_conds": c_crossattn, y, c_concat,
...). Per sampling step each is cut to the entry's area and repeated to the batch
(`process_cond`); entries whose inputs agree (`can_concat`) run in one UNet call and are joined
with `concat`. The classes and their rules are ComfyUI's (comfy.conds), since plugins put them
into conditioning themselves.
"""
from __future__ import annotations

import math

import torch


def repeat_to_batch_size(t: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """`t` cut or tiled along `dim` to `batch_size` entries."""
    size = t.shape[dim]
    if size > batch_size:
        return t.narrow(dim, 0, batch_size)
    if size < batch_size:
        reps = [1] * t.ndim
        reps[dim] = math.ceil(batch_size / size)
        return t.repeat(reps).narrow(dim, 0, batch_size)
    return t


class CONDRegular:
    """A tensor with a batch axis, repeated to the batch of the call."""

    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other) -> bool:
        return self.cond.shape == other.cond.shape and self.cond.device == other.cond.device

    def concat(self, others):
        return torch.cat([self.cond] + [x.cond for x in others])

    def size(self):
        return list(self.cond.size())


class CONDNoiseShape(CONDRegular):
    """A tensor laid out like the latent (inpainting channels): cut to the entry's area too."""

    def process_cond(self, batch_size, area=None, **kwargs):
        data = self.cond
        if area is not None:
            dims = len(area) // 2
            for i in range(dims):
                data = data.narrow(i + 2, area[i + dims], area[i])
        return self._copy_with(repeat_to_batch_size(data, batch_size))


class CONDCrossAttn(CONDRegular):
    """Cross-attention context [B, T, D]. Contexts of different token counts still share a call:
    each is repeated along T to the least common multiple (attention over a repeated context is
    unchanged), up to 4x padding."""

    def can_concat(self, other) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return self.cond.device == other.cond.device

    def concat(self, others):
        conds = [self.cond] + [x.cond for x in others]
        length = math.lcm(*[c.shape[1] for c in conds])
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


class CONDConstant(CONDRegular):
    """A value shared by the whole call (not batched); entries share a call only when equal."""

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(self.cond)

    def can_concat(self, other) -> bool:
        return self.cond == other.cond

    def concat(self, others):
        return self.cond

    def size(self):
        return [1]


class CONDList(CONDRegular):
    """A list of batched tensors, each repeated to the batch and joined position by position."""

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with([repeat_to_batch_size(c, batch_size) for c in self.cond])

    def can_concat(self, other) -> bool:
        return len(self.cond) == len(other.cond) and all(a.shape == b.shape for a, b in zip(self.cond, other.cond))

    def concat(self, others):
        return [torch.cat([self.cond[i]] + [x.cond[i] for x in others]) for i in range(len(self.cond))]

    def size(self):
        total, width = 0, 1
        for c in self.cond:
            total += math.prod(c.size())
            if c.ndim > 1:
                width = c.size()[1]
        return [1, width, total // width]
