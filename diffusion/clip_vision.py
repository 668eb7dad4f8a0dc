"""CLIP vision towers (OpenAI ViT-L/14, OpenCLIP ViT-H/14 and ViT-bigG/14): CLIP_VISION.

The network is transformers' CLIP vision transformer and projection, whose state-dict keys
(``vision_model.*``, ``visual_projection.weight``) are the ones ComfyUI loads and saves, so
files in that layout load as they are. OpenCLIP files (``visual.conv1.weight``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``visual.proj`` used as ``x @ P``, ...)
and checkpoints that carry a vision tower under a prefix (unCLIP's ``embedder.model.visual.``)
are converted on load.

What an encode returns follows ComfyUI's comfy.clip_vision: the image is resized (shortest side
to the model's size, bicubic with antialiasing, then centre-cropped; or squashed to a square when
not cropping), rounded to 8-bit levels and normalised with CLIP's mean and std; the output holds
``last_hidden_state`` (encoder output, no final norm), ``penultimate_hidden_states`` (output of
the second-to-last layer), ``image_embeds`` (the class token through ``post_layernorm`` and the
projection) and ``mm_projected`` (None: no LLaVA projector).

Sizes come from the weights. Head counts and activations cannot: the real towers (24 layers of
1024, 32 of 1280, 48 of 1664) get ComfyUI's configs (16 heads; quick_gelu for ViT-L, gelu for
the OpenCLIP ones); any other tower gets 64-channel heads and gelu.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import CheckpointError, _cast, materialize, read_state_dict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Other image encoders ComfyUI's CLIPVisionLoader also reads, by a key only they have.
_OTHER_ENCODERS = {
    "encoder.layer.0.layer_scale1.lambda1": "a DINOv2 image encoder",
    "multi_modal_projector.linear_1.bias": "a LLaVA vision tower",
}


@dataclass(frozen=True)
class KnownTower:
    name: str
    width: int
    heads: int
    act: str


# layers -> the released tower with that depth (ComfyUI's clip_vision_config_*.json)
KNOWN_TOWERS = {
    24: KnownTower("ViT-L/14", 1024, 16, "quick_gelu"),
    32: KnownTower("ViT-H/14", 1280, 16, "gelu"),
    48: KnownTower("ViT-bigG/14", 1664, 16, "gelu"),
}


# ---------------------------------------------------------------------------------------------
# key layouts


def openclip_to_transformers(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """An OpenCLIP vision tower under `prefix` (e.g. "visual.") in transformers' layout; other
    keys are left out."""
    from .text_encoders import open_clip_to_inner  # here, so registering nodes does not load the text encoders

    own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    blocks = {k: v for k, v in own.items() if k.startswith("transformer.resblocks.")}
    inner, _, unknown = open_clip_to_inner(blocks)
    out = {"vision_model." + k: v for k, v in inner.items()}
    renames = {"class_embedding": "vision_model.embeddings.class_embedding",
               "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
               "positional_embedding": "vision_model.embeddings.position_embedding.weight",
               "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
               "ln_post.weight": "vision_model.post_layernorm.weight",
               "ln_post.bias": "vision_model.post_layernorm.bias"}
    for key, target in renames.items():
        if key in own:
            out[target] = own[key]
    if "proj" in own:
        out["visual_projection.weight"] = own["proj"].t().contiguous()
    if unknown:
        raise ValueError(f"OpenCLIP vision keys this converter does not know: {unknown[:4]}")
    return out


def to_transformers_layout(sd: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The vision tower's weights under `prefix`, in transformers' layout (ComfyUI's
    convert_to_transformers): OpenCLIP keys are converted, others only lose the prefix."""
    if prefix + "transformer.resblocks.0.attn.in_proj_weight" in sd:
        return openclip_to_transformers(sd, prefix)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def transformers_to_openclip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Back to OpenCLIP's layout (no prefix), as the original unCLIP and SVD files store it."""
    from .text_encoders import inner_to_open_clip

    inner = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.encoder.")}
    out = {k: v for k, v in inner_to_open_clip(inner).items()}
    renames = {"vision_model.embeddings.class_embedding": "class_embedding",
               "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
               "vision_model.embeddings.position_embedding.weight": "positional_embedding",
               "vision_model.pre_layrnorm.weight": "ln_pre.weight", "vision_model.pre_layrnorm.bias": "ln_pre.bias",
               "vision_model.post_layernorm.weight": "ln_post.weight",
               "vision_model.post_layernorm.bias": "ln_post.bias"}
    for key, target in renames.items():
        if key in sd:
            out[target] = sd[key]
    if "visual_projection.weight" in sd:
        out["proj"] = sd["visual_projection.weight"].t().contiguous()
    return out


