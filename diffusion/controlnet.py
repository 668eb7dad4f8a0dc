"""ControlNet (Zhang, Rao & Agrawala 2023): a trainable copy of the UNet encoder steered by a hint image.

`ControlNetModel` is the UNet's encoder and middle block built from the UNet's own block classes,
plus the hint encoder (`input_hint_block`, eight 3x3 convolutions down to latent size) and one
1x1 "zero convolution" per encoder stage and after the middle block. Its attribute paths equal
the original (lllyasviel) file keys minus ``control_model.``, so those files load directly;
diffusers-layout files are renamed by `diffusers_to_original`.

Per sampling step a `Control` (the value the Apply nodes put in a conditioning entry's
"control") runs the network on the UNet's inputs and returns ComfyUI's residual dict
``{"middle": [r], "output": [r_0 .. r_n]}`` (encoder order; the UNet pops from the end), scaled
by the strength, summed with any earlier ControlNet chained before it, and only while the
step's sigma lies inside the start/end percent range.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .checkpoint import CheckpointError, _cast, materialize, read_state_dict
from .unet import (UNetConfig, adm_embedding, check_state_shapes, config_from_shapes, embed_inputs, encoder_stages,
                   meta_state_shapes, middle_block, parse_encoder_shapes, shape_lookup, shapes_under, time_embedding)
from .upscale import upscale

log = logging.getLogger(__name__)

CONTROL_PREFIX = "control_model."
# Output widths of the hint encoder's convolutions before the last one; every second one
# (after the first) halves the resolution, so a hint 8x the latent size lands on the latent grid.
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)
LATENT_SCALE = 8  # hint pixels per latent cell
# ComfyUI keeps this many prepared hints per control: area conditioning calls the same control
# with alternating crop sizes every step.
HINT_CACHE_SIZE = 2


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ControlNetConfig:
    """The UNet whose encoder the ControlNet copies (only its encoder fields matter) and the
    number of hint image channels."""

    unet: UNetConfig
    hint_channels: int = 3

    @classmethod
    def sd15(cls) -> "ControlNetConfig":
        return cls(UNetConfig.sd15())

    @classmethod
    def sd21(cls) -> "ControlNetConfig":
        return cls(UNetConfig.sd21())

    @classmethod
    def sdxl(cls) -> "ControlNetConfig":
        return cls(UNetConfig.sdxl_base())

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, object], prefix: str = "", **overrides) -> "ControlNetConfig":
        """Derives the config from original-layout keys and shapes under `prefix`.

        Like the UNet (and ComfyUI), heads are 8 for conv projections and 64-channel for linear
        ones unless `overrides` say otherwise. Raises ValueError naming a missing or mis-shaped key.
        """
        shapes = shapes_under(sd, prefix)
        need = shape_lookup(shapes, prefix, "ControlNet")
        hint_channels = need("input_hint_block.0.weight")[1]
        need("zero_convs.0.0.weight")
        fields = parse_encoder_shapes(shapes, prefix, "ControlNet")
        return config_from_shapes(lambda **f: cls(UNetConfig(**f), hint_channels), fields, overrides,
                                  shapes, prefix, "ControlNet")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape of this architecture's state dict (built on the meta device)."""
        return meta_state_shapes(ControlNetModel, self)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> None:
        # Files carry extra keys under the ControlNet prefix in some releases; loading ignores them.
        check_state_shapes(self.expected_shapes(), shapes, prefix, allow_unexpected=True)


# ---------------------------------------------------------------------------------------------
# the network


def _zero_conv(channels: int) -> nn.Sequential:
    # Nested in a Sequential only to reproduce the file key zero_convs.N.0.
    return nn.Sequential(nn.Conv2d(channels, channels, 1))


def _hint_encoder(hint_channels: int, model_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = hint_channels
    for out, stride in zip(HINT_WIDTHS, HINT_STRIDES):
        layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1), nn.SiLU()]
        width = out
    layers.append(nn.Conv2d(width, model_channels, 3, padding=1))
    return nn.Sequential(*layers)


