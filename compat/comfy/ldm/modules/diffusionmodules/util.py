"""ComfyUI's `comfy.ldm.modules.diffusionmodules.util`: timestep embeddings and beta schedules."""
from diffusion.model_sampling import make_betas
from diffusion.unet_blocks import timestep_embedding


def make_beta_schedule(schedule, n_timestep, linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3):
    return make_betas(schedule, n_timestep, linear_start, linear_end, cosine_s)


__all__ = ["make_beta_schedule", "timestep_embedding"]
