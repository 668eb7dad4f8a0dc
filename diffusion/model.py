"""DiffusionModel: a UNet plus its sigma table and latent format, exposed as a denoiser.

Samplers only ever call `model(x, sigma, **extra_args) -> x0`; this class is where a raw UNet
(eps or v prediction, 0..999 integer timesteps, VP-scaled input) becomes that denoiser, and where
the per-family extra inputs are built from ComfyUI-style conditioning: SDXL's `y` vector and the
inpainting models' extra input channels.
"""

from __future__ import annotations

import math

import torch

from .latent_formats import LatentFormat, latent_format_for
from .model_sampling import ModelSamplingDiscrete
from .upscale import upscale

INPAINT_CONCAT_KEYS = ("mask", "masked_image")

# The SD latent of an all-grey (0 in -1..1) image, per channel: what an inpainting model is
# shown as the "masked image" when the conditioning carries no image.
_BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the LDM code base: [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _embed_scalars(values, dim: int = 256) -> torch.Tensor:
    return torch.flatten(torch.cat([timestep_embedding(torch.tensor([float(v)]), dim) for v in values]))


def repeat_to_batch_size(t: torch.Tensor, batch_size: int) -> torch.Tensor:
    if t.shape[0] > batch_size:
        return t[:batch_size]
    if t.shape[0] < batch_size:
        return t.repeat([math.ceil(batch_size / t.shape[0])] + [1] * (t.ndim - 1))[:batch_size]
    return t


def resize_to_batch_size(t: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ComfyUI's batch resampling for conditioning images: nearest index over the batch (a
    batch of 2 made 4 is [0, 0, 1, 1], not [0, 1, 0, 1] as repetition would give)."""
    n = t.shape[0]
    if n == batch_size:
        return t
    if batch_size <= 1:
        return t[:batch_size]
    if batch_size < n:
        scale = (n - 1) / (batch_size - 1)
        index = [min(round(i * scale), n - 1) for i in range(batch_size)]
    else:
        scale = n / batch_size
        index = [min(math.floor((i + 0.5) * scale), n - 1) for i in range(batch_size)]
    return t[torch.tensor(index, device=t.device)]


def _pooled(extras: dict) -> torch.Tensor:
    pooled = extras.get("pooled_output")
    if pooled is None:
        raise ValueError("SDXL conditioning needs a pooled_output (encode the prompt with an SDXL CLIP)")
    return pooled


def sdxl_adm(pooled: torch.Tensor, width: int, height: int, crop_w: int = 0, crop_h: int = 0,
             target_width: int | None = None, target_height: int | None = None) -> torch.Tensor:
    """SDXL base `y` [B, 2816]: pooled bigG embedding (1280) then 256-d embeddings of original
    height, width, crop top, crop left, target height, target width (Podell et al. 2023, 2.2)."""
    target_width = width if target_width is None else target_width
    target_height = height if target_height is None else target_height
    flat = _embed_scalars([height, width, crop_h, crop_w, target_height, target_width])
    flat = flat.unsqueeze(0).repeat(pooled.shape[0], 1)
    return torch.cat((pooled.to(flat.device, flat.dtype), flat), dim=1)


def sdxl_refiner_adm(pooled: torch.Tensor, width: int, height: int, crop_w: int = 0, crop_h: int = 0,
                     aesthetic_score: float = 6.0) -> torch.Tensor:
    """SDXL refiner `y` [B, 2560]: pooled (1280) then embeddings of height, width, crop top, crop
    left and the aesthetic score."""
    flat = _embed_scalars([height, width, crop_h, crop_w, aesthetic_score])
    flat = flat.unsqueeze(0).repeat(pooled.shape[0], 1)
    return torch.cat((pooled.to(flat.device, flat.dtype), flat), dim=1)


class SDXLAdm:
    """Builds SDXL base `y` from a conditioning entry's extras; the image size defaults to the
    latent's size times 8 (as ComfyUI does when the encoder node set none)."""

    def __call__(self, extras: dict, noise_shape, prompt_type: str = "positive") -> torch.Tensor:
        width = extras.get("width", noise_shape[3] * 8)
        height = extras.get("height", noise_shape[2] * 8)
        return sdxl_adm(_pooled(extras), width, height, extras.get("crop_w", 0), extras.get("crop_h", 0),
                        extras.get("target_width", width), extras.get("target_height", height))


class SDXLRefinerAdm:
    """Builds the refiner's `y`; the default aesthetic score is 6 for positive prompts and 2.5 for
    negative ones (the refiner was trained to steer away from low scores)."""

    def __call__(self, extras: dict, noise_shape, prompt_type: str = "positive") -> torch.Tensor:
        width = extras.get("width", noise_shape[3] * 8)
        height = extras.get("height", noise_shape[2] * 8)
        score = extras.get("aesthetic_score", 2.5 if prompt_type == "negative" else 6.0)
        return sdxl_refiner_adm(_pooled(extras), width, height, extras.get("crop_w", 0), extras.get("crop_h", 0),
                                score)


def default_adm(family: str):
    family = family.lower()
    if family in ("sdxl_refiner",):
        return SDXLRefinerAdm()
    if family.startswith("sdxl"):
        return SDXLAdm()
    return None


def _resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear to h x w after a centre crop to that aspect (ComfyUI's common_upscale "center")."""
    if t.shape[-2:] == (h, w):
        return t
    return upscale(t, w, h, "bilinear", "center")


class DiffusionModel:
    """A UNet wrapped as a denoiser D(x, sigma) over model-space latents.

    `unet(x, timesteps, context, y=None, control=None, transformer_options=None)` is any callable
    with the UNetModel contract. `adm` builds SDXL's `y` (defaults from the family); `concat_keys`
    names the extra input channels of inpainting models (detected from a UNet config whose
    in_channels is 9).
    """

    def __init__(self, unet, model_sampling: ModelSamplingDiscrete | None = None,
                 latent_format: LatentFormat | None = None, family: str = "sd1", adm=None, *,
                 concat_keys: tuple[str, ...] | None = None):
        self.unet = unet
        self.family = family
        self.model_sampling = model_sampling if model_sampling is not None else ModelSamplingDiscrete()
        self.latent_format = latent_format if latent_format is not None else latent_format_for(family)
        self.adm = adm if adm is not None else default_adm(family)
        if concat_keys is None:
            in_channels = getattr(getattr(unet, "config", None), "in_channels", None)
            extra = (in_channels or 0) - self.latent_format.latent_channels
            concat_keys = INPAINT_CONCAT_KEYS if extra == 5 else ()
        self.concat_keys = tuple(concat_keys)

    @property
    def dtype(self) -> torch.dtype:
        params = getattr(self.unet, "parameters", None)
        if params is not None:
            for p in params():
                return p.dtype
        return torch.float32

    # -- the denoiser ------------------------------------------------------------------------

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """x0 estimate for model-space latents x at noise levels sigma [B]. `cond` holds
        "c_crossattn" [B, T, D], optional "y", "c_concat" and "control", "transformer_options"."""
        ms = self.model_sampling
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        if sigma.shape[0] == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        xc = ms.calculate_input(sigma, x)
        if cond.get("c_concat") is not None:
            # The extra channels are not noise-scaled: they are conditioning, not part of x.
            xc = torch.cat([xc, cond["c_concat"].to(xc.device, xc.dtype)], dim=1)
        dtype = self.dtype
        timesteps = ms.timestep(sigma).float()
        context = cond.get("c_crossattn")
        if context is not None:
            context = context.to(xc.device, dtype)
        kwargs = {}
        if cond.get("y") is not None:
            kwargs["y"] = cond["y"].to(xc.device, dtype)
        out = self.unet(xc.to(dtype), timesteps, context=context, control=cond.get("control"),
                        transformer_options=cond.get("transformer_options", {}), **kwargs)
        return ms.calculate_denoised(sigma, out.float(), x)

    def __call__(self, x, sigma, cond: dict | None = None) -> torch.Tensor:
        return self.denoise(x, sigma, cond or {})

    # -- latents -----------------------------------------------------------------------------

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    # -- conditioning -> model inputs --------------------------------------------------------

    def model_conds(self, cond_tensor: torch.Tensor, extras: dict, noise: torch.Tensor,
                    latent_image: torch.Tensor | None = None, denoise_mask: torch.Tensor | None = None,
                    prompt_type: str = "positive") -> dict:
        """The per-entry model inputs of one conditioning entry ([cond, extras]), at batch size 1
        or the noise's; the CFG wrapper repeats and crops them per call."""
        out = {"c_crossattn": cond_tensor}
        if self.adm is not None:
            out["y"] = self.adm(extras, noise.shape, prompt_type)
        if self.concat_keys:
            out["c_concat"] = self.inpaint_concat(noise, latent_image, denoise_mask, extras)
        return out

    def inpaint_concat(self, noise: torch.Tensor, latent_image: torch.Tensor | None,
                       denoise_mask: torch.Tensor | None, extras: dict | None = None) -> torch.Tensor:
        """Extra input channels of an inpainting UNet, in the order it was trained on: the mask
        (1 channel, 1 = repaint) then the masked image's model-space latent (4 channels); the UNet
        input is then [x, mask, masked_image] (9 channels)."""
        extras = extras or {}
        b, _, h, w = noise.shape
        mask = extras.get("concat_mask", denoise_mask)
        image = extras.get("concat_latent_image")
        image = latent_image if image is None else self.process_latent_in(image)
        parts = []
        for key in self.concat_keys:
            if mask is None:
                if key == "mask":
                    parts.append(torch.ones_like(noise)[:, :1])
                elif key == "masked_image":
                    blank = torch.tensor(_BLANK_INPAINT_LATENT, dtype=noise.dtype, device=noise.device)
                    parts.append(blank.view(1, -1, 1, 1).expand(b, -1, h, w).clone())
                continue
            if key == "mask":
                m = mask[:, :1] if mask.ndim == noise.ndim else mask
                m = _resize(m.reshape((-1, 1) + tuple(m.shape[-2:])).to(noise.dtype), h, w)
                parts.append(resize_to_batch_size(m.round(), b).to(noise.device))
            elif key == "masked_image":
                if image is None:
                    raise ValueError("inpainting needs the latent image to condition on")
                parts.append(resize_to_batch_size(_resize(image.to(noise.dtype), h, w), b).to(noise.device))
        return torch.cat(parts, dim=1)
