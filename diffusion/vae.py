"""The KL autoencoder of Stable Diffusion (SD1.x, SD2.x and SDXL share this architecture).

Module attribute paths mirror the original checkpoint layout (`encoder.down.0.block.1.conv2.weight`,
`decoder.mid.attn_1.q.weight`, ...), so a `first_stage_model.` state dict loads with the prefix
stripped and nothing else renamed.

Pixels are [B, 3, H, W] in -1..1; latents are [B, 4, H/8, W/8], unscaled (the latent format scales
them for the sampler).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import vae_bands
from .attention import vae_attention
from .device import conv_weights_channels_last, in_weights_layout, trim_heap


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

    def forward(self, x: torch.Tensor, reuse_input: bool = False) -> torch.Tensor:
        """`reuse_input`: the caller drops `x` after this call, so its memory may hold
        intermediates (in the banded path only; the decoder passes it)."""
        if vae_bands.banded(x) and vae_bands.supports(self.norm1, self.conv1, self.norm2, self.conv2):
            return self._forward_banded(x, reuse_input)
        # The activation runs in place on the fresh norm output, reassigning `h` frees each
        # intermediate as soon as the next exists, and the residual sum reuses the last conv's
        # output. Not in place while training: autograd needs the pre-activation values.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return h.add_(x) if inplace else x + h

    def _forward_banded(self, x: torch.Tensor, reuse_input: bool) -> torch.Tensor:
        """The same sums holding x and one new tensor: norm, activation and 3x3 conv in bands of
        rows (diffusion.vae_bands), the second conv's output written over an operand.

        With a 1x1 shortcut (the decoder's first full-resolution block: 268 MB in, 134 MB out)
        the shortcut runs whole, first, while nothing else of this block is alive: it is the
        decode's peak (its input, oneDNN's blocked copy of it and its output). Then, if allowed,
        the first conv writes into the input's first channels, so the rest of the block holds
        no more than the input and the shortcut.
        """
        if self.nin_shortcut is None:
            h = vae_bands.normed_conv(self.norm1, self.conv1, x)
            return vae_bands.normed_conv(self.norm2, self.conv2, h, out=h, residual=x)
        trim_heap()   # the layer before left freed bands in the heap; this is the largest allocation
        shortcut = self.nin_shortcut(x)
        into = x[:, :self.conv1.out_channels] if reuse_input else None
        h = vae_bands.normed_conv(self.norm1, self.conv1, x, out=into)
        return vae_bands.normed_conv(self.norm2, self.conv2, h, out=shortcut, residual=shortcut)


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
        normed = self.norm(x)
        return x + self.proj_out(vae_attention(self.q(normed), self.k(normed), self.v(normed)))


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
        if vae_bands.banded(x, growth=4) and vae_bands.supports(self.conv):
            return vae_bands.upsampled_conv(self.conv, x)
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

    def layers(self) -> list[nn.Module]:
        """The blocks, then the resampler, in the order they run."""
        resample = [self._modules[n] for n in ("downsample", "upsample") if n in self._modules]
        return [*self.block, *resample]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_levels([self], x, own_input=False)


def _run_levels(levels, x: torch.Tensor, own_input: bool = True) -> torch.Tensor:
    """Each level's layers in turn, layer by layer rather than `level(x)`: a level's input would
    stay referenced here while the whole level runs (a 268 MB tensor at the decoder's last level).
    Each layer's input is dropped after it, so a ResnetBlock may reuse its memory; `own_input`:
    whether that holds for `x` too (an intermediate of the caller's, not the caller's caller's)."""
    reuse = own_input
    for level in levels:
        for layer in level.layers():
            x = layer(x, reuse_input=reuse) if isinstance(layer, ResnetBlock) else layer(x)
            reuse = True
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
        x = _run_levels(self.down, x)
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
        x = _run_levels(reversed(self.up), x)
        if vae_bands.banded(x) and vae_bands.supports(self.norm_out, self.conv_out):
            return vae_bands.normed_conv(self.norm_out, self.conv_out, x)
        return self.conv_out(F.silu(self.norm_out(x)))


class AutoencoderKL(nn.Module):
    """Encoder + decoder with the quant convs: ComfyUI's first_stage_model. Whole-image passes only;
    the VAE object (diffusion.handles.VAE) batches, and tiles on an out-of-memory error."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config = config or VAEConfig.sd()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def to_channels_last(self) -> "AutoencoderKL":
        """Conv weights NHWC, once, for a VAE that computes on the CPU in reduced precision: every
        conv and GroupNorm then runs on NHWC activations without re-layouts, which is faster and
        lowers a 512x512 bf16 decode's peak memory by about a fifth."""
        conv_weights_channels_last(self)
        return self

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Activations in the weights' layout (NHWC after to_channels_last)."""
        return in_weights_layout(x, self.decoder.conv_in.weight)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(self._layout(x))
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.embed_dim].contiguous()

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        z = self._layout(z)
        if self.config.use_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).contiguous()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in -1..1 -> latent mean [B, embed_dim, H/f, W/f] (ComfyUI's first_stage_model.encode)."""
        f = self.config.downscale
        if pixels.shape[-2] % f or pixels.shape[-1] % f:
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} is not a multiple of {f}")
        return self.encode_mean(pixels)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim, h, w] -> pixels [B, 3, h*f, w*f], unclamped (the VAE object clamps)."""
        return self.decode_raw(latent)
