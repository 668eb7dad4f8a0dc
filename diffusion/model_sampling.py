"""Discrete-time noise tables and network parameterisations.

A latent-diffusion UNet was trained on 1000 discrete timesteps of a variance-preserving process
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. Samplers work in the variance-exploding view instead
(Karras et al. 2022): x = x0 + sigma * n with sigma_t = sqrt((1 - a_t) / a_t). This module holds
the table of those sigmas, maps sigma <-> timestep the way ComfyUI does, and turns a raw network
output (eps or v) into the denoised estimate D(x, sigma) that every sampler consumes.
"""

from __future__ import annotations

import math

import torch

PREDICTION_TYPES = ("eps", "v_prediction", "x0")


def make_betas(schedule: str = "linear", timesteps: int = 1000, linear_start: float = 0.00085,
               linear_end: float = 0.012, cosine_s: float = 8e-3) -> torch.Tensor:
    """Beta schedule in float64. "linear" is the LDM/SD one, linear in sqrt(beta) (diffusers calls it
    "scaled_linear"); "cosine" is Nichol & Dhariwal's."""
    if schedule == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + cosine_s
        abar = torch.cos(t / (1 + cosine_s) * math.pi / 2).pow(2)
        abar = abar / abar[0]
        return (1 - abar[1:] / abar[:-1]).clamp(0, 0.999)
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64) ** 0.5
    raise ValueError(f"unknown beta schedule {schedule!r}")


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common diffusion noise schedules and sample steps are flawed"), Alg. 1,
    applied to sigmas: shift and scale sqrt(alpha_bar) so the last step has zero SNR. The last
    alpha_bar is set to a tiny value, not 0, so sigma_max stays finite (as ComfyUI does)."""
    abar_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt ** 2
    abar[-1] = 4.8973451890853435e-08
    return ((1 - abar) / abar) ** 0.5


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        sigma = sigma.reshape(1)
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


class ModelSamplingDiscrete:
    """The 1000-step sigma table of an SD1/SD2/SDXL model plus its output parameterisation.

    `prediction` is "eps" (SD1, SD2-base, SDXL), "v_prediction" (SD2-768) or "x0". `zsnr` applies
    zero-terminal-SNR rescaling (the ModelSamplingDiscrete node's option).
    """

    sigma_data = 1.0

    def __init__(self, prediction: str = "eps", beta_schedule: str = "linear", linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000, zsnr: bool = False):
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"prediction must be one of {PREDICTION_TYPES}, not {prediction!r}")
        self.prediction = prediction
        self.beta_schedule = beta_schedule
        self.linear_start, self.linear_end = linear_start, linear_end
        self.zsnr = zsnr
        betas = make_betas(beta_schedule, timesteps, linear_start, linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.num_timesteps = timesteps
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        # Both tables are rounded to float32 from the float64 values, as ComfyUI keeps them.
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    def with_prediction(self, prediction: str, zsnr: bool | None = None) -> "ModelSamplingDiscrete":
        """A copy with another parameterisation (the ModelSamplingDiscrete node)."""
        return ModelSamplingDiscrete(prediction, self.beta_schedule, self.linear_start, self.linear_end,
                                     self.num_timesteps, self.zsnr if zsnr is None else zsnr)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the table entry nearest in log-sigma (integer-valued, as ComfyUI feeds the UNet)."""
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating linearly in log-sigma."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().to(self.log_sigmas.device).clamp(0, len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 = start, 1 = end)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    # -- parameterisation -------------------------------------------------------------------

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The UNet sees the variance-preserving sample x / sqrt(sigma^2 + 1)."""
        return x / (_per_sample(sigma, x) ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = _per_sample(sigma, model_output)
        if self.prediction == "eps":
            return x - model_output * s
        if self.prediction == "v_prediction":
            sd = self.sigma_data
            return x * sd ** 2 / (s ** 2 + sd ** 2) - model_output * s * sd / (s ** 2 + sd ** 2) ** 0.5
        return model_output

    def noise_scaling(self, sigma, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The sampler's starting point. From the top of the schedule ComfyUI scales the noise by
        sqrt(1 + sigma^2) rather than sigma, so the VP-scaled input the UNet sees has unit variance."""
        sigma = _per_sample(sigma, noise)  # one sigma, or one per batch item as ComfyUI allows
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
        else:
            noise = noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def __repr__(self) -> str:
        extra = ", zsnr=True" if self.zsnr else ""
        return f"ModelSamplingDiscrete({self.prediction!r}{extra})"
