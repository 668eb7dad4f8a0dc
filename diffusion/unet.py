"""The latent-diffusion UNet (SD1.x, SD2.x, SDXL base/refiner) and its configuration.

`UNetModel` attribute paths equal the original checkpoint keys minus ``model.diffusion_model.``,
so ``model.load_state_dict(strip_prefix(sd))`` loads a released file directly.

Layout (as in the LDM paper's diagram): conv_in -> per resolution level `num_res_blocks`
[ResBlock (+ SpatialTransformer)] stages and a Downsample between levels; a middle stage
ResBlock-SpatialTransformer-ResBlock; the decoder mirrors the encoder with one extra stage per
level, each concatenating the matching encoder output (skip connection), Upsample between levels.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .attention import SpatialTransformer
from .device import conv_weights_channels_last, in_weights_layout, meta_skeleton
from .patcher_extension import WrappersMP, wrapped
from .unet_blocks import Downsample, ResBlock, TimestepSequential, Upsample, timestep_embedding

UNET_PREFIX = "model.diffusion_model."
# Keys that may sit under the UNet prefix without being UNet weights (ComfyUI's save path marks
# v-prediction models with an empty `model.diffusion_model.v_pred` tensor).
NON_WEIGHT_KEYS = frozenset({"v_pred"})


def _per_block(value, per_level_counts: Sequence[int], what: str) -> tuple[int, ...]:
    """Expands an int, a per-level or a per-block sequence into one value per block."""
    total = sum(per_level_counts)
    if isinstance(value, int):
        return (value,) * total
    value = tuple(int(v) for v in value)
    if len(value) == total:
        return value
    if len(value) == len(per_level_counts):
        return tuple(v for v, n in zip(value, per_level_counts) for _ in range(n))
    raise ValueError(f"{what}: expected an int, {len(per_level_counts)} per-level or {total} per-block values, "
                     f"got {len(value)}")


@dataclass(frozen=True)
class UNetConfig:
    """Everything that shapes a UNet of the SD family.

    `transformer_depth` holds one entry per encoder ResBlock and `transformer_depth_output` one per
    decoder stage (num_res_blocks + 1 per level); both also accept an int or one value per level
    and are stored expanded. `transformer_depth_output=None` mirrors the encoder level by level.
    Attention width is either `num_heads` heads (SD1.x) or heads of `num_head_channels` (SD2.x/SDXL);
    set the other to -1.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] | int = 2
    transformer_depth: tuple[int, ...] | int = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    transformer_depth_output: tuple[int, ...] | int | None = None
    context_dim: int = 768
    num_heads: int = 8
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("channel_mult", tuple(int(m) for m in self.channel_mult))
        levels = len(self.channel_mult)
        nrb = self.num_res_blocks
        nrb = (int(nrb),) * levels if isinstance(nrb, int) else tuple(int(n) for n in nrb)
        if len(nrb) != levels or min(nrb) < 1:
            raise ValueError(f"num_res_blocks {nrb} does not fit {levels} levels")
        set_("num_res_blocks", nrb)
        depth = _per_block(self.transformer_depth, nrb, "transformer_depth")
        set_("transformer_depth", depth)
        out = self.transformer_depth_output
        if out is None:  # each decoder level mirrors its encoder level (its last ResBlock's depth)
            ends = [sum(nrb[: i + 1]) - 1 for i in range(levels)]
            out = tuple(depth[ends[level]] for level in reversed(range(levels)))
            out = tuple(d for d, n in zip(out, reversed(nrb)) for _ in range(n + 1))
        set_("transformer_depth_output", _per_block(out, [n + 1 for n in reversed(nrb)], "transformer_depth_output"))
        if self.transformer_depth_middle < 1:
            raise ValueError("transformer_depth_middle must be at least 1")
        if (self.num_heads > 0) == (self.num_head_channels > 0):
            raise ValueError("set exactly one of num_heads / num_head_channels (the other -1)")
        for mult in self.channel_mult:
            self.attention_shape(mult * self.model_channels)

    # --- derived quantities -------------------------------------------------------------------
    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def attention_shape(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of the transformers at a level `channels` wide."""
        if self.num_heads > 0:
            heads, dim_head = self.num_heads, channels // self.num_heads
        else:
            heads, dim_head = channels // self.num_head_channels, self.num_head_channels
        if heads < 1 or dim_head < 1 or heads * dim_head != channels:
            raise ValueError(f"width {channels} does not split into attention heads "
                             f"(num_heads={self.num_heads}, num_head_channels={self.num_head_channels})")
        return heads, dim_head

    # --- the released architectures --------------------------------------------------------------
    @classmethod
    def sd15(cls) -> "UNetConfig":
        return cls()

    @classmethod
    def sd15_inpaint(cls) -> "UNetConfig":
        # 4 noisy latent + 1 mask + 4 masked-image latent channels
        return cls(in_channels=9)

    @classmethod
    def sd21(cls) -> "UNetConfig":
        """SD2.0/2.1, 512 and 768 alike (they differ only in prediction type, not in shapes)."""
        return cls(context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)

    @classmethod
    def sdxl_base(cls) -> "UNetConfig":
        return cls(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
                   context_dim=2048, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                   adm_in_channels=2816)

    @classmethod
    def sdxl_refiner(cls) -> "UNetConfig":
        return cls(model_channels=384, channel_mult=(1, 2, 4, 4), transformer_depth=(0, 4, 4, 0),
                   transformer_depth_middle=4, context_dim=1280, num_heads=-1, num_head_channels=64,
                   use_linear_in_transformer=True, adm_in_channels=2560)

    # --- detection ---------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, object], prefix: str = UNET_PREFIX, **overrides) -> "UNetConfig":
        """Derives the config from the keys and shapes under `prefix` (values need only `.shape`).

        Head layout leaves no trace in the weights; like ComfyUI this assumes 8 heads for conv
        projections (SD1.x) and 64-channel heads for linear ones (SD2.x/SDXL). Pass `num_heads` or
        `num_head_channels` (or any other field) in `overrides` to say otherwise.
        Raises ValueError naming the first missing, unexpected or mis-shaped key.
        """
        shapes = shapes_under(sd, prefix)
        for k in NON_WEIGHT_KEYS:
            shapes.pop(k, None)
        if not shapes:
            raise ValueError(f"no keys under prefix {prefix!r}: not a UNet state dict")
        fields = _parse_unet_shapes(shapes, prefix)
        return config_from_shapes(cls, fields, overrides, shapes, prefix, "UNet")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape of this architecture's state dict (built on the meta device: no memory)."""
        return meta_state_shapes(UNetModel, self)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> None:
        check_state_shapes(self.expected_shapes(), shapes, prefix)

    def to_dict(self) -> dict:
        return asdict(self)


# --- detection helpers, shared with the ControlNet (a copy of this encoder) -------------------------

def shapes_under(sd: Mapping[str, object], prefix: str) -> dict[str, tuple[int, ...]]:
    """Key (without `prefix`) -> shape of every entry under `prefix`."""
    return {k[len(prefix):]: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}


def config_from_shapes(make, fields: dict, overrides: dict, shapes: Mapping[str, tuple[int, ...]],
                       prefix: str, what: str):
    """`make(**fields)` with `overrides` applied, checked against `shapes`.

    Naming only one head field in `overrides` means the other is unset (-1), since the parsed
    default sets exactly one of them.
    """
    overrides = dict(overrides)
    if "num_heads" in overrides and "num_head_channels" not in overrides:
        overrides["num_head_channels"] = -1
    if "num_head_channels" in overrides and "num_heads" not in overrides:
        overrides["num_heads"] = -1
    fields = {**fields, **overrides}
    try:
        config = make(**fields)
    except ValueError as exc:
        raise ValueError(f"keys under {prefix!r} describe no valid {what}: {exc}") from None
    config.check_shapes(shapes, prefix)
    return config


def meta_state_shapes(model_class, config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `model_class(config)`'s state dict, built on the meta device (no memory)."""
    with meta_skeleton():
        model = model_class(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_shapes(expected: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]],
                       prefix: str = "", allow_unexpected: bool = False) -> None:
    """Raises ValueError naming the first missing, unexpected (unless allowed) or mis-shaped key."""
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise ValueError(f"missing key {prefix + missing[0]!r} ({len(missing)} missing)")
    if not allow_unexpected:
        unexpected = sorted(set(shapes) - set(expected))
        if unexpected:
            raise ValueError(f"unexpected key {prefix + unexpected[0]!r} ({len(unexpected)} unexpected)")
    for k, shape in expected.items():
        if tuple(shapes[k]) != shape:
            raise ValueError(f"key {prefix + k!r} has shape {list(shapes[k])}, expected {list(shape)}")


_TRANSFORMER_KEY = re.compile(r"^(input_blocks\.\d+|middle_block|output_blocks\.\d+)\.1\.transformer_blocks\.(\d+)\.")


def shape_lookup(shapes: Mapping[str, tuple], prefix: str, what: str):
    """`need(key)`: the shape of `key`, or ValueError saying the keys are no `what` of the SD family."""

    def need(key: str) -> tuple:
        if key not in shapes:
            raise ValueError(f"missing key {prefix + key!r}: not a {what} of the SD1/SD2/SDXL family")
        return shapes[key]

    return need


def transformer_depths(shapes: Mapping[str, tuple]) -> dict[str, int]:
    """Stage name (input_blocks.N, middle_block, output_blocks.N) -> SpatialTransformer depth."""
    depths: dict[str, int] = {}
    for key in shapes:
        m = _TRANSFORMER_KEY.match(key)
        if m:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    return depths


def parse_encoder_shapes(shapes: Mapping[str, tuple], prefix: str, what: str = "UNet") -> dict:
    """The UNetConfig fields fixed by the encoder and middle block (all but out_channels and
    transformer_depth_output), read off key names and shapes; validated afterwards."""
    need = shape_lookup(shapes, prefix, what)
    depths = transformer_depths(shapes)
    model_channels, in_channels = need("input_blocks.0.0.weight")[:2]
    channel_mult, num_res_blocks, depth_in = [], [], []
    blocks_in_level, i = 0, 1
    while True:
        stage = f"input_blocks.{i}"
        if f"{stage}.0.op.weight" in shapes:  # a Downsample closes the level
            num_res_blocks.append(blocks_in_level)
            blocks_in_level = 0
        elif f"{stage}.0.in_layers.2.weight" in shapes:
            if blocks_in_level == 0:
                channel_mult.append(shapes[f"{stage}.0.in_layers.2.weight"][0] // model_channels)
            depth_in.append(depths.get(stage, 0))
            blocks_in_level += 1
        else:
            break
        i += 1
    if blocks_in_level == 0:
        need(f"input_blocks.{i}.0.in_layers.2.weight")
    num_res_blocks.append(blocks_in_level)
    cross = need("middle_block.1.transformer_blocks.0.attn2.to_k.weight")
    linear = len(need("middle_block.1.proj_in.weight")) == 2
    adm = shapes.get("label_emb.0.0.weight")
    return dict(
        in_channels=in_channels, model_channels=model_channels, channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks), transformer_depth=tuple(depth_in),
        transformer_depth_middle=depths["middle_block"], context_dim=cross[1],
        num_heads=-1 if linear else 8, num_head_channels=64 if linear else -1,
        use_linear_in_transformer=linear, adm_in_channels=None if adm is None else adm[1],
    )


def _parse_unet_shapes(shapes: Mapping[str, tuple], prefix: str) -> dict:
    """Reads the UNetConfig fields off the key names and shapes (validated afterwards)."""
    need = shape_lookup(shapes, prefix, "UNet")
    # Entry and exit convs first: a file that is no UNet at all is named by one of these two keys
    # rather than by whatever the encoder walk trips over.
    need("input_blocks.0.0.weight")
    out_channels = need("out.2.weight")[0]
    fields = parse_encoder_shapes(shapes, prefix, "UNet")
    depths = transformer_depths(shapes)
    depth_out, j = [], 0
    while f"output_blocks.{j}.0.in_layers.2.weight" in shapes:
        depth_out.append(depths.get(f"output_blocks.{j}", 0))
        j += 1
    return dict(fields, out_channels=out_channels, transformer_depth_output=tuple(depth_out))


class _ControlFeed:
    """A per-call copy of a ComfyUI control dict whose lists are consumed from the end, like a stack.

    ComfyUI orders "output" (ControlNet zero-conv outputs, encoder order) so that popping yields the
    residual for the skip connection the decoder pops next, and "input" (T2I-Adapter) reversed so that
    popping yields input block 0 first. Copying keeps the caller's lists reusable across steps.
    """

    def __init__(self, control: Mapping[str, Sequence] | None):
        self.pending = {k: list(v) for k, v in (control or {}).items() if v is not None}

    def apply(self, name: str, h: torch.Tensor) -> torch.Tensor:
        pending = self.pending.get(name)
        if not pending:
            return h
        residual = pending.pop()
        return h if residual is None else h + residual.to(h.dtype)


# --- modules shared with the ControlNet, whose copy of the encoder must match this one key for key

def spatial_transformer(c: UNetConfig, channels: int, depth: int) -> list[nn.Module]:
    """The stage's SpatialTransformer, or nothing where its depth is 0."""
    if depth == 0:
        return []
    heads, dim_head = c.attention_shape(channels)
    return [SpatialTransformer(channels, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer)]


def time_embedding(c: UNetConfig) -> nn.Sequential:
    emb_dim = c.time_embed_dim
    return nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


def adm_embedding(c: UNetConfig) -> nn.Sequential | None:
    """SDXL's pooled-text/size vector ("adm"); the extra nesting reproduces the key label_emb.0.0."""
    if not c.adm_in_channels:
        return None
    emb_dim = c.time_embed_dim
    return nn.Sequential(nn.Sequential(nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))


def encoder_stages(c: UNetConfig) -> Iterator[tuple[TimestepSequential, int]]:
    """(stage, output width) for conv_in and each encoder stage, the input_blocks in order.

    A generator, so a caller building modules per stage (the ControlNet's zero convs) creates
    them interleaved, in the order and thus with the default initialisation they always had.
    """
    mc, emb_dim = c.model_channels, c.time_embed_dim
    yield TimestepSequential(nn.Conv2d(c.in_channels, mc, 3, padding=1)), mc
    ch = mc
    depths = iter(c.transformer_depth)
    last_level = len(c.channel_mult) - 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks[level]):
            layers = [ResBlock(ch, emb_dim, mult * mc)]
            ch = mult * mc
            layers += spatial_transformer(c, ch, next(depths))
            yield TimestepSequential(*layers), ch
        if level != last_level:
            yield TimestepSequential(Downsample(ch)), ch


