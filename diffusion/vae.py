"""The KL autoencoder of Stable Diffusion (SD1.x, SD2.x and SDXL share this architecture).

Module attribute paths mirror the original checkpoint layout (`encoder.down.0.block.1.conv2.weight`,
`decoder.mid.attn_1.q.weight`, ...), so a `first_stage_model.` state dict loads with the prefix
stripped and nothing else renamed.

Pixels are [B, 3, H, W] in -1..1; latents are [B, 4, H/8, W/8], unscaled (the latent format scales
them for the sampler). Encoding and decoding fall back to overlapping tiles when a whole image would
not fit the memory budget, because a 2048px decode needs tens of GB in one piece.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Peak working memory per output (decode) or input (encode) pixel, in elements: slope x the widest
# full-resolution channel count + a constant for inputs, outputs and convolution workspace. Fitted
# to VmHWM measured on the CPU in fp32 (SD VAE: decode ~1040-1150, encode ~780-810 elements per
# pixel; a 64-channel VAE at 256px peaks at 2.0-2.5 KB per pixel on encode) with headroom, so the
# estimate errs towards batching less and tiling sooner.
_DECODE_COST = (4.5, 512)
_ENCODE_COST = (5.0, 512)


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3          # image channels into the encoder
    out_channels: int = 3         # image channels out of the decoder
    z_channels: int = 4           # channels between encoder/decoder and the quant convs
    embed_dim: int = 4            # latent channels seen by the sampler
    base_channels: int = 128      # "ch" in the original config
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    use_quant_conv: bool = True

    @classmethod
    def sd(cls) -> "VAEConfig":
        """The autoencoder of SD1.x, SD2.x and SDXL (same shapes; SDXL's weights differ)."""
        return cls()

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_state_dict(cls, sd: dict, prefix: str = "first_stage_model.") -> "VAEConfig":
        """Derive the architecture from key names and tensor shapes (works on meta tensors)."""
        def shape(key: str) -> tuple[int, ...]:
            full = prefix + key
            if full not in sd:
                raise ValueError(f"VAE key {full!r} not found")
            return tuple(sd[full].shape)

        conv_in = shape("encoder.conv_in.weight")
        base = conv_in[0]
        levels = _count_indices(sd, prefix + "encoder.down.")
        if not levels:
            raise ValueError(f"no VAE encoder levels ({prefix}encoder.down.N.*) found")
        mult = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // base for i in range(levels))
        num_res = len(_count_set(sd, prefix + "encoder.down.0.block."))
        z_channels = shape("decoder.conv_in.weight")[1]
        use_quant = prefix + "quant_conv.weight" in sd
        embed_dim = shape("post_quant_conv.weight")[1] if use_quant else z_channels
        groups = _largest_group_count(base)
        return cls(
            in_channels=conv_in[1], out_channels=shape("decoder.conv_out.weight")[0], z_channels=z_channels,
            embed_dim=embed_dim, base_channels=base, channel_mult=mult, num_res_blocks=num_res,
            norm_groups=groups, use_quant_conv=use_quant,
        )


def _count_set(sd: dict, prefix: str) -> set[int]:
    found = set()
    for key in sd:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return found


def _count_indices(sd: dict, prefix: str) -> int:
    found = _count_set(sd, prefix)
    return max(found) + 1 if found else 0


def _largest_group_count(channels: int) -> int:
    # Shapes do not record the GroupNorm group count; every released VAE uses 32, and tiny test
    # models with fewer channels need a divisor of their width.
    return math.gcd(32, channels)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Reassigning `h` lets each intermediate be freed as soon as the next exists: at full
        # resolution these blocks set the peak memory of the whole autoencoder.
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convs as in the files."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:   # [B, C, H, W] -> [B, 1, H*W, C]
            return conv(normed).reshape(b, 1, c, h * w).transpose(-1, -2)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original pads only right and bottom before the stride-2 conv; symmetric padding
        # would shift every latent by half a pixel relative to trained weights.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution of the encoder or decoder: resnet blocks, then an optional resampler.

    The resampler is stored as `downsample` or `upsample` to match the checkpoint key names.
    """

    def __init__(self, channels: list[int], groups: int, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b, groups) for a, b in zip(channels, channels[1:]))
        if resample == "down":
            self.downsample = Downsample(channels[-1])
        elif resample == "up":
            self.upsample = Upsample(channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        for name in ("downsample", "upsample"):
            if name in self._modules:
                x = self._modules[name](x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        width_in = cfg.base_channels
        for i, width in enumerate(widths):
            chans = [width_in] + [width] * cfg.num_res_blocks
            self.down.append(Level(chans, cfg.norm_groups, "down" if i != last else None))
            width_in = width
        self.mid = MidBlock(widths[-1], cfg.norm_groups)
        self.norm_out = _norm(widths[-1], cfg.norm_groups)
        # Mean and log-variance of the posterior, hence twice the latent channels.
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], cfg.norm_groups)
        # `up[0]` is the full-resolution level, as in the checkpoint; it runs last.
        levels = []
        width_in = widths[-1]
        for i in reversed(range(len(widths))):
            chans = [width_in] + [widths[i]] * (cfg.num_res_blocks + 1)
            levels.append(Level(chans, cfg.norm_groups, "up" if i != 0 else None))
            width_in = widths[i]
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _norm(widths[0], cfg.norm_groups)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def _cost(fit: tuple[float, int], widest: int, pixels: int, itemsize: int) -> int:
    slope, constant = fit
    return int(pixels * (slope * widest + constant) * itemsize)


def default_memory_budget(device: torch.device) -> int:
    """Bytes one encode/decode may use on `device`: most of what is free right now."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        reserved_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + reserved_free) * 0.8)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 8 << 30


class AutoencoderKL(nn.Module):
    """Encoder + decoder with the quant convs; `memory_budget` (bytes or None = ask the device)
    decides when encode/decode switch to tiles."""

    def __init__(self, config: VAEConfig | None = None, memory_budget: int | None = None,
                 budget_fn: Callable[[torch.device], int] = default_memory_budget):
        super().__init__()
        self.config = config = config or VAEConfig.sd()
        self.memory_budget = memory_budget
        self.budget_fn = budget_fn
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    # ---- raw passes (no batching, tiling or dtype handling) ----

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.embed_dim]

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.use_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    # ---- public API ----

    @property
    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in -1..1 -> latent mean [B, embed_dim, H/f, W/f], on the input's device/dtype."""
        f = self.config.downscale
        if pixels.shape[-2] % f or pixels.shape[-1] % f:
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} is not a multiple of {f}")
        return self._run(pixels, self.encode_mean, self.encode_tiled, self.encode_bytes, 1)

    def decode(self, latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """[B, embed_dim, h, w] -> pixels [B, 3, h*f, w*f] in -1..1 (clamped unless clamp=False)."""
        f = self.config.downscale
        out = self._run(latent, self.decode_raw, self.decode_tiled, self.decode_bytes, f)
        return out.clamp(-1.0, 1.0) if clamp else out

    def encode_bytes(self, height: int, width: int) -> int:
        """Estimated peak working memory of encoding one image of height x width pixels."""
        widest = self.config.base_channels * self.config.channel_mult[0]
        return _cost(_ENCODE_COST, widest, height * width, self._param.element_size())

    def decode_bytes(self, height: int, width: int) -> int:
        """Estimated peak working memory of decoding to one image of height x width pixels."""
        mult = self.config.channel_mult
        # Level 0 receives the upsampled output of level 1, so its input width sets the peak.
        widest = self.config.base_channels * max(mult[: 2])
        return _cost(_DECODE_COST, widest, height * width, self._param.element_size())

    def budget(self) -> int:
        return self.memory_budget if self.memory_budget is not None else self.budget_fn(self._param.device)

    def _run(self, x: torch.Tensor, whole: Callable, tiled: Callable, estimate: Callable[[int, int], int],
             to_pixels: int) -> torch.Tensor:
        """Run `whole` over batch chunks that fit the budget, or `tiled` per image if one does not.

        `estimate(height, width)` is the cost of one image in pixels; `to_pixels` converts x's size.
        """
        param = self._param
        budget = self.budget()
        per_sample = estimate(x.shape[-2] * to_pixels, x.shape[-1] * to_pixels)
        tile_within = partial(self._tiled_within, tiled, estimate, budget, to_pixels)
        outs = []
        if per_sample > budget:
            outs = [tile_within(x[i: i + 1]) for i in range(x.shape[0])]
        else:
            chunk = max(1, budget // per_sample)
            for start in range(0, x.shape[0], chunk):
                piece = x[start: start + chunk].to(param.device, param.dtype)
                try:
                    outs.append(whole(piece).to(x.device, x.dtype))
                except torch.OutOfMemoryError:
                    # The estimate is only an estimate; on a GPU a failed allocation is recoverable.
                    del piece
                    if param.device.type == "cuda":
                        torch.cuda.empty_cache()
                    outs.extend(tile_within(x[i: i + 1])
                                for i in range(start, min(start + chunk, x.shape[0])))
        return torch.cat(outs)

    def _tiled_within(self, tiled: Callable, estimate: Callable[[int, int], int], budget: int,
                      to_pixels: int, x: torch.Tensor) -> torch.Tensor:
        """Tile with the largest standard size (512px, halving down to 64px) that fits the budget and
        is smaller than the image; on an out-of-memory error, halve again and retry."""
        side = max(x.shape[-2:]) * to_pixels
        tile = 512
        while tile > 64 and (estimate(tile, tile) > budget or tile >= side):
            tile //= 2
        while True:
            try:
                return tiled(x, tile_size=tile, overlap=tile // 8)
            except torch.OutOfMemoryError:
                if tile <= 64:
                    raise
                tile //= 2
                if self._param.device.type == "cuda":
                    torch.cuda.empty_cache()

    def decode_tiled(self, latent: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
        """Decode overlapping latent tiles and blend them; `tile_size`/`overlap` are in pixels."""
        f = self.config.downscale
        tile = max(1, tile_size // f)
        return _tiled(latent, self.decode_raw, tile, max(0, min(overlap // f, tile - 1)), f, self._param)

    def encode_tiled(self, pixels: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
        """Encode overlapping pixel tiles and blend the latents; `tile_size`/`overlap` are in pixels."""
        f = self.config.downscale
        tile = max(f, tile_size // f * f)
        over = min(overlap // f * f, tile - f)
        return _tiled(pixels, self.encode_mean, tile, over, 1.0 / f, self._param)


def _tile_starts(size: int, tile: int, overlap: int, align: int) -> list[int]:
    """Start offsets covering 0..size with tiles of `tile`, consecutive ones sharing >= `overlap`."""
    if size <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, size - tile, stride))
    starts.append((size - tile) // align * align)   # last tile flush with the far edge
    return sorted(set(starts))


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool, device, dtype) -> torch.Tensor:
    """1-D blend weight: rises over `overlap` samples where a neighbouring tile overlaps, else 1.

    Weights never reach zero so an area covered by a single tile divides cleanly.
    """
    w = torch.ones(length, device=device, dtype=dtype)
    n = min(overlap, length // 2)
    if n > 0:
        rise = torch.arange(1, n + 1, device=device, dtype=dtype) / (n + 1)
        if not at_start:
            w[:n] = rise
        if not at_end:
            w[-n:] = rise.flip(0)
    return w


def _tiled(x: torch.Tensor, fn: Callable, tile: int, overlap: int, scale: float,
           param: torch.Tensor) -> torch.Tensor:
    """Apply `fn` (mapping [B,C,h,w] to [B,C',h*scale,w*scale]) tile by tile with feathered blending.

    Tiles start on multiples of 1/scale input samples when scale < 1 (encoding) so every tile maps
    onto whole latent pixels.
    """
    align = int(round(1 / scale)) if scale < 1 else 1
    height, width = x.shape[-2:]
    ys = _tile_starts(height, tile, overlap, align)
    xs = _tile_starts(width, tile, overlap, align)
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            piece = x[..., y0: y0 + tile, x0: x0 + tile].to(param.device, param.dtype)
            result = fn(piece).to(x.device, torch.float32)
            if out is None:
                out = x.new_zeros(x.shape[0], result.shape[1], int(height * scale), int(width * scale),
                                  dtype=torch.float32)
                weight = x.new_zeros(1, 1, out.shape[-2], out.shape[-1], dtype=torch.float32)
            oy, ox = int(y0 * scale), int(x0 * scale)
            th, tw = result.shape[-2:]
            feather = max(1, int(overlap * scale))
            wy = _ramp(th, feather, y0 == ys[0], y0 == ys[-1], out.device, out.dtype)
            wx = _ramp(tw, feather, x0 == xs[0], x0 == xs[-1], out.device, out.dtype)
            mask = wy[:, None] * wx[None, :]
            out[..., oy: oy + th, ox: ox + tw] += result * mask
            weight[..., oy: oy + th, ox: ox + tw] += mask
    return (out / weight).to(x.dtype)
