"""Noise tables, sigma <-> timestep maps and network parameterisations ("model sampling").

A latent-diffusion UNet was trained on 1000 discrete timesteps of a variance-preserving process
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. Samplers work in the variance-exploding view instead
(Karras et al. 2022): x = x0 + sigma * n with sigma_t = sqrt((1 - a_t) / a_t). A model sampling
object holds the model's sigmas, maps sigma <-> the timestep the network is fed, and turns a raw
network output into the denoised estimate D(x, sigma) that every sampler consumes.

Two independent choices make one, as in ComfyUI's ModelSampling* nodes:
* the time axis: the discrete 1000-step table (`ModelSamplingDiscrete`), its 50-step distilled
  subset for LCM (`ModelSamplingDistilled`), or a continuous log-sigma (`ModelSamplingContinuousEDM`),
  arctan (`ModelSamplingContinuousV`) or sigma / (sigma + 1) (`ModelSamplingCosmosRFlow`) time;
* the prediction: eps, v_prediction, edm (Karras et al.'s F_theta), x0, img_to_img (x0, unscaled
  input), lcm (consistency-model boundary condition) or cosmos_rflow (rectified-flow velocity).
"""

from __future__ import annotations

import math

import torch

PREDICTION_TYPES = ("eps", "v_prediction", "edm", "x0", "img_to_img", "lcm", "cosmos_rflow")


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


class ModelSampling:
    """The parameterisation half: how the network's input is scaled, how its output becomes the
    x0 estimate, and how noise is put on a latent. Subclasses give the time axis (`sigmas`,
    `timestep`, `sigma`, `percent_to_sigma`).

    `discrete` keeps the checkpoint's own discrete-table settings, so a later ModelSamplingDiscrete
    node rebuilds from the model's config whatever was patched in between (as ComfyUI does)."""

    sigma_data = 1.0
    prediction = "eps"
    discrete: dict = {}

    def _set_prediction(self, prediction: str) -> None:
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"prediction must be one of {PREDICTION_TYPES}, not {prediction!r}")
        self.prediction = prediction

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def with_prediction(self, prediction: str, zsnr: bool = False) -> "ModelSamplingDiscrete":
        """The ModelSamplingDiscrete node: the model's discrete table (zero-terminal-SNR if `zsnr`)
        with another prediction; "lcm" uses the 50-step distilled subset of the table."""
        cls = ModelSamplingDistilled if prediction == "lcm" else ModelSamplingDiscrete
        return cls(prediction, **{**self.discrete, "zsnr": zsnr})

    def with_continuous(self, kind: str, prediction: str, sigma_min: float, sigma_max: float,
                        sigma_data: float = 1.0) -> "ModelSamplingContinuousEDM":
        """The ModelSamplingContinuousEDM / ModelSamplingContinuousV nodes: a continuous time axis
        ("edm": t = log(sigma) / 4, "v": t = 2 atan(sigma) / pi, "cosmos_rflow") over
        [sigma_min, sigma_max]."""
        cls = {"edm": ModelSamplingContinuousEDM, "v": ModelSamplingContinuousV,
               "cosmos_rflow": ModelSamplingCosmosRFlow}[kind]
        out = cls(prediction, sigma_min, sigma_max, sigma_data)
        out.discrete = self.discrete
        return out

    # -- parameterisation -------------------------------------------------------------------

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: the variance-preserving sample x / sqrt(sigma^2 + sigma_data^2)
        (img_to_img: x itself; cosmos_rflow: x (1 - s) with s = sigma / (sigma + 1))."""
        if self.prediction == "img_to_img":
            return x
        s = _per_sample(sigma, x)
        if self.prediction == "cosmos_rflow":
            return x * (1.0 - s / (s + 1))
        return x / (s ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = _per_sample(sigma, model_output)
        sd = self.sigma_data
        if self.prediction in ("x0", "img_to_img"):
            return model_output
        if self.prediction == "v_prediction":
            return x * sd ** 2 / (s ** 2 + sd ** 2) - model_output * s * sd / (s ** 2 + sd ** 2) ** 0.5
        if self.prediction == "edm":
            return x * sd ** 2 / (s ** 2 + sd ** 2) + model_output * s * sd / (s ** 2 + sd ** 2) ** 0.5
        if self.prediction == "cosmos_rflow":
            s = s / (s + 1)
            return x * (1.0 - s) - model_output * s
        x0 = x - model_output * s
        if self.prediction == "lcm":
            # Consistency-model boundary condition (Song et al. 2023; LCM's sigma_data 0.5 and
            # timestep scaling 10): D = c_skip(t) x + c_out(t) x0, exactly x at t = 0.
            t = _per_sample(self.timestep(sigma.reshape(-1)), model_output) * 10.0
            c_skip = 0.25 / (t ** 2 + 0.25)
            c_out = t / (t ** 2 + 0.25) ** 0.5
            return c_out * x0 + c_skip * x
        return x0

    def noise_scaling(self, sigma, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The sampler's starting point. From the top of the schedule ComfyUI scales the noise by
        sqrt(1 + sigma^2) rather than sigma, so the VP-scaled input the network sees has unit
        variance (not for cosmos_rflow)."""
        sigma = _per_sample(torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device), noise)
        if max_denoise and self.prediction != "cosmos_rflow":
            return noise * torch.sqrt(1.0 + sigma ** 2.0) + latent_image
        return noise * sigma + latent_image

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prediction!r})"