def middle_block(c: UNetConfig, channels: int) -> TimestepSequential:
    emb_dim = c.time_embed_dim
    return TimestepSequential(ResBlock(channels, emb_dim),
                              *spatial_transformer(c, channels, c.transformer_depth_middle),
                              ResBlock(channels, emb_dim))


def embed_inputs(net: nn.Module, c: UNetConfig, timesteps, context: torch.Tensor, y: torch.Tensor | None,
                 batch: int, device: torch.device, what: str,
                 transformer_options: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context in `net`'s dtype broadcast to `batch`, timestep + adm embedding) for a forward of
    the UNet or the ControlNet, which share these embedding layers (`time_embed`, `label_emb`).
    The MODEL's "emb_patch" patches rewrite the timestep embedding before the adm vector joins."""
    dtype = net.dtype
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.numel() == 1:
        timesteps = timesteps.reshape(1).expand(batch)
    context = context.to(dtype)
    if context.shape[0] != batch and context.shape[0] == 1:
        context = context.expand(batch, -1, -1)
    emb = net.time_embed(timestep_embedding(timesteps, c.model_channels).to(dtype))
    for patch in (transformer_options or {}).get("patches", {}).get("emb_patch", []):
        emb = patch(emb, c.model_channels, transformer_options)
    if net.label_emb is not None:
        if y is None:
            raise ValueError("this %s needs the adm vector y [B, %d]" % (what, c.adm_in_channels))
        emb = emb + net.label_emb(y.to(dtype))
    return context, emb


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        mc, emb_dim = c.model_channels, c.time_embed_dim
        self.time_embed = time_embedding(c)
        self.label_emb = adm_embedding(c)
        self.input_blocks = nn.ModuleList()
        skip_widths = []
        for stage, width in encoder_stages(c):
            self.input_blocks.append(stage)
            skip_widths.append(width)
        ch = skip_widths[-1]
        self.middle_block = middle_block(c, ch)

        self.output_blocks = nn.ModuleList()
        depths = iter(c.transformer_depth_output)
        for level in reversed(range(len(c.channel_mult))):
            for i in range(c.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_widths.pop(), emb_dim, c.channel_mult[level] * mc)]
                ch = c.channel_mult[level] * mc
                layers += spatial_transformer(c, ch, next(depths))
                if level and i == c.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    @torch.no_grad()
    def to_channels_last(self) -> "UNetModel":
        """Stores conv weights NHWC (same values) so oneDNN does not re-layout them on every call.

        Done once when a model is loaded for the CPU in a reduced precision; the forward pass then
        feeds NHWC activations. Weights a plugin swaps in later in NCHW still work, only slower.
        fp32 stays NCHW: NHWC kernels sum in another order than ComfyUI's NCHW convolutions.
        """
        conv_weights_channels_last(self)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet computes in: its weights', unless they are stored narrower (fp8)
        and cast per call, when `compute_dtype` says."""
        return getattr(self, "compute_dtype", None) or self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None,
                control: Mapping[str, Sequence] | None = None, transformer_options: dict | None = None,
                **kwargs) -> torch.Tensor:
        """Predicts the model output (eps or v, per the checkpoint) for latents `x` at `timesteps`.

        `control`: ComfyUI-style {"input", "middle", "output"} residual lists, see `_ControlFeed`;
        "output" entry k is added to the skip connection of encoder stage k, "middle" after the
        middle block, "input" after each encoder stage (last entry = stage 0). The lists are not
        modified. `transformer_options` (ComfyUI's, updated in place as the pass goes: "block",
        "transformer_index", "original_shape") carries the MODEL's patches: emb_patch,
        input_block_patch, input_block_patch_after_skip, output_block_patch,
        forward_timestep_embed_patch and the transformer blocks' attention patches, and
        "diffusion_model" wrappers around this call. The result has `x`'s dtype.
        """
        options = transformer_options if transformer_options is not None else {}
        run = wrapped(self._forward, WrappersMP.DIFFUSION_MODEL, options, class_obj=self)
        return run(x, timesteps, context, y, control, options, **kwargs)

    def _forward(self, x, timesteps, context, y=None, control=None, transformer_options=None, **kwargs):
        options = transformer_options
        options["original_shape"] = list(x.shape)
        options["transformer_index"] = 0
        patches = options.get("patches", {})
        out_dtype = x.dtype
        x = x.to(self.dtype)
        context, emb = embed_inputs(self, self.config, timesteps, context, y, x.shape[0], x.device, "UNet", options)

        feed = _ControlFeed(control)
        if x.device.type == "cpu":
            # Activations in the weights' layout. NHWC (to_channels_last, for a reduced precision):
            # oneDNN convolutions and GroupNorm run fastest on it, and the spatial transformer's
            # [B, C, H, W] <-> [B, H*W, C] reshapes become free views instead of copies.
            x = in_weights_layout(x, self.input_blocks[0][0].weight)
        skips, h = [], x
        for i, stage in enumerate(self.input_blocks):
            options["block"] = ("input", i)
            h = feed.apply("input", stage(h, emb, context, options))
            for p in patches.get("input_block_patch", []):
                h = p(h, options)
            skips.append(h)
            for p in patches.get("input_block_patch_after_skip", []):
                h = p(h, options)
        options["block"] = ("middle", 0)
        h = feed.apply("middle", self.middle_block(h, emb, context, options))
        for i, stage in enumerate(self.output_blocks):
            options["block"] = ("output", i)
            skip = feed.apply("output", skips.pop())
            for p in patches.get("output_block_patch", []):
                h, skip = p(h, skip, options)
            h = torch.cat([h, skip], dim=1)
            # An Upsample in this stage must reach the size of the skip the next stage concatenates.
            h = stage(h, emb, context, options, skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(out_dtype).contiguous()