class ControlNetModel(nn.Module):
    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        c = config.unet
        self.time_embed = time_embedding(c)
        self.label_emb = adm_embedding(c)
        self.input_hint_block = _hint_encoder(config.hint_channels, c.model_channels)
        self.input_blocks = nn.ModuleList()
        self.zero_convs = nn.ModuleList()
        for stage, width in encoder_stages(c):
            self.input_blocks.append(stage)
            self.zero_convs.append(_zero_conv(width))
        self.middle_block = middle_block(c, width)
        self.middle_block_out = _zero_conv(width)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, transformer_options: dict | None = None) -> dict[str, list]:
        """Residuals for the UNet: {"middle": [one], "output": [one per encoder stage, in order]}.

        `x` is the UNet's (already noise-scaled) input [B, C, h, w], `hint` [B, hint_channels,
        8h, 8w], `timesteps` [B] on the 0..999 scale.
        """
        dtype = self.dtype
        context, emb = embed_inputs(self, self.config.unet, timesteps, context, y, x.shape[0], x.device,
                                    "ControlNet")
        guided_hint = self.input_hint_block(hint.to(dtype))
        if guided_hint.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"hint of size {list(hint.shape[-2:])} encodes to {list(guided_hint.shape[-2:])}, "
                             f"but the latent is {list(x.shape[-2:])}: the hint must be {LATENT_SCALE}x the latent")
        options = dict(transformer_options or {})
        outs, h = [], x.to(dtype)
        for i, (stage, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            options["block"] = ("input", i)
            h = stage(h, emb, context, options)
            if i == 0:  # the hint enters once, right after conv_in
                h = h + guided_hint
            outs.append(zero_conv(h))
        options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, context, options)
        return {"middle": [self.middle_block_out(h)], "output": outs}


# ---------------------------------------------------------------------------------------------
# diffusers layout -> original layout

_RESNET_RENAMES = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                   ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))
_FIXED_RENAMES = {
    "conv_in.": "input_blocks.0.0.",
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
    "controlnet_mid_block.": "middle_block_out.0.",
    "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
    "controlnet_cond_embedding.conv_out.": f"input_hint_block.{2 * len(HINT_WIDTHS)}.",
}


def is_diffusers_controlnet(sd: Mapping[str, object]) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in sd


def _resnet(rest: str) -> str:
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(rest)


def _diffusers_block_index(sd: Mapping[str, object]) -> dict[tuple[int, int], int]:
    """(down block, resnet index) -> input_blocks index; the downsampler is resnet index -1."""
    levels: dict[int, set[int]] = {}
    has_down: set[int] = set()
    for key in sd:
        m = re.match(r"down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.", key)
        if m:
            level = int(m.group(1))
            levels.setdefault(level, set())
            if m.group(2) == "resnets":
                levels[level].add(int(m.group(3)))
            else:
                has_down.add(level)
    index, out = 1, {}
    for level in sorted(levels):
        for j in sorted(levels[level]):
            out[(level, j)] = index
            index += 1
        if level in has_down:
            out[(level, -1)] = index
            index += 1
    return out


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a diffusers ControlNetModel state dict to the original layout (no prefix).

    Raises ValueError naming the first key it cannot place (union or other ControlNet variants).
    """
    blocks = _diffusers_block_index(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = _rename_diffusers_key(key, blocks)
        if new is None:
            raise ValueError(f"diffusers ControlNet key {key!r} has no place in the SD ControlNet layout "
                             "(union/other ControlNet variants are not supported)")
        out[new] = value
    return out


# (pattern, original key from its match and the _diffusers_block_index table); first match wins.
_PATTERN_RENAMES = (
    (r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", lambda m, b: f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"),
    (r"controlnet_down_blocks\.(\d+)\.(.*)", lambda m, b: f"zero_convs.{m[1]}.0.{m[2]}"),
    (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
     lambda m, b: f"input_blocks.{b[(int(m[1]), int(m[2]))]}.0.{_resnet(m[3])}"),
    (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda m, b: f"input_blocks.{b[(int(m[1]), int(m[2]))]}.1.{m[3]}"),
    (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m, b: f"input_blocks.{b[(int(m[1]), -1)]}.0.op.{m[2]}"),
    (r"mid_block\.resnets\.([01])\.(.*)", lambda m, b: f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"),
    (r"mid_block\.attentions\.0\.(.*)", lambda m, b: f"middle_block.1.{m[1]}"),
)


def _rename_diffusers_key(key: str, blocks: dict[tuple[int, int], int]) -> str | None:
    for old, new in _FIXED_RENAMES.items():
        if key.startswith(old):
            return new + key[len(old):]
    for pattern, rename in _PATTERN_RENAMES:
        if m := re.match(pattern, key):
            try:
                return rename(m, blocks)
            except KeyError:  # a block or resnet sublayer the SD layout has no place for
                return None
    return None


# ---------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class ControlNet:
    """A loaded ControlNet: the CONTROL_NET value of the loader nodes.

    `global_average_pooling` (shuffle ControlNets) replaces every residual by its spatial mean.
    """

    model: ControlNetModel
    global_average_pooling: bool = False

    @property
    def device(self) -> torch.device:
        return self.model.time_embed[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def apply(self, hint: torch.Tensor, strength: float = 1.0, percent_range: tuple[float, float] = (0.0, 1.0),
              previous: "Control | None" = None) -> "Control":
        """A per-conditioning control with the hint image [B, C, H, W] (0..1)."""
        return Control(self, hint, float(strength), (float(percent_range[0]), float(percent_range[1])), previous)


def original_layout(sd: dict[str, torch.Tensor], source=None) -> tuple[dict[str, torch.Tensor], bool]:
    """Bare original-layout weights of a ControlNet file in any supported layout, and whether the
    file is a "diff" ControlNet (lllyasviel layout with a `difference` marker key)."""
    if is_diffusers_controlnet(sd):
        try:
            return diffusers_to_original(sd), False
        except ValueError as exc:
            raise CheckpointError(source, str(exc)) from None
    if CONTROL_PREFIX + "zero_convs.0.0.weight" in sd:
        # Other top-level keys (a full UNet, EMA copies) ride along in some releases; ComfyUI ignores them.
        bare = {k[len(CONTROL_PREFIX):]: v for k, v in sd.items() if k.startswith(CONTROL_PREFIX)}
        return bare, "difference" in sd
    if "zero_convs.0.0.weight" in sd:
        return dict(sd), False
    hint = ""
    if any(k.startswith(("adapter.", "body.", "conv_in.")) for k in sd):
        hint = " (it looks like a T2I-Adapter, which is not supported)"
    elif "lora_controlnet" in sd:
        hint = " (it looks like a Control-LoRA, which is not supported)"
    sample = ", ".join(sorted(sd)[:3])
    raise CheckpointError(source, f"not a ControlNet: expected key {CONTROL_PREFIX}zero_convs.0.0.weight, "
                                  f"zero_convs.0.0.weight or controlnet_cond_embedding.conv_in.weight{hint}; "
                                  f"{len(sd)} keys, first: {sample or '(none)'}")


def add_model_weights(sd: dict[str, torch.Tensor], unet_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diff ControlNet's real weights: each stored difference plus the same-named UNet weight,
    added in the file's dtype as ComfyUI does; keys the UNet lacks (hint block, zero convs) stay."""
    out = {}
    for key, value in sd.items():
        base = unet_sd.get(key)
        out[key] = value + base.to(value.device, value.dtype) if base is not None else value
    return out