class ModelSamplingDiscrete(ModelSampling):
    """The 1000-step sigma table of an SD1/SD2/SDXL model plus its output parameterisation.

    `prediction` is "eps" (SD1, SD2-base, SDXL), "v_prediction" (SD2-768) or another of
    PREDICTION_TYPES. `zsnr` applies zero-terminal-SNR rescaling (the ModelSamplingDiscrete
    node's option).
    """

    def __init__(self, prediction: str = "eps", beta_schedule: str = "linear", linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000, zsnr: bool = False):
        self._set_prediction(prediction)
        self.discrete = {"beta_schedule": beta_schedule, "linear_start": linear_start, "linear_end": linear_end,
                         "timesteps": timesteps}
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

    def _nearest(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def _interpolate(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(0, len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the table entry nearest in log-sigma (integer-valued, as ComfyUI feeds the UNet)."""
        sigma = torch.as_tensor(sigma)
        return self._nearest(sigma).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating linearly in log-sigma."""
        timestep = torch.as_tensor(timestep)
        return self._interpolate(timestep.float().to(self.log_sigmas.device)).to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 = start, 1 = end)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def __repr__(self) -> str:
        extra = ", zsnr=True" if self.zsnr else ""
        return f"{type(self).__name__}({self.prediction!r}{extra})"


class ModelSamplingDistilled(ModelSamplingDiscrete):
    """The table of a model distilled onto 50 of the 1000 timesteps (LCM): entries 999, 979, ...,
    19; a sigma maps to the timestep of its nearest entry, 20 k + 19."""

    original_timesteps = 50

    def __init__(self, prediction: str = "lcm", **settings):
        super().__init__(prediction, **settings)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        self.set_sigmas(self.sigmas[self.skip_steps - 1::self.skip_steps][-self.original_timesteps:])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return (self._nearest(sigma) * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        t = (timestep.float().to(self.log_sigmas.device) - (self.skip_steps - 1)) / self.skip_steps
        return self._interpolate(t).to(timestep.device)


class ModelSamplingContinuousEDM(ModelSampling):
    """A continuous time axis over [sigma_min, sigma_max] (Karras et al. 2022): the network is
    fed t = log(sigma) / 4. `sigmas` is a 1000-point log-spaced grid for the schedulers."""

    def __init__(self, prediction: str = "eps", sigma_min: float = 0.002, sigma_max: float = 120.0,
                 sigma_data: float = 1.0):
        self._set_prediction(prediction)
        self.sigma_data = sigma_data
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.as_tensor(sigma).log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Log-linear in sigma from sigma_max (0) to sigma_min (1)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return math.exp((log_max - log_min) * (1.0 - percent) + log_min)


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    """Continuous time t = 2 atan(sigma) / pi in [0, 1) (v-prediction models trained on continuous
    time, e.g. those using the cosine schedule's angle)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma).atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep) * math.pi / 2).tan()


class ModelSamplingCosmosRFlow(ModelSamplingContinuousEDM):
    """Rectified-flow time t = sigma / (sigma + 1) (NVIDIA Cosmos), capped at sigma_max."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return sigma / (sigma + 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        sigma_max = self.sigma_max
        return torch.where(timestep >= sigma_max / (sigma_max + 1), sigma_max, timestep / (1 - timestep))


def model_sampling_for(sampling) -> ModelSampling:
    """The model sampling a checkpoint's markers ask for (`diffusion.checkpoint.Sampling`): the
    discrete table (zero-terminal-SNR if marked) or the continuous EDM axis with its bounds."""
    if sampling.schedule == "edm":
        return ModelSamplingContinuousEDM(sampling.prediction, sampling.sigma_min, sampling.sigma_max,
                                          sampling.sigma_data)
    return ModelSamplingDiscrete(sampling.prediction, zsnr=sampling.zsnr)

