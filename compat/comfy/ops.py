"""ComfyUI's `comfy.ops`: layer classes whose weights may be cast to the input's device and dtype
per call (with weight functions such as low-VRAM patches applied), and skip the random weight
init that loading would overwrite. `disable_weight_init` layers compute as torch's unless a cast
is needed; `manual_cast` layers always cast."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cast_to(weight, dtype=None, device=None, non_blocking=False, copy=False, stream=None):
    return weight.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=copy)


def cast_to_input(weight, input, non_blocking=False, copy=True):
    return cast_to(weight, input.dtype, input.device, non_blocking=non_blocking, copy=copy)


def cast_bias_weight(s, input=None, dtype=None, device=None, bias_dtype=None):
    """(weight, bias) of layer `s` on the input's device and dtype, weight_function / bias_function
    applied (the low-VRAM patches of diffusion.model_patcher)."""
    if input is not None:
        dtype = dtype or input.dtype
        bias_dtype = bias_dtype or dtype
        device = device or input.device
    bias = None
    if s.bias is not None:
        bias = cast_to(s.bias, bias_dtype, device)
        for f in getattr(s, "bias_function", []):
            bias = f(bias)
    weight = cast_to(s.weight, dtype, device)
    for f in getattr(s, "weight_function", []):
        weight = f(weight)
    return weight, bias


def uncast_bias_weight(s, weight, bias, offload_stream=None):
    return None


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []

    def _casts(self) -> bool:
        return self.comfy_cast_weights or bool(self.weight_function) or bool(self.bias_function)


def _layer(base: type, functional):
    class Layer(base, CastWeightBiasOp):
        def reset_parameters(self):
            return None

        def forward(self, *args, **kwargs):
            if self._casts():
                weight, bias = cast_bias_weight(self, args[0])
                return functional(self, args[0], weight, bias, *args[1:], **kwargs)
            return super().forward(*args, **kwargs)

    Layer.__name__ = Layer.__qualname__ = base.__name__
    return Layer


class disable_weight_init:
    Linear = _layer(torch.nn.Linear, lambda s, x, w, b: F.linear(x, w, b))
    Conv1d = _layer(torch.nn.Conv1d, lambda s, x, w, b: s._conv_forward(x, w, b))
    Conv2d = _layer(torch.nn.Conv2d, lambda s, x, w, b: s._conv_forward(x, w, b))
    Conv3d = _layer(torch.nn.Conv3d, lambda s, x, w, b: s._conv_forward(x, w, b))
    GroupNorm = _layer(torch.nn.GroupNorm, lambda s, x, w, b: F.group_norm(x, s.num_groups, w, b, s.eps))
    LayerNorm = _layer(torch.nn.LayerNorm, lambda s, x, w, b: F.layer_norm(x, s.normalized_shape, w, b, s.eps))
    ConvTranspose2d = _layer(torch.nn.ConvTranspose2d,
                             lambda s, x, w, b, output_size=None: F.conv_transpose2d(
                                 x, w, b, s.stride, s._output_padding(x, output_size, s.stride, s.padding,
                                                                      s.kernel_size, 2, s.dilation),
                                 s.groups, s.dilation))
    Embedding = _layer(torch.nn.Embedding, lambda s, x, w, b, out_dtype=None: F.embedding(
        x, w, s.padding_idx, s.max_norm, s.norm_type, s.scale_grad_by_freq, s.sparse))

    @classmethod
    def conv_nd(cls, dims, *args, **kwargs):
        return {1: cls.Conv1d, 2: cls.Conv2d, 3: cls.Conv3d}[dims](*args, **kwargs)


class manual_cast(disable_weight_init):
    class Linear(disable_weight_init.Linear):
        comfy_cast_weights = True

    class Conv1d(disable_weight_init.Conv1d):
        comfy_cast_weights = True

    class Conv2d(disable_weight_init.Conv2d):
        comfy_cast_weights = True

    class Conv3d(disable_weight_init.Conv3d):
        comfy_cast_weights = True

    class GroupNorm(disable_weight_init.GroupNorm):
        comfy_cast_weights = True

    class LayerNorm(disable_weight_init.LayerNorm):
        comfy_cast_weights = True

    class ConvTranspose2d(disable_weight_init.ConvTranspose2d):
        comfy_cast_weights = True

    class Embedding(disable_weight_init.Embedding):
        comfy_cast_weights = True


def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False, fp8_optimizations=False,
                    scaled_fp8=None, model_config=None):
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast


def scaled_dot_product_attention(q, k, v, *args, **kwargs):
    return F.scaled_dot_product_attention(q, k, v, *args, **kwargs)


__all__ = ["CastWeightBiasOp", "cast_bias_weight", "cast_to", "cast_to_input", "disable_weight_init", "manual_cast",
           "pick_operations", "scaled_dot_product_attention", "uncast_bias_weight"]