def load_controlnet_state_dict(sd: dict[str, torch.Tensor], unet: nn.Module | None = None, device="cpu",
                               dtype: torch.dtype | None = None, source=None,
                               global_average_pooling: bool = False) -> ControlNet:
    """A ControlNet from a file's tensors (original, bare or diffusers layout).

    `unet`: the model's UNet, needed by diff ControlNets (their weights are added to its weights).
    """
    weights, is_diff = original_layout(sd, source)
    if is_diff:
        if unet is None:
            log.warning("%s is a diff ControlNet loaded without a model; it will very likely not work "
                        "(load it with DiffControlNetLoader)", source)
        else:
            weights = add_model_weights(weights, unet.state_dict())
    try:
        config = ControlNetConfig.from_state_dict(weights)
    except ValueError as exc:
        raise CheckpointError(source, str(exc)) from None
    expected = config.expected_shapes()
    weights = {k: _cast(v, device, dtype) for k, v in weights.items() if k in expected}
    model = materialize(lambda: ControlNetModel(config), weights, source, "ControlNet")
    return ControlNet(model, global_average_pooling)


def is_shuffle_file(path: str | os.PathLike) -> bool:
    """ComfyUI's rule for the shuffle ControlNet, which wants global average pooling."""
    stem = os.path.splitext(str(path))[0]
    return stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")


def load_controlnet(path: str | os.PathLike, unet: nn.Module | None = None, device="cpu",
                    dtype: torch.dtype | None = None) -> ControlNet:
    return load_controlnet_state_dict(read_state_dict(path), unet, device, dtype, Path(path),
                                      global_average_pooling=is_shuffle_file(path))


# ---------------------------------------------------------------------------------------------
# the per-step control object


def broadcast_to_batch(hint: torch.Tensor, batch: int, batched_number: int) -> torch.Tensor:
    """Repeat a hint batch for `batched_number` conditionings evaluated in one call of `batch`
    rows; a single hint serves every row as is."""
    if hint.shape[0] == 1:
        return hint
    per_cond = batch // batched_number
    hint = hint[:per_cond]
    if per_cond > hint.shape[0]:
        reps = per_cond // hint.shape[0]
        hint = torch.cat([hint] * reps + [hint[:per_cond % hint.shape[0]]])
    if hint.shape[0] == batch:
        return hint
    return torch.cat([hint] * batched_number)


