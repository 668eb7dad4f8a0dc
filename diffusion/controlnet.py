"""ControlNet (Zhang, Rao & Agrawala 2023): a trainable copy of the UNet encoder steered by a hint image.

`ControlNetModel` is the UNet's encoder and middle block built from the UNet's own block classes,
plus the hint encoder (`input_hint_block`, eight 3x3 convolutions down to latent size) and one
1x1 "zero convolution" per encoder stage and after the middle block. Its attribute paths equal
the original (lllyasviel) file keys minus ``control_model.``, so those files load directly;
diffusers-layout files are renamed by `diffusers_to_original`.

CONTROL_NET is a `ControlNet` (ComfyUI's comfy.controlnet.ControlNet, API and all). The Apply
nodes put a `copy()` of it with the hint, strength and step range in a conditioning entry's
"control"; per sampling step it runs the network on the UNet's inputs and returns ComfyUI's
residual dict ``{"middle": [r], "output": [r_0 .. r_n]}`` (encoder order; the UNet pops from the
end), scaled by the strength, summed with any earlier ControlNet chained before it, and only
while the step's sigma lies inside the start/end percent range.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from enum import Enum
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
                               global_average_pooling: bool = False, load_device=None, manager=None) -> "ControlNet":
    """A ControlNet from a file's tensors (original, bare or diffusers layout), weights on `device`,
    computing on `load_device` (default: where the weights are).

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
    return ControlNet(model, global_average_pooling=global_average_pooling,
                      load_device=load_device if load_device is not None else device, offload_device=device,
                      manager=manager)


def is_shuffle_file(path: str | os.PathLike) -> bool:
    """ComfyUI's rule for the shuffle ControlNet, which wants global average pooling."""
    stem = os.path.splitext(str(path))[0]
    return stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")


def load_controlnet(path: str | os.PathLike, unet: nn.Module | None = None, device="cpu",
                    dtype: torch.dtype | None = None, load_device=None, manager=None) -> "ControlNet":
    """A ControlNet file as a CONTROL_NET; with a `manager` (the model-lifetime service) its network
    is registered and rebuilt from the file if released."""
    net = load_controlnet_state_dict(read_state_dict(path), unet, device, dtype, Path(path),
                                     global_average_pooling=is_shuffle_file(path), load_device=load_device,
                                     manager=manager)
    if manager is not None:
        rebuild = None
        if unet is None:
            def rebuild():
                return load_controlnet_state_dict(read_state_dict(path), None, device, dtype, Path(path)).control_model
        manager.register(net.control_model, rebuild, name=f"ControlNet {Path(path).name}")
    return net


# ---------------------------------------------------------------------------------------------
# the CONTROL_NET object (ComfyUI's comfy.controlnet.ControlBase / ControlNet)


