"""ComfyUI's `comfy.model_base`: what `MODEL.model` is. Our DiffusionModel is ComfyUI's BaseModel
(apply_model, extra_conds, model_sampling, latent_format, model_type, ...); SDXL and SDXLRefiner
are its SDXL families. The other families' class names exist for plugins' isinstance checks; this
engine never builds such a model."""
from __future__ import annotations

import torch

from diffusion.model import SDXL, DiffusionModel, ModelType, SDXLRefiner, _convert_tensor
from diffusion.model_sampling import ModelSamplingDiscrete as _OurSampling

BaseModel = DiffusionModel


def convert_tensor(extra, dtype, device):
    return _convert_tensor(extra, dtype, device)


def model_sampling(model_config, model_type: ModelType):
    """The sampling maths for a model type (eps / v-prediction; the others are not built here)."""
    predictions = {ModelType.EPS: "eps", ModelType.V_PREDICTION: "v_prediction", ModelType.IMG_TO_IMG: "x0"}
    if model_type not in predictions:
        raise NotImplementedError(f"{model_type.name} models are not supported by LatentGraph")
    settings = getattr(model_config, "sampling_settings", None) or {}
    return _OurSampling(predictions[model_type], zsnr=settings.get("zsnr", False))


def _family(name: str) -> type:
    return type(name, (DiffusionModel,), {"__doc__": f"ComfyUI's {name} family (never built by LatentGraph)."})


_OTHER_FAMILIES = ("SD21UNCLIP", "SD_X4Upscaler", "SVD_img2vid", "SV3D_u", "SV3D_p", "Stable_Zero123",
                   "SDXL_instructpix2pix", "SD15_instructpix2pix", "StableCascade_C", "StableCascade_B", "SD3",
                   "AuraFlow", "StableAudio1", "HunyuanDiT", "PixArt", "Flux", "GenmoMochi", "LTXV", "HunyuanVideo",
                   "CosmosVideo", "Lumina2", "WAN21", "HiDream", "Chroma", "ACEStep", "Omnigen2", "QwenImage",
                   "HunyuanImage21")
for _name in _OTHER_FAMILIES:
    globals()[_name] = _family(_name)
del _name

__all__ = ["BaseModel", "ModelType", "SDXL", "SDXLRefiner", "convert_tensor", "model_sampling", *_OTHER_FAMILIES]
