"""The autoencoder's full-resolution layers in bands of rows on the CPU: bit for bit the
whole-tensor result, in a fraction of the memory.

Why: a whole fp32 decode of a 512x512 image holds several 512x512 tensors of 128 to 256 channels
(134 to 268 MB each) at once, and oneDNN adds to each convolution a copy of its NCHW input in its
own blocked layout. In bands, a ResnetBlock holds its input, one new tensor and a few bands.

What is exact, and why (tests/test_vae_bands.py checks each on the real SD layer shapes,
tests/test_comfy_node_parity.py the banded decoder against ComfyUI's recorded pixels):
- A 3x3 convolution: for NCHW input oneDNN's direct kernel (blocked layout) is called once per
  block of 16 input channels; each call sums its block over the 3x3 window from zero and adds
  the running output (the bias after the first block). That order depends on neither the
  extent of the call nor the thread count, so the output rows of a band, computed from its
  input rows plus a one-row halo, are those rows of the whole output. The bands stay far above
  the size (20480 elements) under which torch computes a 3x3 convolution with its own kernel
  instead of oneDNN's, which sums in another order.
- GroupNorm: torch computes each group's mean and 1/std over that group's own contiguous block,
  so a call on a slice of whole groups gives the same statistics; it then applies
  y = fma(x, scale, shift) with scale = rstd * gamma and shift = fma(-scale, mean, beta), which
  torch.addcmul reproduces (it multiplies and adds fused on the CPU).
- SiLU and the residual sum are elementwise; nearest 2x upsampling copies values.
Not banded, computed whole: 1x1 convolutions (the nin_shortcut). oneDNN's 1x1 kernel sums the
input channels in blocks whose size it picks from the call's spatial extent and thread count,
then adds the blocks' partial sums, so a band can group the sum differently: measured not
bit-identical with 2 threads at some widths (e.g. 520) and band heights (e.g. 16 rows at 512).

Only for batch-first NCHW float32 tensors on the CPU without autograd (the fp32 CPU path, whose
pixels must match ComfyUI's); a channels-last (reduced-precision) VAE or a GPU computes whole.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .device import trim_heap

# Tensors from this size on are computed in bands: the decoder's 512x512 levels at 128 and 256
# channels and its 256x256 levels (64 to 268 MB); smaller ones gain little and pay per call.
BANDED_FROM_BYTES = 64 << 20
# One band of a layer's input: small next to the tensors above, large enough that the per-call
# cost of oneDNN (reorders, thread start) stays a few percent.
BAND_BYTES = 16 << 20


def banded(x: torch.Tensor, growth: int = 1) -> bool:
    """Whether `x` is computed on in bands (see the module docstring); `growth`: how many times
    larger than `x` the layer's output is (4 for a 2x upsampling)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous()
            and not torch.is_grad_enabled() and x.numel() * x.element_size() * growth >= BANDED_FROM_BYTES)


