"""Weight patches: the formats a MODEL or CLIP carries in `ModelPatcher.patches` and the maths that
turns a weight plus its patches into the patched weight.

A patch list entry is ComfyUI's tuple (strength_patch, value, strength_model, offset, function):
the weight is first scaled by strength_model, then `value` adds strength_patch times its delta
(after `function`) to the weight, or to the slice `offset` = (dim, start, length) of it. `value` is
one of
* an adapter object (`LoRAAdapter`, `LoHaAdapter`, `LoKrAdapter`, `GLoRAAdapter`, `OFTAdapter`),
  what LoRA files load into; the legacy tuples ("lora", weights), ("loha", ...), ("lokr", ...),
  ("glora", ...), ("oft", ...) of older plugins mean the same;
* ("diff", (tensor,)) or a bare (tensor,): add the tensor (model merging, w_norm/diff keys);
* ("set", (tensor,)): replace the weight;
* ("model_as_lora", (tensor,)): add the tensor minus the original weight;
* a list [(weight, convert_func), patch, ...]: a weight patched in turn by its own patches and
  then used as a "diff" (ComfyUI's nested form from get_key_patches).

Deltas are computed in `intermediate_dtype` (float32) on the weight's device; the caller works on
a float32 copy of the weight and casts back once at the end.
"""
from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def cast_to_device(tensor: torch.Tensor, device, dtype, copy: bool = False) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype, copy=copy)


def pad_tensor_to_shape(tensor: torch.Tensor, new_shape) -> torch.Tensor:
    """`tensor` zero-padded at the end of each axis to `new_shape` (no axis may shrink)."""
    if len(new_shape) != tensor.ndim:
        raise ValueError("the new shape must have the same number of dimensions as the tensor")
    if any(n < o for n, o in zip(new_shape, tensor.shape)):
        raise ValueError("the new shape must be at least the tensor's size on every axis")
    out = torch.zeros(list(new_shape), dtype=tensor.dtype, device=tensor.device)
    out[tuple(slice(0, d) for d in tensor.shape)] = tensor
    return out


def weight_decompose(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function):
    """DoRA (Liu et al. 2024): the LoRA-updated weight renormalised per output (or input) channel to
    the magnitudes in `dora_scale`; strength interpolates between the original and that weight."""
    dora_scale = cast_to_device(dora_scale, weight.device, intermediate_dtype)
    lora_diff = lora_diff * alpha
    updated = weight + function(lora_diff).type(weight.dtype)
    if dora_scale.shape[0] == updated.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight.shape[0], *[1] * (weight.ndim - 1))
    else:
        t = updated.transpose(0, 1)
        norm = t.reshape(t.shape[0], -1).norm(dim=1, keepdim=True).reshape(t.shape[0], *[1] * (t.ndim - 1))
        norm = norm.transpose(0, 1)
    norm = norm + torch.finfo(weight.dtype).eps
    updated *= (dora_scale / norm).type(weight.dtype)
    if strength != 1.0:
        weight += strength * (updated - weight)
    else:
        weight[:] = updated
    return weight


class WeightAdapter:
    """One module's update as a LoRA-family file stores it; `weights` keeps ComfyUI's tuple order."""

    name = "base"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = set(loaded_keys or ())
        self.weights = tuple(weights)

    def alpha_scale(self, rank: int | None) -> float:
        alpha = self.weights[self._alpha_index]
        return 1.0 if alpha is None or not rank else float(alpha) / rank

    def delta(self, weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        """(update before strength, in `dtype` and reshaped to weight, alpha scale)."""
        raise NotImplementedError

    def dora_scale(self):
        return None

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        try:
            diff, alpha = self.delta(weight, intermediate_dtype)
            dora = self.dora_scale()
            if dora is not None:
                return weight_decompose(dora, weight, diff, alpha, strength, intermediate_dtype, function)
            weight += function(((strength * alpha) * diff).type(weight.dtype))
        except Exception as exc:  # ComfyUI logs a bad patch and keeps the weight as it was
            log.error("ERROR %s %s %s", self.name, key, exc)
        return weight

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(str(list(w.shape)) for w in self.weights if hasattr(w, 'shape'))})"


class LoRAAdapter(WeightAdapter):
    """weights = (up [out, r], down [r, in(, kh, kw)], alpha, mid or None, dora_scale, reshape);
    delta = alpha / r * up @ down (a Tucker `mid` [r, r, kh, kw] composed between them)."""

    name = "lora"
    _alpha_index = 2

    def dora_scale(self):
        return self.weights[4]

    def delta(self, weight, dtype):
        up, down, _alpha, mid, _dora, reshape = self.weights
        up = cast_to_device(up, weight.device, dtype)
        down = cast_to_device(down, weight.device, dtype)
        rank = down.shape[0]
        if mid is not None:
            mid = cast_to_device(mid, weight.device, dtype)
            # The 1x1 down [r, in] then the spatial mid [r, r, kh, kw] is one kernel [r, in, kh, kw].
            down = torch.einsum("ijhw,jc->ichw", mid, down.flatten(start_dim=1))
        shape = weight.shape if reshape is None else reshape
        return (up.flatten(start_dim=1) @ down.flatten(start_dim=1)).reshape(shape), self.alpha_scale(rank)

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        reshape = self.weights[5]
        if reshape is not None:
            weight = pad_tensor_to_shape(weight, reshape)
        return super().calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype,
                                        original_weight)


