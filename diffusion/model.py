"""DiffusionModel: a UNet plus its sigma table and latent format, exposed as a denoiser.

This is what ComfyUI calls the BaseModel and what a ModelPatcher's `.model` is, with the same
attribute names because plugins reach into it: `diffusion_model` (the UNet), `model_sampling`,
`latent_format`, `model_type`, `model_config`, `apply_model(x, sigma, c_crossattn=..., ...)`,
`extra_conds(**entry)`, `process_latent_in/out`, `memory_required`, `get_dtype`. It is an
nn.Module so its state dict names the UNet's weights "diffusion_model.<key>", the keys weight
patches (LoRA) are addressed by.

`apply_model` is where a raw UNet (eps or v prediction, 0..999 timesteps, VP-scaled input)
becomes the denoiser D(x, sigma) -> x0; `extra_conds` builds the per-family model inputs from a
conditioning entry: SDXL's `y` vector and the inpainting models' extra input channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

from .conds import CONDCrossAttn, CONDNoiseShape, CONDRegular, repeat_to_batch_size
from .latent_formats import LatentFormat, latent_format_for
from .model_sampling import ModelSamplingContinuousEDM, ModelSamplingContinuousV, ModelSamplingDiscrete
from .patcher_extension import WrappersMP, wrapped
from .unet_blocks import timestep_embedding
from .upscale import upscale

INPAINT_CONCAT_KEYS = ("mask", "masked_image")

# The SD latent of an all-grey (0 in -1..1) image, per channel: what an inpainting model is
# shown as the "masked image" when the conditioning carries no image.
_BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


class ModelType(Enum):
    """What the network predicts (ComfyUI's comfy.model_base.ModelType, same values)."""
    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9
    FLOW_COSMOS = 10


def model_type_of(model_sampling) -> ModelType:
    """ComfyUI's model type for a model sampling: its prediction, and for v-prediction the axis."""
    prediction = getattr(model_sampling, "prediction", "eps")
    if prediction == "edm":
        return ModelType.EDM
    if prediction != "v_prediction":
        return ModelType.EPS
    if isinstance(model_sampling, ModelSamplingContinuousV):
        return ModelType.V_PREDICTION_CONTINUOUS
    if isinstance(model_sampling, ModelSamplingContinuousEDM):
        return ModelType.V_PREDICTION_EDM
    return ModelType.V_PREDICTION


def _embed_scalars(values, dim: int = 256) -> torch.Tensor:
    return torch.flatten(torch.cat([timestep_embedding(torch.tensor([float(v)]), dim) for v in values]))


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
    from .unclip import sdxl_pooled  # unCLIP conditioning, when present, stands in for the prompt's

    pooled = sdxl_pooled(extras)
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
    """Builds SDXL base `y` from a conditioning entry; the sampler fills width/height with the
    latent's size times 8 when the encoder node set none (ComfyUI's 768 default is never reached)."""

    def __call__(self, entry: dict) -> torch.Tensor:
        width, height = entry.get("width", 768), entry.get("height", 768)
        return sdxl_adm(_pooled(entry), width, height, entry.get("crop_w", 0), entry.get("crop_h", 0),
                        entry.get("target_width", width), entry.get("target_height", height))


class SDXLRefinerAdm:
    """Builds the refiner's `y`; the default aesthetic score is 6 for positive prompts and 2.5 for
    negative ones (the refiner was trained to steer away from low scores)."""

    def __call__(self, entry: dict) -> torch.Tensor:
        score = entry.get("aesthetic_score", 2.5 if entry.get("prompt_type") == "negative" else 6.0)
        return sdxl_refiner_adm(_pooled(entry), entry.get("width", 768), entry.get("height", 768),
                                entry.get("crop_w", 0), entry.get("crop_h", 0), score)


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


@dataclass
class ModelConfig:
    """What ComfyUI keeps in `model.model_config`: the UNet's shape and the sampling settings."""
    unet_config: dict = field(default_factory=dict)
    latent_format: LatentFormat | None = None
    sampling_settings: dict = field(default_factory=dict)
    manual_cast_dtype: torch.dtype | None = None
    memory_usage_factor: float = 1.0
    supported_inference_dtypes: tuple = (torch.float16, torch.bfloat16, torch.float32)
    custom_operations: object = None
    scaled_fp8: object = None
    optimizations: dict = field(default_factory=dict)


def _convert_tensor(extra, dtype, device):
    if not hasattr(extra, "dtype"):
        return extra
    if extra.dtype in (torch.int, torch.long):
        return extra.to(device)
    return extra.to(device=device, dtype=dtype)


class DiffusionModel(nn.Module):
    """A UNet wrapped as a denoiser D(x, sigma) over model-space latents.

    `unet(x, timesteps, context, y=None, control=None, transformer_options=None)` is any callable
    with the UNetModel contract. `adm` builds SDXL's `y` (defaults from the family); `concat_keys`
    names the extra input channels of inpainting models (detected from a UNet config whose
    in_channels is 9).
    """

    def __init__(self, unet, model_sampling: ModelSamplingDiscrete | None = None,
                 latent_format: LatentFormat | None = None, family: str = "sd1", adm=None, *,
                 concat_keys: tuple[str, ...] | None = None):
        super().__init__()
        self.diffusion_model = unet
        self.family = family
        self.model_sampling = model_sampling if model_sampling is not None else ModelSamplingDiscrete()
        self.latent_format = latent_format if latent_format is not None else latent_format_for(family)
        self.model_type = model_type_of(self.model_sampling)
        self.adm = adm if adm is not None else default_adm(family)
        config = getattr(unet, "config", None)
        self.model_config = ModelConfig(config.to_dict() if hasattr(config, "to_dict") else {}, self.latent_format)
        self.manual_cast_dtype = None
        self.adm_channels = getattr(config, "adm_in_channels", None) or 0
        if concat_keys is None:
            extra = (getattr(config, "in_channels", None) or 0) - self.latent_format.latent_channels
            concat_keys = INPAINT_CONCAT_KEYS if extra == 5 else ()
        self.concat_keys = tuple(concat_keys)
        self.memory_usage_factor = 1.0
        self.device = None            # where the weights are; the ModelPatcher keeps it current
        self.current_patcher = None   # the ModelPatcher sampling with this model right now

    def get_dtype(self) -> torch.dtype:
        dtype = getattr(self.diffusion_model, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
        params = getattr(self.diffusion_model, "parameters", None)
        for p in params() if params is not None else ():
            return p.dtype
        return torch.float32

    # -- the denoiser ------------------------------------------------------------------------

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat=None, c_crossattn=None, control=None,
                    transformer_options: dict | None = None, **kwargs) -> torch.Tensor:
        """x0 estimate for model-space latents x at noise levels t (sigmas [B]); keyword inputs
        are the model conds of the batch ("y", ...), cast to the UNet's dtype and device. The
        MODEL's "apply_model" wrappers (e.g. torch.compile's) run around it."""
        options = transformer_options if transformer_options is not None else {}
        run = wrapped(self._apply_model, WrappersMP.APPLY_MODEL, options, class_obj=self)
        return run(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                     **kwargs) -> torch.Tensor:
        ms = self.model_sampling
        sigma = t
        xc = ms.calculate_input(sigma, x)
        if c_concat is not None:
            # The extra channels are not noise-scaled: they are conditioning, not part of x.
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        timesteps = ms.timestep(t).float()
        context = c_crossattn.to(xc.device, dtype) if c_crossattn is not None else None
        extra = {}
        for name, value in kwargs.items():
            if isinstance(value, list):
                value = [_convert_tensor(v, dtype, xc.device) for v in value]
            extra[name] = _convert_tensor(value, dtype, xc.device)
        out = self.diffusion_model(xc, timesteps, context=context, control=control,
                                   transformer_options=transformer_options if transformer_options is not None else {},
                                   **extra)
        return ms.calculate_denoised(sigma, out.float(), x)

    def memory_required(self, input_shape, cond_shapes=None) -> float:
        """Bytes of working memory one UNet call on `input_shape` needs, by ComfyUI's rule of thumb
        (flash attention: 0.01 MB per latent cell and byte of dtype, else 0.15 MB per cell)."""
        area = input_shape[0] * math.prod(input_shape[2:])
        if torch.cuda.is_available() and self.device is not None and torch.device(self.device).type == "cuda":
            dtype = self.manual_cast_dtype or self.get_dtype()
            return area * torch.finfo(dtype).bits // 8 * 0.01 * self.memory_usage_factor * (1024 * 1024)
        return area * 0.15 * self.memory_usage_factor * (1024 * 1024)

    def extra_conds_shapes(self, **kwargs) -> dict:
        return {}

    # -- latents -----------------------------------------------------------------------------

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        """The original latent noised to `sigma`: what the unmasked region is pinned to."""
        s = sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1))
        return self.model_sampling.noise_scaling(s, noise, latent_image)

    # -- conditioning -> model inputs --------------------------------------------------------

    def encode_adm(self, **kwargs):
        return None if self.adm is None else self.adm(kwargs)

    def extra_conds(self, **kwargs) -> dict:
        """The model inputs of one conditioning entry; kwargs are the entry's fields plus the
        sampler's: noise, device, latent_image, denoise_mask, prompt_type, seed, width, height."""
        out = {}
        concat = self.concat_cond(**kwargs)
        if concat is not None:
            out["c_concat"] = CONDNoiseShape(concat)
        adm = self.encode_adm(**kwargs)
        if adm is not None:
            out["y"] = CONDRegular(adm)
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = CONDCrossAttn(kwargs["cross_attn"])
        if kwargs.get("cross_attn_controlnet") is not None:
            out["crossattn_controlnet"] = CONDCrossAttn(kwargs["cross_attn_controlnet"])
        if kwargs.get("noise_concat") is not None:
            out["c_concat"] = CONDNoiseShape(kwargs["noise_concat"])
        return out

    def blank_inpaint_image_like(self, latent: torch.Tensor) -> torch.Tensor:
        blank = torch.tensor(_BLANK_INPAINT_LATENT, dtype=latent.dtype, device=latent.device)
        return blank.view(1, -1, 1, 1).expand(latent.shape[0], -1, *latent.shape[2:]).clone()

    def concat_cond(self, **kwargs) -> torch.Tensor | None:
        """Extra input channels of an inpainting UNet, in the order it was trained on: the mask
        (1 channel, 1 = repaint) then the masked image's model-space latent (4 channels); the UNet
        input is then [x, mask, masked_image] (9 channels)."""
        if not self.concat_keys:
            return None
        noise = kwargs["noise"]
        device = kwargs.get("device", noise.device)
        b, _, h, w = noise.shape
        mask = kwargs.get("concat_mask", kwargs.get("denoise_mask"))
        image = kwargs.get("concat_latent_image")
        image = kwargs.get("latent_image") if image is None else self.process_latent_in(image)
        if image is not None:
            image = resize_to_batch_size(_resize(image.to(noise.dtype), h, w), b)
        if mask is not None:
            if mask.ndim == noise.ndim:
                mask = mask[:, :1]
            mask = _resize(mask.reshape((-1, 1) + tuple(mask.shape[-2:])).to(noise.dtype), h, w)
            mask = resize_to_batch_size(mask.round(), b)
        parts = []
        for key in self.concat_keys:
            if mask is None:
                if key == "mask":
                    parts.append(torch.ones_like(noise)[:, :1])
                elif key == "masked_image":
                    parts.append(self.blank_inpaint_image_like(noise))
                continue
            if key == "mask":
                parts.append(mask.to(device))
            elif key == "masked_image":
                if image is None:
                    raise ValueError("inpainting needs the latent image to condition on")
                parts.append(image.to(device))
        return torch.cat(parts, dim=1)

    # -- saving ------------------------------------------------------------------------------

    def state_dict_for_saving(self, clip_state_dict=None, vae_state_dict=None, clip_vision_state_dict=None) -> dict:
        """The checkpoint's keys: the UNet under model.diffusion_model., a v_pred marker for
        v-prediction models, and the other components' original-layout keys as given."""
        sd = {"model.diffusion_model." + k: v for k, v in self.diffusion_model.state_dict().items()}
        if self.model_type == ModelType.V_PREDICTION:
            sd["model.diffusion_model.v_pred"] = torch.tensor([])
        for extra in (clip_state_dict, vae_state_dict, clip_vision_state_dict):
            if extra:
                sd.update(extra)
        return sd


class SDXL(DiffusionModel):
    """SDXL base (ComfyUI's comfy.model_base.SDXL; plugins test `isinstance(model.model, SDXL)`)."""


class SDXLRefiner(DiffusionModel):
    """SDXL refiner (ComfyUI's comfy.model_base.SDXLRefiner)."""


def model_class_for(family: str) -> type[DiffusionModel]:
    family = family.lower()
    if family == "sdxl_refiner":
        return SDXLRefiner
    if family.startswith("sdxl"):
        return SDXL
    return DiffusionModel


__all__ = ["DiffusionModel", "ModelConfig", "ModelType", "SDXL", "SDXLAdm", "SDXLRefiner", "SDXLRefinerAdm",
           "model_class_for", "repeat_to_batch_size", "resize_to_batch_size", "sdxl_adm", "sdxl_refiner_adm",
           "timestep_embedding"]
