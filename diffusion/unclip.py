"""unCLIP: conditioning a UNet on CLIP image embeddings (Ramesh et al. 2022; Stable unCLIP 2.1).

unCLIPConditioning puts `{"clip_vision_output", "strength", "noise_augmentation"}` entries in a
conditioning's "unclip_conditioning" list. The model turns them into its `y` vector:

* each image embedding (one per image of the CLIP vision output) is noised to the level
  `round(999 * noise_augmentation)` of a squared-cosine schedule (q_sample: sqrt(a_t) x +
  sqrt(1 - a_t) n, with n from the sampler's seed - 10, as ComfyUI does), followed by the
  sinusoidal embedding of that level, and multiplied by the strength;
* several embeddings are summed and augmented again at `unclip_noise_augment_merge` (0.05 for
  SD2 unCLIP). ComfyUI draws that noise from torch's global generator right after seeding it
  with the same seed for the last embedding, so it is the second draw of a generator seeded
  with seed - 10; so it is here (on the CPU; on a GPU ComfyUI's comes from the CUDA generator).

SD2.1 unCLIP-H has a 2048-wide `y` (1024 image embedding + 1024 level embedding), unCLIP-L 1536.
Without unCLIP conditioning the `y` is zeros. SDXL reads the first 1280 values as its pooled
vector when a prompt carries unCLIP conditioning (the "revision" workflow), else the text
encoder's pooled output.

As in ComfyUI, the embedding statistics stored in unCLIP files (noise_augmentor.data_mean/std)
are not used: the augmentor normalises with mean 0 and std 1.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .unet_blocks import timestep_embedding

MAX_NOISE_LEVEL = 1000
MERGE_NOISE_AUGMENT = 0.05


def squaredcos_betas(timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """betas of the squared-cosine ("squaredcos_cap_v2") schedule, alpha_bar(t) = cos((t + 0.008)
    / 1.008 * pi / 2)^2 discretised over `timesteps` steps (Nichol & Dhariwal 2021)."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta)
                     for i in range(timesteps)])


class NoiseAugmentor:
    """CLIP embedding noise augmentation: (x, level) -> (noised x, level embedding)."""

    def __init__(self, timestep_dim: int, timesteps: int = 1000, max_noise_level: int = MAX_NOISE_LEVEL):
        alphas_cumprod = np.cumprod(1.0 - squaredcos_betas(timesteps))
        self.sqrt_alphas_cumprod = torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32)
        self.sqrt_one_minus_alphas_cumprod = torch.tensor(np.sqrt(1.0 - alphas_cumprod), dtype=torch.float32)
        self.timestep_dim = timestep_dim
        self.max_noise_level = max_noise_level

    def level(self, noise_augmentation: float) -> int:
        return round((self.max_noise_level - 1) * noise_augmentation)

    def __call__(self, x: torch.Tensor, level: int, seed: int | None, draw: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """`draw`: which draw of the generator seeded with `seed` is the noise (0 the first)."""
        x = x.reshape(1, -1).float()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for _ in range(draw + 1):
            noise = torch.randn(x.shape, dtype=x.dtype, generator=generator)
        noise = noise.to(x.device)
        noised = self.sqrt_alphas_cumprod[level].to(x.device) * x \
            + self.sqrt_one_minus_alphas_cumprod[level].to(x.device) * noise
        return noised, timestep_embedding(torch.tensor([float(level)], device=x.device), self.timestep_dim)


def unclip_adm(unclip_conditioning: list, device, augmentor: NoiseAugmentor,
               merge_augment: float = 0.0, seed: int | None = None) -> torch.Tensor:
    """The `y` vector [1, 2 * timestep_dim] for a conditioning's unCLIP entries."""
    parts = []
    for entry in unclip_conditioning:
        embeds = entry["clip_vision_output"].image_embeds
        if embeds.shape[-1] != augmentor.timestep_dim:
            raise ValueError(f"this model takes {augmentor.timestep_dim}-wide CLIP image embeddings but the CLIP "
                             f"vision output has {embeds.shape[-1]}: use the CLIP vision model made for it")
        level = augmentor.level(entry["noise_augmentation"])
        for embed in embeds:
            noised, level_embedding = augmentor(embed.to(device), level, seed)
            parts.append(torch.cat((noised, level_embedding), dim=1) * entry["strength"])
    if len(parts) == 1:
        return parts[0]
    summed = torch.stack(parts).sum(0)
    noised, level_embedding = augmentor(summed[:, :augmentor.timestep_dim], augmentor.level(merge_augment), seed,
                                        draw=1)
    return torch.cat((noised, level_embedding), dim=1)


def unclip_seed(entry: dict) -> int:
    return entry.get("seed", 0) - 10


class UnclipAdm:
    """`y` of SD2.1 unCLIP models (the DiffusionModel's adm callable)."""

    def __init__(self, adm_channels: int):
        self.adm_channels = adm_channels
        self.augmentor = NoiseAugmentor(adm_channels // 2)

    def __call__(self, entry: dict) -> torch.Tensor:
        device = entry.get("device", torch.device("cpu"))
        conditioning = entry.get("unclip_conditioning")
        if conditioning is None:
            return torch.zeros((1, self.adm_channels), device=device)
        return unclip_adm(conditioning, device, self.augmentor,
                          entry.get("unclip_noise_augment_merge", MERGE_NOISE_AUGMENT), unclip_seed(entry))


SDXL_AUGMENTOR = NoiseAugmentor(1280)


def sdxl_pooled(entry: dict) -> torch.Tensor | None:
    """SDXL's pooled vector: from unCLIP conditioning when the entry has it, else the prompt's."""
    conditioning = entry.get("unclip_conditioning")
    if conditioning is not None:
        return unclip_adm(conditioning, entry.get("device", torch.device("cpu")), SDXL_AUGMENTOR,
                          seed=unclip_seed(entry))[:, :1280]
    return entry.get("pooled_output")


__all__ = [
    "MAX_NOISE_LEVEL",
    "SDXL_AUGMENTOR",
    "NoiseAugmentor",
    "UnclipAdm",
    "sdxl_pooled",
    "squaredcos_betas",
    "unclip_adm",
]
