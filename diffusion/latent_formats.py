"""Per-family latent conventions: how VAE latents are scaled for the diffusion model, and a cheap
linear latent-to-RGB map for step previews.

The VAE returns unscaled latents; the diffusion model was trained on latents multiplied by a
family constant (0.18215 for SD1/SD2, 0.13025 for SDXL) so that they have roughly unit variance.
`process_in` goes VAE -> model space, `process_out` back. The preview factors are the published
least-squares fits from latent channels to RGB (ComfyUI's latent_formats), applied to model-space
latents (the x0 a sampler reports).
"""

from __future__ import annotations

import torch


class LatentFormat:
    name = "base"
    scale_factor = 1.0
    shift_factor = 0.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors: list[list[float]] | None = None
    latent_rgb_factors_bias: list[float] | None = None
    taesd_decoder_name: str | None = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor

    def latent_to_rgb(self, x0: torch.Tensor) -> torch.Tensor:
        """Model-space latent [B, C, h, w] -> preview image [B, h, w, 3] in 0..1."""
        if self.latent_rgb_factors is None:
            raise ValueError(f"{self.name} latents have no preview factors")
        factors = torch.tensor(self.latent_rgb_factors, dtype=torch.float32, device=x0.device)
        rgb = torch.einsum("bchw,cr->bhwr", x0.float(), factors)
        if self.latent_rgb_factors_bias is not None:
            rgb = rgb + torch.tensor(self.latent_rgb_factors_bias, dtype=torch.float32, device=x0.device)
        # The factors map to roughly -1..1, like the VAE's pixel range.
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale_factor={self.scale_factor})"


class SD15(LatentFormat):
    """SD1.x and SD2.x share this latent space."""
    name = "sd15"
    scale_factor = 0.18215
    latent_rgb_factors = [
        #   R        G        B
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
    taesd_decoder_name = "taesd_decoder"

    def __init__(self, scale_factor: float = 0.18215):
        self.scale_factor = scale_factor


class SDXL(LatentFormat):
    name = "sdxl"
    scale_factor = 0.13025
    latent_rgb_factors = [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
    latent_rgb_factors_bias = [0.1084, -0.0175, -0.0011]
    taesd_decoder_name = "taesdxl_decoder"


class SD_X4(LatentFormat):
    """The x4 upscaler's latent space."""
    name = "sd_x4"
    scale_factor = 0.08333
    latent_rgb_factors = [
        [-0.2340, -0.3863, -0.3257],
        [0.0994, 0.0885, -0.0908],
        [-0.2833, -0.2349, -0.3741],
        [0.2523, -0.0055, -0.1651],
    ]


class SD3(LatentFormat):
    name = "sd3"
    latent_channels = 16
    scale_factor = 1.5305
    shift_factor = 0.0609
    latent_rgb_factors = [
        [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189],
    ]
    latent_rgb_factors_bias = [0.2394, 0.2135, 0.1925]
    taesd_decoder_name = "taesd3_decoder"


class Flux(LatentFormat):
    name = "flux"
    latent_channels = 16
    scale_factor = 0.3611
    shift_factor = 0.1159
    latent_rgb_factors = [
        [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ]
    latent_rgb_factors_bias = [-0.0329, -0.0718, -0.0851]
    taesd_decoder_name = "taef1_decoder"


_BY_FAMILY = {
    "sd1": SD15, "sd15": SD15, "sd2": SD15, "sd21": SD15, "sd15_inpaint": SD15, "sd1_inpaint": SD15,
    "sd2_inpaint": SD15, "sdxl": SDXL, "sdxl_base": SDXL, "sdxl_refiner": SDXL, "sdxl_inpaint": SDXL,
    "sd_x4": SD_X4, "sd3": SD3, "flux": Flux,
}


def latent_format_for(family: str) -> LatentFormat:
    """The LatentFormat of a model family name ("sd1", "sd2", "sdxl", "sdxl_refiner", ...)."""
    try:
        return _BY_FAMILY[family.lower()]()
    except KeyError:
        raise ValueError(f"no latent format for model family {family!r}") from None