def _tucker(t, wa, wb, device, dtype):
    """A CP/Tucker factor: core t [r, r, kh, kw] with wa [r, out] and wb [r, in] -> [out, in, kh, kw]."""
    return torch.einsum("ijkl,jr,ip->prkl", cast_to_device(t, device, dtype), cast_to_device(wb, device, dtype),
                        cast_to_device(wa, device, dtype))


class LoHaAdapter(WeightAdapter):
    """weights = (w1a, w1b, alpha, w2a, w2b, t1, t2, dora_scale); delta = (w1a @ w1b) * (w2a @ w2b),
    the Hadamard product of two low-rank products (Tucker cores t1/t2 for convolutions)."""

    name = "loha"
    _alpha_index = 2

    def dora_scale(self):
        return self.weights[7]

    def delta(self, weight, dtype):
        w1a, w1b, _alpha, w2a, w2b, t1, t2, _dora = self.weights
        dev = weight.device
        if t1 is not None:
            m1 = _tucker(t1, w1a, w1b, dev, dtype)
            m2 = _tucker(t2, w2a, w2b, dev, dtype)
        else:
            m1 = cast_to_device(w1a, dev, dtype) @ cast_to_device(w1b, dev, dtype)
            m2 = cast_to_device(w2a, dev, dtype) @ cast_to_device(w2b, dev, dtype)
        return (m1 * m2).reshape(weight.shape), self.alpha_scale(w1b.shape[0])


class LoKrAdapter(WeightAdapter):
    """weights = (w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, dora_scale); delta = kron(w1, w2), each
    factor stored whole or as a low-rank product (alpha scales by the rank of a factored one)."""

    name = "lokr"
    _alpha_index = 2

    def dora_scale(self):
        return self.weights[8]

    def delta(self, weight, dtype):
        w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, _dora = self.weights
        dev = weight.device
        rank = None
        if w1 is None:
            rank = w1_b.shape[0]
            w1 = cast_to_device(w1_a, dev, dtype) @ cast_to_device(w1_b, dev, dtype)
        else:
            w1 = cast_to_device(w1, dev, dtype)
        if w2 is None:
            rank = w2_b.shape[0]
            if t2 is None:
                w2 = cast_to_device(w2_a, dev, dtype) @ cast_to_device(w2_b, dev, dtype)
            else:
                w2 = _tucker(t2, w2_a, w2_b, dev, dtype)
        else:
            w2 = cast_to_device(w2, dev, dtype)
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        scale = float(alpha) / rank if alpha is not None and rank is not None else 1.0
        return torch.kron(w1, w2).reshape(weight.shape), scale


class GLoRAAdapter(WeightAdapter):
    """weights = (a1, a2, b1, b2, alpha, dora_scale); delta = W a1 a2 + b1 b2 (generalised LoRA);
    the older LyCORIS layout stores the factors transposed: delta = b2 b1 + W a2 a1."""

    name = "glora"
    _alpha_index = 4

    def dora_scale(self):
        return self.weights[5]

    def delta(self, weight, dtype):
        v = self.weights
        old = v[3].shape[1] == v[2].shape[0] == v[0].shape[0] == v[1].shape[1]
        rank = v[0].shape[0] if old else None
        if v[3].shape[0] == v[2].shape[1] == v[0].shape[1] == v[1].shape[0]:
            if not (old and v[1].shape[0] == weight.shape[0] and weight.shape[0] == weight.shape[1]):
                old, rank = False, v[1].shape[0]
        a1, a2, b1, b2 = (cast_to_device(t.flatten(start_dim=1), weight.device, dtype) for t in v[:4])
        w = weight.to(dtype)
        if old:
            diff = (b2 @ b1 + (w.flatten(start_dim=1) @ a2) @ a1).reshape(weight.shape)
        else:
            if weight.ndim > 2:
                diff = torch.einsum("oi...,ij->oj...", torch.einsum("oi...,ij->oj...", w, a1), a2).reshape(weight.shape)
            else:
                diff = ((w @ a1) @ a2).reshape(weight.shape)
            diff = diff + (b1 @ b2).reshape(weight.shape)
        return diff, self.alpha_scale(rank)


def oft_rotation(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """OFT's block rotations R = (I + Q)(I - Q)^-1 [k, b, b] from the stored blocks, Q = B - B^T
    (skew-symmetric, so R is orthogonal); a constraint > 0 caps Q's Frobenius norm at it."""
    eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=torch.float32)
    q = (blocks - blocks.transpose(1, 2)).float()
    if constraint > 0:
        norm = torch.linalg.vector_norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    return (eye + q) @ torch.linalg.inv(eye - q)


