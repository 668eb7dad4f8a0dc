"""DiffusionModel variants of the SD families that take more than text: unCLIP and InstructPix2Pix.

Class names are ComfyUI's (comfy.model_base), since plugins test `isinstance(model.model, ...)`.

* SD21UNCLIP (Stable unCLIP 2.1, H and L): `y` from CLIP image embeddings (diffusion.unclip);
  zeros when the prompt carries none.
* SD15_instructpix2pix / SDXL_instructpix2pix: 8-channel UNets whose extra 4 input channels are
  the latent of the image to edit (`concat_latent_image` from InstructPixToPixConditioning,
  unscaled as the VAE made it; resized to the latent and to the batch), zeros without one.
"""
from __future__ import annotations

import torch

from .model import SDXL, DiffusionModel, resize_to_batch_size
from .unclip import UnclipAdm
from .upscale import upscale


class SD21UNCLIP(DiffusionModel):
    def __init__(self, unet, model_sampling=None, latent_format=None, family: str = "sd2", adm=None, **kwargs):
        adm_channels = getattr(getattr(unet, "config", None), "adm_in_channels", None) or 2048
        super().__init__(unet, model_sampling, latent_format, family, adm=adm or UnclipAdm(adm_channels), **kwargs)

    @property
    def noise_augmentor(self):
        return self.adm.augmentor


class IP2P:
    """The edited image's latent as extra input channels."""

    def process_ip2p_image_in(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def concat_cond(self, **kwargs) -> torch.Tensor:
        noise = kwargs["noise"]
        device = kwargs.get("device", noise.device)
        image = kwargs.get("concat_latent_image")
        image = torch.zeros_like(noise) if image is None else image.to(device=device, dtype=noise.dtype)
        if image.shape[1:] != noise.shape[1:]:
            image = upscale(image, noise.shape[-1], noise.shape[-2], "bilinear", "center")
        return self.process_ip2p_image_in(resize_to_batch_size(image, noise.shape[0]))


class SD15_instructpix2pix(IP2P, DiffusionModel):
    pass


class SDXL_instructpix2pix(IP2P, SDXL):
    pass


# checkpoint family (diffusion.checkpoint.detect) -> model class, where not a plain DiffusionModel
VARIANTS = {"sd2_unclip_h": SD21UNCLIP, "sd2_unclip_l": SD21UNCLIP, "sd1_ip2p": SD15_instructpix2pix,
            "sdxl_ip2p": SDXL_instructpix2pix}


def variant_class(checkpoint_family: str) -> type[DiffusionModel] | None:
    return VARIANTS.get(checkpoint_family)


__all__ = ["IP2P", "SD21UNCLIP", "VARIANTS", "SD15_instructpix2pix", "SDXL_instructpix2pix", "variant_class"]