def merge_residuals(own: Mapping[str, list] | None, previous: Mapping[str, list] | None) -> dict[str, list] | None:
    """Sum two residual dicts position by position (None entries take the other side's value)."""
    if previous is None:
        return None if own is None else {k: list(v) for k, v in own.items()}
    if own is None:
        return previous
    out = {k: list(own.get(k, [])) for k in ("input", "middle", "output")}
    for key in out:
        mine = out[key]
        for i, prev in enumerate(previous.get(key, [])):
            if i >= len(mine):
                mine.append(prev)
            elif prev is not None:
                mine[i] = prev if mine[i] is None else prev + mine[i]
    return out


class Control:
    """One application of a ControlNet to a conditioning (what "control" holds in its extras).

    The sampler calls `pre_run(model, percent_to_sigma)` once per sampling run and
    `get_control(x, sigma, cond, batched_number, transformer_options)` per model call; the
    result (or None when neither this nor any chained control is active) goes to the UNet.
    State kept between calls: the sigma range and model sampling of the current run, and up to
    HINT_CACHE_SIZE resized hints.
    """

    def __init__(self, net: ControlNet, hint: torch.Tensor, strength: float,
                 percent_range: tuple[float, float], previous: "Control | None" = None):
        if hint.ndim != 4:
            raise ValueError(f"the ControlNet hint must be an image batch [B, C, H, W], got shape {list(hint.shape)}")
        expected = net.model.config.hint_channels
        if hint.shape[1] != expected:
            raise ValueError(f"this ControlNet takes {expected}-channel hint images, got {hint.shape[1]} channels")
        self.net, self.hint, self.strength = net, hint, strength
        self.percent_range, self.previous = percent_range, previous
        self._sigma_range: tuple[float, float] | None = None
        self._model_sampling = None
        self._hints: dict[tuple, torch.Tensor] = {}

    def chain(self) -> list["Control"]:
        """This control and every control chained before it, newest first."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.previous
        return out

    def pre_run(self, model, percent_to_sigma) -> None:
        self._sigma_range = (percent_to_sigma(self.percent_range[0]), percent_to_sigma(self.percent_range[1]))
        self._model_sampling = model.model_sampling
        self._hints.clear()
        if self.previous is not None:
            self.previous.pre_run(model, percent_to_sigma)

    def active(self, sigma: torch.Tensor) -> bool:
        if self._sigma_range is None:
            return True
        s = float(sigma.reshape(-1)[0])
        return not (s > self._sigma_range[0] or s < self._sigma_range[1])

    def _hint_for(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        hint = self._hints.get(size)
        if hint is None:
            hint = upscale(self.hint.float(), x.shape[3] * LATENT_SCALE, x.shape[2] * LATENT_SCALE,
                           "nearest-exact", "center")
            hint = hint.to(device=x.device, dtype=self.net.dtype)
            while len(self._hints) >= HINT_CACHE_SIZE:
                self._hints.pop(next(iter(self._hints)))
            self._hints[size] = hint
        return hint

    def get_control(self, x: torch.Tensor, sigma: torch.Tensor, cond: Mapping, batched_number: int,
                    transformer_options: dict | None = None) -> dict[str, list] | None:
        previous = None
        if self.previous is not None:
            previous = self.previous.get_control(x, sigma, cond, batched_number, transformer_options)
        if not self.active(sigma):
            return previous
        if self._model_sampling is None:
            raise RuntimeError("Control.get_control called before pre_run (the sampler sets the model up)")
        ms = self._model_sampling
        net = self.net
        hint = self._hint_for(x)
        if hint.shape[0] != x.shape[0]:
            hint = broadcast_to_batch(hint, x.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond.get("c_crossattn"))
        if context is None:
            raise ValueError("ControlNet needs cross-attention conditioning (c_crossattn)")
        y = cond.get("y")
        xc = ms.calculate_input(sigma, x)
        timesteps = ms.timestep(sigma).float()
        dtype, device = net.dtype, net.device
        residuals = net.model(xc.to(device, dtype), hint, timesteps.to(device), context.to(device, dtype),
                              None if y is None else y.to(device, dtype), transformer_options)
        return merge_residuals(self._scale(residuals, x.device), previous)

    def _scale(self, residuals: dict[str, list], device: torch.device) -> dict[str, list]:
        out = {}
        for key, values in residuals.items():
            scaled = []
            for r in values:
                if r is not None:
                    if self.net.global_average_pooling:
                        r = r.mean(dim=(2, 3), keepdim=True).expand_as(r)
                    r = (r * self.strength).to(device)
                scaled.append(r)
            out[key] = scaled
        return out

    def __repr__(self) -> str:
        return (f"Control(strength={self.strength}, percent_range={self.percent_range}, "
                f"chained={len(self.chain()) - 1})")
