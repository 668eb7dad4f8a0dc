"""ComfyUI's `comfy.model_sampling`: the sampling maths as mix-ins (EPS, V_PREDICTION, EDM, X0,
IMG_TO_IMG, CONST) over sigma tables (ModelSamplingDiscrete, ...ContinuousEDM, ...DiscreteFlow,
...Flux). Plugins combine one of each (`class Sampling(ModelSamplingDiscrete, EPS)`) and install
it with `model.add_object_patch("model_sampling", ...)`; the sampler uses whatever is installed.

The engine's own ModelSamplingDiscrete (diffusion/model_sampling.py, what our checkpoints carry)
counts as an instance of these classes: isinstance(ms, EPS) / V_PREDICTION / X0 by its prediction
type, and isinstance(ms, ModelSamplingDiscrete)."""
from __future__ import annotations

import math

import torch

from diffusion.model_sampling import ModelSamplingDiscrete as _Ours
from diffusion.model_sampling import make_betas, rescale_zero_terminal_snr_sigmas


def reshape_sigma(sigma, noise_dim: int):
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


class _Recognises(type):
    """Lets the engine's ModelSamplingDiscrete pass isinstance checks against these classes."""

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        if isinstance(obj, _Ours):
            if cls is ModelSamplingDiscrete:
                return True
            kind = _BY_PREDICTION.get(obj.prediction)
            return kind is not None and issubclass(kind, cls)
        return False


class _TorchRecognises(_Recognises, type(torch.nn.Module)):
    pass


class EPS(metaclass=_Recognises):
    sigma_data = 1.0

    def calculate_input(self, sigma, noise):
        sigma = reshape_sigma(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        sd = self.sigma_data
        return (model_input * sd ** 2 / (sigma ** 2 + sd ** 2)
                - model_output * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5)


class EDM(V_PREDICTION):
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        sd = self.sigma_data
        return (model_input * sd ** 2 / (sigma ** 2 + sd ** 2)
                + model_output * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5)


class X0(EPS):
    def calculate_denoised(self, sigma, model_output, model_input):
        return model_output


class IMG_TO_IMG(X0):
    def calculate_input(self, sigma, noise):
        return noise


class CONST(metaclass=_Recognises):
    """Rectified flow: x = (1 - sigma) x0 + sigma noise."""

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        sigma = reshape_sigma(sigma, latent.ndim)
        return latent / (1.0 - sigma)


_BY_PREDICTION = {"eps": EPS, "v_prediction": V_PREDICTION, "x0": X0}


def _settings(model_config) -> dict:
    return getattr(model_config, "sampling_settings", None) or {}


class _Table(torch.nn.Module, metaclass=_TorchRecognises):
    """A sigma table with ComfyUI's lookups (buffers `sigmas`, `log_sigmas`)."""

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class ModelSamplingDiscrete(_Table):
    """The 1000-step table of the SD family: sigma_t = sqrt((1 - a_t) / a_t) for a beta schedule."""

    def __init__(self, model_config=None, zsnr=None):
        super().__init__()
        s = _settings(model_config)
        zsnr = s.get("zsnr", False) if zsnr is None else zsnr
        self._register_schedule(None, s.get("beta_schedule", "linear"), s.get("timesteps", 1000),
                                s.get("linear_start", 0.00085), s.get("linear_end", 0.012), 8e-3, zsnr)
        self.sigma_data = 1.0

    def _register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=1e-4,
                           linear_end=2e-2, cosine_s=8e-3, zsnr=False):
        betas = given_betas if given_betas is not None else make_betas(beta_schedule, timesteps, linear_start,
                                                                       linear_end, cosine_s)
        alphas_cumprod = torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0)
        self.num_timesteps = int(alphas_cumprod.shape[0])
        self.linear_start, self.linear_end, self.zsnr = linear_start, linear_end, zsnr
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.set_sigmas(sigmas)

    _nearest = _Ours._nearest
    _interpolate = _Ours._interpolate
    timestep = _Ours.timestep
    sigma = _Ours.sigma
    percent_to_sigma = _Ours.percent_to_sigma


class ModelSamplingDiscreteEDM(ModelSamplingDiscrete):
    def timestep(self, sigma):
        return 0.25 * sigma.log()

    def sigma(self, timestep):
        return (timestep / 0.25).exp()


class ModelSamplingContinuousEDM(_Table):
    def __init__(self, model_config=None):
        super().__init__()
        s = _settings(model_config)
        self.set_parameters(s.get("sigma_min", 0.002), s.get("sigma_max", 120.0), s.get("sigma_data", 1.0))

    def set_parameters(self, sigma_min, sigma_max, sigma_data):
        self.sigma_data = sigma_data
        self.set_sigmas(torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp())

    def timestep(self, sigma):
        return 0.25 * sigma.log()

    def sigma(self, timestep):
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    def timestep(self, sigma):
        return sigma.atan() / math.pi * 2

    def sigma(self, timestep):
        return (timestep * math.pi / 2).tan()


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def flux_time_shift(mu: float, sigma: float, t):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class ModelSamplingDiscreteFlow(_Table):
    def __init__(self, model_config=None):
        super().__init__()
        s = _settings(model_config)
        self.set_parameters(shift=s.get("shift", 1.0), multiplier=s.get("multiplier", 1000))

    def set_parameters(self, shift=1.0, timesteps=1000, multiplier=1000):
        self.shift, self.multiplier = shift, multiplier
        self.register_buffer("sigmas", self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier))

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)


class ModelSamplingFlux(_Table):
    def __init__(self, model_config=None):
        super().__init__()
        self.set_parameters(shift=_settings(model_config).get("shift", 1.15))

    def set_parameters(self, shift=1.15, timesteps=10000):
        self.shift = shift
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps))

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return flux_time_shift(self.shift, 1.0, timestep)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return flux_time_shift(self.shift, 1.0, 1.0 - percent)


__all__ = ["CONST", "EDM", "EPS", "IMG_TO_IMG", "ModelSamplingContinuousEDM", "ModelSamplingContinuousV",
           "ModelSamplingDiscrete", "ModelSamplingDiscreteEDM", "ModelSamplingDiscreteFlow", "ModelSamplingFlux",
           "V_PREDICTION", "X0", "flux_time_shift", "reshape_sigma", "rescale_zero_terminal_snr_sigmas",
           "time_snr_shift"]
