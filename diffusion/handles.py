"""What MODEL, CLIP and VAE values hold between nodes, and how a checkpoint becomes them.

MODEL is a `DiffusionModel`; CLIP and VAE are small handles pairing the network with the device
and dtype it computes in, so nodes stay one call each. Handles are cheap to clone: a clone
shares the weights (CLIPSetLastLayer, ModelSamplingDiscrete never copy a network).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from diffusion import tiling
from diffusion.checkpoint import load_checkpoint, load_vae, read_state_dict
from diffusion.device import DevicePolicy, ModelCache
from diffusion.model import DiffusionModel
from diffusion.model_sampling import ModelSamplingDiscrete
from diffusion.patches import WeightPatch, applied, patches_of
from diffusion.prompt_weights import EmbeddingDirectory
from diffusion.vae import AutoencoderKL

VAE_SCALE = 8  # pixels per latent cell


@dataclass
class ModelServices:
    """Device policy and the loaded-model cache shared by the loader nodes."""

    policy: DevicePolicy = field(default_factory=DevicePolicy.choose)
    cache: ModelCache = field(default_factory=ModelCache)


@dataclass(frozen=True)
class ClipHandle:
    encoder: torch.nn.Module  # diffusion.text_encoders.TextEncoder
    clip_skip: int | None = None  # None: the family's default layer (CLIPSetLastLayer sets it)
    patches: tuple[WeightPatch, ...] = ()  # LoRA patches, applied only while encoding

    def with_last_layer(self, stop_at_clip_layer: int) -> "ClipHandle":
        return replace(self, clip_skip=stop_at_clip_layer)

    def with_patches(self, patches) -> "ClipHandle":
        return replace(self, patches=self.patches + tuple(patches))

    def tokenize(self, text: str) -> dict:
        return self.encoder.tokenize(text)

    def encode_tokens(self, tokens: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode(), applied(self.encoder, self.patches):
            cond, pooled = self.encoder.encode(tokens, self.clip_skip)
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

    def encode(self, text: str) -> list:
        """CONDITIONING for one prompt: [[cond, {"pooled_output": pooled}]]."""
        cond, pooled = self.encode_tokens(self.tokenize(text))
        return [[cond, {"pooled_output": pooled}]]


@dataclass(frozen=True)
class VAEHandle:
    vae: AutoencoderKL
    device: torch.device
    dtype: torch.dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 -> latent [B, 4, H/8, W/8] (unscaled, on the CPU)."""
        pixels = crop_to_multiple(image[..., :3], VAE_SCALE)
        pixels = pixels.movedim(-1, 1).to(self.device, self.dtype) * 2.0 - 1.0
        with torch.inference_mode():
            return self.vae.encode(pixels).float().cpu()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent -> IMAGE [B, H, W, 3] in 0..1 on the CPU."""
        with torch.inference_mode():
            pixels = self.vae.decode(latent.to(self.device, self.dtype)).float()
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()

    def decode_tiled(self, samples: torch.Tensor, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, tile_t: int | None = None, overlap_t: int | None = None,
                     progress: tiling.Progress | None = None) -> torch.Tensor:
        """ComfyUI's VAE.decode_tiled: latent -> IMAGE [B, H, W, 3]; tiles and overlap in latent
        cells (64 and 16 when not given). tile_t/overlap_t only matter to video VAEs."""
        def decode(part: torch.Tensor) -> torch.Tensor:
            return self.vae.decode_raw(part.to(self.device, self.dtype)).float()

        with torch.inference_mode():
            pixels = tiling.decode_tiled(decode, samples, self.vae.config.downscale, self.vae.config.out_channels,
                                         tile_x, tile_y, overlap, progress)
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    def encode_tiled(self, pixel_samples: torch.Tensor, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, tile_t: int | None = None, overlap_t: int | None = None,
                     progress: tiling.Progress | None = None) -> torch.Tensor:
        """ComfyUI's VAE.encode_tiled: IMAGE -> latent; tiles and overlap in pixels (512 and 64
        when not given). tile_t/overlap_t only matter to video VAEs."""
        def encode(part: torch.Tensor) -> torch.Tensor:
            return self.vae.encode_mean((part * 2.0 - 1.0).to(self.device, self.dtype)).float()

        pixels = crop_to_multiple(pixel_samples[..., :3], self.vae.config.downscale).movedim(-1, 1)
        with torch.inference_mode():
            return tiling.encode_tiled(encode, pixels.float(), self.vae.config.downscale, self.vae.config.embed_dim,
                                       tile_x, tile_y, overlap, progress)


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop [B, H, W, C] so H and W are multiples of `multiple`, as ComfyUI's VAE does."""
    h, w = image.shape[1:3]
    new_h, new_w = h // multiple * multiple, w // multiple * multiple
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {w}x{h} pixels is too small to encode: both sides must be at least {multiple}")
    top, left = (h % multiple) // 2, (w % multiple) // 2
    return image[:, top:top + new_h, left:left + new_w, :]


@dataclass(frozen=True)
class LoadedModels:
    model: DiffusionModel | None
    clip: ClipHandle | None
    vae: VAEHandle | None


def family_of(info) -> str:
    """Model family name for latent format and conditioning ("sd1", "sd2", "sdxl", "sdxl_refiner")."""
    return {"sd1_inpaint": "sd1", "sd2_v": "sd2"}.get(info.family, info.family)


def open_checkpoint(path: Path, policy: DevicePolicy, embedding_dirs: list[Path]) -> LoadedModels:
    loaded = load_checkpoint(path, device=policy.load_device, unet_dtype=policy.unet_dtype,
                             vae_dtype=policy.vae_dtype, text_dtype=policy.text_dtype)
    info = loaded.info
    model = DiffusionModel(loaded.unet, ModelSamplingDiscrete(info.prediction), family=family_of(info))
    clip = None
    if loaded.text is not None:
        loaded.text.embeddings = EmbeddingDirectory(embedding_dirs)
        clip = ClipHandle(loaded.text)
    vae = VAEHandle(loaded.vae, policy.load_device, policy.vae_dtype) if loaded.vae is not None else None
    return LoadedModels(model, clip, vae)


def open_vae(path: Path, policy: DevicePolicy) -> VAEHandle:
    vae = load_vae(read_state_dict(path), policy.load_device, policy.vae_dtype, path)
    return VAEHandle(vae, policy.load_device, policy.vae_dtype)


def with_model_sampling(model: DiffusionModel, change: Callable[[ModelSamplingDiscrete], ModelSamplingDiscrete]
                        ) -> DiffusionModel:
    """A shallow clone of MODEL with different sampling maths; the UNet is shared, not copied."""
    clone = copy.copy(model)
    clone.model_sampling = change(model.model_sampling)
    return clone


def with_weight_patches(model: DiffusionModel, patches) -> DiffusionModel:
    """A shallow clone of MODEL carrying `patches` after its own; the UNet is shared, not copied
    (the patches are applied around each sampling call, see diffusion.patches)."""
    clone = copy.copy(model)
    clone.weight_patches = patches_of(model) + tuple(patches)
    return clone