def supports(*modules: nn.Module | None) -> bool:
    """Whether these are the plain layers whose banded form is exact (3x3 convolutions with
    padding 1, affine GroupNorms): a plugin's replacement or a hooked module runs whole."""
    for m in modules:
        if m is None:
            continue
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if type(m) is nn.GroupNorm:
            if not m.affine:
                return False
        elif type(m) is nn.Conv2d:
            if (m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.padding_mode) != (
                    (3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros"):
                return False
        else:
            return False
    return True


def _bands(height: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """(top, bottom) of each band of rows, about BAND_BYTES of input each."""
    rows = max(1, BAND_BYTES // row_bytes)
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def group_norm_affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each [N, C, 1, 1], with norm(x) == torch.addcmul(shift, x, scale) bit for
    bit. The statistics come from torch's own group norm over a few whole groups per call, so no
    normalised copy of all of `x` is made."""
    n, c, h, w = x.shape
    groups = norm.num_groups
    per_group = c // groups
    chunk = max(1, min(groups, BAND_BYTES // (n * per_group * h * w * x.element_size())))
    # Made before the loop and each call's results dropped in it: small tensors kept across
    # calls would split the freed outputs in glibc's heap, which then grows by an output a call.
    mean, rstd = x.new_empty(n, groups), x.new_empty(n, groups)
    for g in range(0, groups, chunk):
        k = min(chunk, groups - g)
        part = x[:, g * per_group:(g + k) * per_group].contiguous()   # a copy only for a batch of several
        results = torch.native_group_norm(part, None, None, n, k * per_group, h * w, k, norm.eps)
        mean[:, g:g + k], rstd[:, g:g + k] = results[1], results[2]
        del part, results
    mean = mean.repeat_interleave(per_group, 1)     # [N, C]
    rstd = rstd.repeat_interleave(per_group, 1)
    scale = rstd * norm.weight
    shift = torch.addcmul(norm.bias.expand_as(scale), -scale, mean)
    return scale[:, :, None, None], shift[:, :, None, None]


def _conv_band(conv: nn.Conv2d, band: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
    """A 3x3 convolution over a band that holds its output rows plus a one-row halo on each side
    inside the image. At the image's first or last row the kernel pads, as in the whole call (it
    skips the padded row, where adding a zero row would be exact but for the sign of a zero sum);
    the one row that padding adds at the band's other end is dropped."""
    if not (first or last):
        return F.conv2d(band, conv.weight, conv.bias, 1, (0, 1))
    out = F.conv2d(band, conv.weight, conv.bias, 1, 1)
    return out[:, :, (0 if first else 1):out.shape[2] - (0 if last else 1)]


def normed_conv(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """conv(silu(norm(x))) (+ `residual`), in bands of rows: bit for bit the whole-tensor result.

    Written into `out` (a new tensor if None), which may share memory with `x`: `x` itself, or
    the first channels of `x` for a conv with fewer output channels. Then each band saves the row
    of `x` that the next band reads above it before overwriting it. The residual is added as the
    whole computation adds it (conv output + residual); it may be `out` itself.
    """
    trim_heap()   # the bands of the layer before: glibc keeps freed blocks of this size in its heap
    n, c, height, width = x.shape
    scale, shift = group_norm_affine(norm, x)
    if out is None:
        out = x.new_empty(n, conv.out_channels, height, width)
    overwrites_x = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    # Row top-1 of x as it was before the previous band overwrote it: one buffer for all bands,
    # as nothing a band makes may outlive it (see group_norm_affine).
    above = x.new_empty(n, c, 1, width) if overwrites_x else None
    for top, bottom in _bands(height, n * c * width * x.element_size()):
        lo, hi = max(0, top - 1), min(height, bottom + 1)
        rows = x[:, :, lo:hi] if above is None or top == 0 else torch.cat([above, x[:, :, top:hi]], 2)
        band = F.silu(torch.addcmul(shift, rows, scale), inplace=True)
        del rows
        result = _conv_band(conv, band, top == 0, bottom == height)
        del band
        if residual is not None:
            result.add_(residual[:, :, top:bottom])
        if above is not None:
            above.copy_(x[:, :, bottom - 1:bottom])
        out[:, :, top:bottom] = result
        del result
    return out


def upsampled_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(nearest 2x upsampling of x) in bands of output rows: no upsampled copy of all of `x`."""
    trim_heap()
    n, c, h, w = x.shape
    height = 2 * h
    out = x.new_empty(n, conv.out_channels, height, 2 * w)
    for top, bottom in _bands(height, n * c * 2 * w * x.element_size()):
        lo, hi = max(0, top - 1), min(height, bottom + 1)
        first, end = lo // 2, (hi + 1) // 2            # source rows whose copies cover lo..hi
        up = F.interpolate(x[:, :, first:end], scale_factor=2.0, mode="nearest")
        band = up[:, :, lo - 2 * first:hi - 2 * first].contiguous()
        del up
        out[:, :, top:bottom] = _conv_band(conv, band, top == 0, bottom == height)
        del band
    return out