def vision_config(sd: Mapping[str, torch.Tensor]):
    """transformers' CLIPVisionConfig for weights in transformers' layout."""
    from transformers import CLIPVisionConfig

    def shape(key):
        if key not in sd:
            raise ValueError(f"missing key {key!r}")
        return tuple(sd[key].shape)

    width, channels, patch, _ = shape("vision_model.embeddings.patch_embedding.weight")
    positions = shape("vision_model.embeddings.position_embedding.weight")[0]
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))})
    if layers == 0:
        raise ValueError("no encoder layers (vision_model.encoder.layers.N.*)")
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"{positions} position embeddings are not a square grid plus the class token")
    intermediate = shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0]
    projection = shape("visual_projection.weight")[0] if "visual_projection.weight" in sd else width
    known = KNOWN_TOWERS.get(layers)
    if known is not None and known.width == width:
        heads, act = known.heads, known.act
    else:
        heads, act = max(1, width // 64), "gelu"
    return CLIPVisionConfig(hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
                            num_attention_heads=heads, num_channels=channels, image_size=grid * patch,
                            patch_size=patch, projection_dim=projection, hidden_act=act, layer_norm_eps=1e-5)


def describe(config) -> str:
    known = KNOWN_TOWERS.get(config.num_hidden_layers)
    if known is not None and known.width == config.hidden_size:
        return f"CLIP {known.name} ({config.image_size}px)"
    return f"CLIP vision tower ({config.num_hidden_layers} layers of {config.hidden_size}, {config.image_size}px)"


# ---------------------------------------------------------------------------------------------
# preprocessing and output


def clip_preprocess(image: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD,
                    crop: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> normalised pixels [B, 3, size, size] (ComfyUI's steps)."""
    image = image[..., :3].movedim(-1, 1)
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(std, device=image.device, dtype=image.dtype).view(3, 1, 1)
    if image.shape[2:] != (size, size):
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            target = (size, size)
        image = nn.functional.interpolate(image, size=target, mode="bicubic", antialias=True)
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    return (image - mean) / std


class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: attributes that also answer to ["name"], as ComfyUI's Output."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)

    def __contains__(self, key) -> bool:
        return key in self.__dict__

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}
        return f"ClipVisionOutput({shapes})"


# ---------------------------------------------------------------------------------------------
# the model


class CLIPVisionModelProjection(nn.Module):
    """transformers' vision transformer and projection as our own module (ComfyUI's class name), so
    the model patcher can manage it; keys vision_model.*, visual_projection.weight."""

    def __init__(self, config):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        model = CLIPVisionModelWithProjection(config)
        self.config = config
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(last hidden state, penultimate layer's output, image embedding)."""
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        return out.last_hidden_state, out.hidden_states[-2], self.visual_projection(out.pooler_output)


class ClipVisionModel:
    """CLIP_VISION: comfy.clip_vision.ClipVisionModel's interface (model, patcher, image_size,
    image_mean, image_std, load_sd, get_sd, encode_image)."""

    def __init__(self, model: nn.Module, load_device=None, offload_device=None, manager=None, name: str = ""):
        from .model_patcher import ModelPatcher

        cpu = torch.device("cpu")
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.image_size = self.config.image_size
        self.image_mean, self.image_std = list(CLIP_MEAN), list(CLIP_STD)
        self.load_device = torch.device(load_device) if load_device is not None else cpu
        self.patcher = ModelPatcher(self.model, load_device=self.load_device,
                                    offload_device=offload_device if offload_device is not None else cpu)
        self.patcher.manager = manager
        self.name = name or describe(self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual_projection.weight.dtype

    def load_sd(self, sd: Mapping[str, torch.Tensor]):
        return self.model.load_state_dict(dict(sd), strict=False)

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        from .model_management import use_models

        use_models([self.patcher])
        device = self.model.visual_projection.weight.device
        pixels = clip_preprocess(image.to(device).float(), self.image_size, self.image_mean, self.image_std, crop)
        last, penultimate, embeds = self.model(pixels.to(self.dtype))
        cpu = torch.device("cpu")
        return ClipVisionOutput(last_hidden_state=last.to(cpu).float(), image_embeds=embeds.to(cpu).float(),
                                penultimate_hidden_states=penultimate.to(cpu).float(), mm_projected=None)

    def __repr__(self) -> str:
        return f"ClipVisionModel({self.name})"


def build(sd: dict[str, torch.Tensor], device="cpu", dtype: torch.dtype | None = None,
          source: str | os.PathLike | None = None) -> nn.Module:
    """CLIPVisionModelProjection holding `sd` (transformers' layout; consumed)."""
    try:
        config = vision_config(sd)
    except ValueError as exc:
        raise CheckpointError(source, f"not a CLIP vision tower: {exc}") from None
    weights = {k: _cast(v, device, dtype) for k, v in sd.items()
               if k.startswith(("vision_model.", "visual_projection."))}
    if "visual_projection.weight" not in weights:
        # ComfyUI's towers without a projection use the pooled output as it is.
        weights["visual_projection.weight"] = torch.eye(config.hidden_size, dtype=dtype or torch.float32,
                                                        device=device)

    def skeleton():
        model = CLIPVisionModelProjection(config)
        # a buffer, not a weight: files do not carry it, so it is made here (on the real device)
        emb = model.vision_model.embeddings
        emb.register_buffer("position_ids", torch.arange(emb.num_positions, device=device).unsqueeze(0),
                            persistent=False)
        return model

    return materialize(skeleton, weights, source, "CLIP vision")


def identify_other_encoder(sd: Mapping[str, object]) -> str | None:
    for key, what in _OTHER_ENCODERS.items():
        if key in sd:
            return what
    if any(".siglip" in k or k.startswith("vision_model.head.") for k in sd):
        return "a SigLIP vision tower"
    return None


def clip_vision_weights(sd: Mapping[str, torch.Tensor], source=None, prefix: str | None = None) -> dict:
    """The vision tower of a stand-alone file or of a checkpoint, in transformers' layout."""
    if prefix is None:
        prefix = "visual." if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd else ""
    weights = to_transformers_layout(sd, prefix)
    if "vision_model.embeddings.patch_embedding.weight" not in weights:
        other = identify_other_encoder(sd)
        if other:
            raise CheckpointError(source, f"this is {other}, which LatentGraph does not run; CLIP vision "
                                          "models (ViT-L/14, ViT-H/14, ViT-bigG/14) are supported")
        sample = ", ".join(sorted(sd)[:3])
        raise CheckpointError(source, "no CLIP vision tower found: expected vision_model.embeddings."
                                      f"patch_embedding.weight or OpenCLIP's visual.conv1.weight; first keys: {sample}")
    return weights


def load_clip_vision_state_dict(sd: Mapping[str, torch.Tensor], manager=None, source=None,
                                prefix: str | None = None, rebuild=None) -> ClipVisionModel:
    """CLIP_VISION from a state dict (a stand-alone file, or a checkpoint with `prefix`)."""
    weights = clip_vision_weights(sd, source, prefix)
    device = manager.text_encoder_offload_device() if manager is not None else "cpu"
    dtype = manager.text_encoder_dtype() if manager is not None else torch.float32
    model = build(weights, device, dtype, source)
    load_device = manager.text_encoder_device() if manager is not None else None
    vision = ClipVisionModel(model, load_device, device, manager)
    if manager is not None:
        manager.register(model, rebuild, name=f"{vision.name} of {os.path.basename(str(source))}" if source
                         else vision.name)
    return vision


def load_clip_vision(path, manager=None) -> ClipVisionModel:
    """CLIPVisionLoader: a CLIP vision file in transformers' or OpenCLIP's layout."""
    def rebuild():
        weights = clip_vision_weights(read_state_dict(path), path)
        return build(weights, manager.text_encoder_offload_device(), manager.text_encoder_dtype(), path)

    return load_clip_vision_state_dict(read_state_dict(path), manager, path, rebuild=rebuild if manager else None)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "KNOWN_TOWERS",
    "CLIPVisionModelProjection",
    "ClipVisionModel",
    "ClipVisionOutput",
    "build",
    "clip_preprocess",
    "load_clip_vision",
    "load_clip_vision_state_dict",
    "openclip_to_transformers",
    "to_transformers_layout",
    "transformers_to_openclip",
    "vision_config",
]