def broadcast_image_to(hint: torch.Tensor, batch: int, batched_number: int) -> torch.Tensor:
    """Repeat a hint batch for `batched_number` conditionings evaluated in one call of `batch`
    rows; a single hint serves every row as is."""
    if hint.shape[0] == 1:
        return hint
    per_cond = batch // batched_number
    hint = hint[:per_cond]
    if per_cond > hint.shape[0]:
        hint = torch.cat([hint] * (per_cond // hint.shape[0]) + [hint[:per_cond % hint.shape[0]]])
    if hint.shape[0] == batch:
        return hint
    return torch.cat([hint] * batched_number)


class StrengthType(Enum):
    CONSTANT = 1
    LINEAR_UP = 2


class ControlBase:
    """What every CONTROL_NET is: a hint image, strength and step range (set per application by
    `set_cond_hint` on a `copy()`), chained to the control applied before it. The sampler calls
    `pre_run(model, percent_to_sigma)` once per run, `get_control(x, sigma, cond, batched_number,
    transformer_options)` per model call (residuals {"input", "middle", "output"} or None when
    neither this nor a chained control is active) and `cleanup()` after."""

    def __init__(self):
        self.cond_hint_original = None
        self.cond_hint = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.latent_format = None
        self.vae = None
        self.global_average_pooling = False
        self.timestep_range = None
        self.compression_ratio = LATENT_SCALE
        self.upscale_algorithm = "nearest-exact"
        self.extra_args: dict = {}
        self.previous_controlnet: ControlBase | None = None
        self.extra_conds: list[str] = []
        self.strength_type = StrengthType.CONSTANT
        self.concat_mask = False
        self.extra_concat_orig: list = []
        self.extra_concat = None
        self.extra_hooks = None
        self.preprocess_image = lambda a: a

    def set_cond_hint(self, cond_hint: torch.Tensor, strength: float = 1.0, timestep_percent_range=(0.0, 1.0),
                      vae=None, extra_concat=()) -> "ControlBase":
        """`cond_hint` [B, C, H, W] in 0..1 (the image moved channel-first)."""
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        if self.latent_format is not None:
            if vae is None:
                log.warning("this ControlNet needs a VAE and the apply node was given none")
            self.vae = vae
        self.extra_concat_orig = list(extra_concat)
        return self

    def set_previous_controlnet(self, controlnet) -> "ControlBase":
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model, percent_to_timestep_function) -> None:
        self.timestep_range = (percent_to_timestep_function(self.timestep_percent_range[0]),
                               percent_to_timestep_function(self.timestep_percent_range[1]))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.cond_hint = None
        self.extra_concat = None
        self.timestep_range = None

    def get_models(self) -> list:
        return self.previous_controlnet.get_models() if self.previous_controlnet is not None else []

    def get_extra_hooks(self) -> list:
        out = [self.extra_hooks] if self.extra_hooks is not None else []
        if self.previous_controlnet is not None:
            out += self.previous_controlnet.get_extra_hooks()
        return out

    def copy_to(self, c: "ControlBase") -> None:
        for name in ("cond_hint_original", "strength", "timestep_percent_range", "global_average_pooling",
                     "compression_ratio", "upscale_algorithm", "latent_format", "vae", "strength_type",
                     "concat_mask", "preprocess_image", "extra_hooks"):
            setattr(c, name, getattr(self, name))
        c.extra_args = dict(self.extra_args)
        c.extra_conds = list(self.extra_conds)
        c.extra_concat_orig = list(self.extra_concat_orig)

    def inference_memory_requirements(self, dtype) -> int:
        return self.previous_controlnet.inference_memory_requirements(dtype) if self.previous_controlnet else 0

    def control_merge(self, control: dict, control_prev: dict | None, output_dtype) -> dict:
        """This control's residuals scaled by the strength (global-average-pooled for shuffle
        models), summed position by position with the chained control's."""
        out: dict[str, list] = {"input": [], "middle": [], "output": []}
        for key, outputs in control.items():
            for i, x in enumerate(outputs):
                if x is not None:
                    if self.global_average_pooling:
                        x = torch.mean(x, dim=(2, 3), keepdim=True).repeat(1, 1, x.shape[2], x.shape[3])
                    if self.strength_type == StrengthType.CONSTANT:
                        x = x * self.strength
                    else:
                        x = x * (self.strength ** float(len(outputs) - i))
                    if output_dtype is not None and x.dtype != output_dtype:
                        x = x.to(output_dtype)
                out[key].append(x)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                mine = out[key]
                for i, prev in enumerate(control_prev.get(key, [])):
                    if i >= len(mine):
                        mine.append(prev)
                    elif prev is not None:
                        mine[i] = prev if mine[i] is None else prev + mine[i]
        return out

    def set_extra_arg(self, argument: str, value=None) -> None:
        self.extra_args[argument] = value

    def apply(self, hint: torch.Tensor, strength: float = 1.0, percent_range=(0.0, 1.0),
              previous: "ControlBase | None" = None) -> "ControlBase":
        """What the Apply ControlNet nodes put in a conditioning entry: a copy with this hint,
        strength and step range, chained after `previous`."""
        if hint.ndim != 4:
            raise ValueError(f"the ControlNet hint must be an image batch [B, C, H, W], got shape {list(hint.shape)}")
        expected = getattr(getattr(getattr(self, "control_model", None), "config", None), "hint_channels", None)
        if expected is not None and hint.shape[1] != expected:
            raise ValueError(f"this ControlNet takes {expected}-channel hint images, got {hint.shape[1]} channels")
        return self.copy().set_cond_hint(hint, strength, (float(percent_range[0]), float(percent_range[1]))) \
            .set_previous_controlnet(previous)

    def chain(self) -> list:
        """This control and every control chained before it, newest first."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.previous_controlnet
        return out


class ControlNet(ControlBase):
    """A ControlNet network (ControlNetModel) as a CONTROL_NET."""

    def __init__(self, control_model: ControlNetModel | None = None, global_average_pooling: bool = False,
                 compression_ratio: int = LATENT_SCALE, latent_format=None, load_device=None, manual_cast_dtype=None,
                 extra_conds=("y",), strength_type=StrengthType.CONSTANT, concat_mask: bool = False,
                 preprocess_image=lambda a: a, offload_device=None, manager=None):
        super().__init__()
        self.control_model = control_model
        self.load_device = torch.device(load_device) if load_device is not None else torch.device("cpu")
        self.offload_device = torch.device(offload_device) if offload_device is not None else self.load_device
        self.control_model_wrapped = None
        if control_model is not None:
            from .model_patcher import ModelPatcher
            self.control_model_wrapped = ModelPatcher(control_model, load_device=self.load_device,
                                                      offload_device=self.offload_device)
            self.control_model_wrapped.manager = manager
        self.compression_ratio = compression_ratio
        self.global_average_pooling = global_average_pooling
        self.model_sampling_current = None
        self.manual_cast_dtype = manual_cast_dtype
        self.latent_format = latent_format
        self.extra_conds += list(extra_conds)
        self.strength_type = strength_type
        self.concat_mask = concat_mask
        self.preprocess_image = preprocess_image

    @property
    def model(self) -> ControlNetModel:
        return self.control_model

    @property
    def dtype(self) -> torch.dtype:
        return self.manual_cast_dtype or self.control_model.dtype

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond, batched_number: int,
                    transformer_options: dict | None = None):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        if self.model_sampling_current is None:
            raise RuntimeError("ControlNet.get_control called before pre_run (the sampler sets the model up)")
        dtype = self.dtype
        size = (x_noisy.shape[2] * self.compression_ratio, x_noisy.shape[3] * self.compression_ratio)
        if self.cond_hint is None or tuple(self.cond_hint.shape[2:]) != size:
            hint = upscale(self.cond_hint_original.float(), size[1], size[0], self.upscale_algorithm, "center")
            self.cond_hint = self.preprocess_image(hint).to(device=x_noisy.device, dtype=dtype)
        if self.cond_hint.shape[1] != self.control_model.config.hint_channels:
            raise ValueError(f"this ControlNet takes {self.control_model.config.hint_channels}-channel hint images, "
                             f"got {self.cond_hint.shape[1]} channels")
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        context = cond.get("crossattn_controlnet", cond.get("c_crossattn"))
        if context is None:
            raise ValueError("ControlNet needs cross-attention conditioning (c_crossattn)")
        extra = dict(self.extra_args)
        for name in self.extra_conds:
            value = cond.get(name)
            if value is not None:
                extra[name] = value.to(x_noisy.device, dtype)
        ms = self.model_sampling_current
        timestep = ms.timestep(t)
        xc = ms.calculate_input(t, x_noisy)
        control = self.control_model(x=xc.to(dtype), hint=self.cond_hint, timesteps=timestep.to(dtype),
                                     context=context.to(x_noisy.device, dtype), **extra)
        return self.control_merge(control, control_prev, output_dtype=None)

    def copy(self) -> "ControlNet":
        c = ControlNet(None, global_average_pooling=self.global_average_pooling, load_device=self.load_device,
                       manual_cast_dtype=self.manual_cast_dtype)
        c.control_model = self.control_model
        c.control_model_wrapped = self.control_model_wrapped
        c.offload_device = self.offload_device
        self.copy_to(c)
        return c

    def get_models(self) -> list:
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model, percent_to_timestep_function) -> None:
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self) -> None:
        self.model_sampling_current = None
        super().cleanup()

    def __repr__(self) -> str:
        return (f"ControlNet(strength={self.strength}, percent_range={self.timestep_percent_range}, "
                f"chained={len(self.chain()) - 1})")
