"""ComfyUI's `comfy.latent_formats`: per-family latent scaling and preview factors (ours, the same
numbers)."""
from diffusion.latent_formats import SD3, SD15, SD_X4, SDXL, Flux, LatentFormat, latent_format_for


class SDXL_Playground_2_5(LatentFormat):
    """Playground 2.5's latent space: per-channel mean and std instead of one scale."""
    name = "sdxl_playground_2_5"
    scale_factor = 0.5
    latents_mean = (-1.6574, 1.886, -1.383, 2.5155)
    latents_std = (8.4927, 5.9022, 6.5498, 5.2299)
    latent_rgb_factors = SDXL.latent_rgb_factors
    taesd_decoder_name = "taesdxl_decoder"

    def process_in(self, latent):
        import torch
        mean = torch.tensor(self.latents_mean, device=latent.device, dtype=latent.dtype).view(1, 4, 1, 1)
        std = torch.tensor(self.latents_std, device=latent.device, dtype=latent.dtype).view(1, 4, 1, 1)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent):
        import torch
        mean = torch.tensor(self.latents_mean, device=latent.device, dtype=latent.dtype).view(1, 4, 1, 1)
        std = torch.tensor(self.latents_std, device=latent.device, dtype=latent.dtype).view(1, 4, 1, 1)
        return latent * std / self.scale_factor + mean


__all__ = ["Flux", "LatentFormat", "SD15", "SD3", "SDXL", "SDXL_Playground_2_5", "SD_X4", "latent_format_for"]