def oft_rotate(rotation: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight with each block of `b` output rows mixed by its rotation:
    W'[k*b + m] = sum_n R[k, n, m] W[k*b + n]."""
    k, b, _ = rotation.shape
    blocks = weight.reshape(k, b, *weight.shape[1:])
    return torch.einsum("knm,kn...->km...", rotation, blocks).reshape(weight.shape)


class OFTAdapter(WeightAdapter):
    """weights = (blocks [k, b, b], rescale, alpha, dora_scale); the output rows of W, in k blocks of
    b, are rotated by `oft_rotation` (alpha is the norm constraint, not a scale). As ComfyUI applies
    it, strength enters twice: W + strength^2 (R - I) W; `rescale` is read but not applied."""

    name = "oft"
    _alpha_index = 2

    def dora_scale(self):
        return self.weights[3]

    def delta(self, weight, dtype):
        blocks, _rescale, alpha, _dora = self.weights
        rotation = oft_rotation(cast_to_device(blocks, weight.device, dtype), float(alpha or 0))
        eye = torch.eye(rotation.shape[-1], device=rotation.device, dtype=rotation.dtype)
        return oft_rotate((rotation - eye).to(dtype), weight.to(dtype)), 1.0

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        try:
            diff = strength * self.delta(weight, intermediate_dtype)[0]
            dora = self.dora_scale()
            if dora is not None:
                return weight_decompose(dora, weight, diff, float(self.weights[2] or 0), strength,
                                        intermediate_dtype, function)
            weight += function((strength * diff).type(weight.dtype))
        except Exception as exc:
            log.error("ERROR %s %s %s", self.name, key, exc)
        return weight


ADAPTERS: dict[str, type[WeightAdapter]] = {
    cls.name: cls for cls in (LoRAAdapter, LoHaAdapter, LoKrAdapter, GLoRAAdapter, OFTAdapter)}


def _identity(x):
    return x


def calculate_weight(patches, weight: torch.Tensor, key: str, intermediate_dtype=torch.float32,
                     original_weights=None) -> torch.Tensor:
    """`weight` with `patches` (ModelPatcher.patches[key]) applied in order; `weight` is a working
    copy (normally float32) and is modified in place where the formats allow."""
    for strength, value, strength_model, offset, function in patches:
        function = function or _identity
        whole = None
        if offset is not None:
            whole, weight = weight, weight.narrow(offset[0], offset[1], offset[2])
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(value, list):
            base, convert = value[0]
            nested = convert(cast_to_device(base, weight.device, intermediate_dtype, copy=True), inplace=True)
            value = (calculate_weight(value[1:], nested, key, intermediate_dtype),)
        if isinstance(value, tuple) and len(value) == 2 and value[0] in ADAPTERS:
            value = ADAPTERS[value[0]](set(), value[1])
        if isinstance(value, WeightAdapter) or callable(getattr(value, "calculate_weight", None)):
            out = value.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype,
                                         original_weights)
            if out is not None and whole is None:
                weight = out
            elif whole is not None:
                weight = whole
            continue
        kind, args = ("diff", value) if len(value) == 1 else (value[0], value[1])
        if kind == "diff":
            diff = args[0]
            if len(args) > 1 and args[1].get("pad_weight") and diff.shape != weight.shape:
                weight = pad_tensor_to_shape(weight, diff.shape)
            if strength != 0.0:
                if diff.shape != weight.shape:
                    log.warning("weight patch for %s not applied: shape %s does not fit the weight's %s",
                                key, list(diff.shape), list(weight.shape))
                else:
                    weight += function(strength * cast_to_device(diff, weight.device, weight.dtype))
        elif kind == "set":
            weight.copy_(args[0])
        elif kind == "model_as_lora":
            original = original_weights[key][0][0]
            diff = (cast_to_device(args[0], weight.device, intermediate_dtype)
                    - cast_to_device(original, weight.device, intermediate_dtype))
            weight += function(strength * diff.to(weight.dtype))
        else:
            log.warning("weight patch type %r for %s is not recognised", kind, key)
        if whole is not None:
            weight = whole
    return weight


def patch_fits(value, shape) -> bool:
    """Whether an adapter's delta has as many elements as a weight of `shape` (for reporting
    LoRA modules that cannot apply, before anything is patched)."""
    if isinstance(value, LoRAAdapter):
        up, down, _a, mid, _d, reshape = value.weights
        if reshape is not None:
            return True
        inner = down.shape[1:] if mid is None else (down.shape[1], *mid.shape[2:])
        return up.shape[0] == shape[0] and up.shape[0] * math.prod(inner) == math.prod(shape)
    return True


__all__ = ["ADAPTERS", "GLoRAAdapter", "LoHaAdapter", "LoKrAdapter", "LoRAAdapter", "OFTAdapter", "WeightAdapter",
           "calculate_weight", "cast_to_device", "oft_rotate", "oft_rotation", "pad_tensor_to_shape", "patch_fits",
           "weight_decompose"]
