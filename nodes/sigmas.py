"""Schedulers and sigma tools of ComfyUI's custom sampling: nodes that make or edit a SIGMAS
tensor (a descending float32 noise schedule, usually ending in 0)."""
from __future__ import annotations

from diffusion import ksampler as ks
from diffusion import schedules as sch
from diffusion.schedules import SCHEDULER_NAMES
from graph.contract import Boolean, Choice, Combo, Float, Int, Node, Output, Socket

from .sampling import MAX_STEPS, Steps

SCHEDULERS = "sampling/custom_sampling/schedulers"
SIGMA_TOOLS = "sampling/custom_sampling/sigmas"
CUSTOM_SAMPLER = "comfy_extras.nodes_custom_sampler"
SIGMAS = (Output("SIGMAS"),)


def SigmaBound(name: str, default: float) -> Float:
    return Float(name, default, min=0.0, max=5000.0, step=0.01, round=False)


def Denoise() -> Float:
    return Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)


class BasicScheduler(Node):
    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Combo("scheduler", SCHEDULER_NAMES), Steps(), Denoise())
    outputs = SIGMAS

    def run(self, ctx, model, scheduler, steps, denoise):
        return (ks.basic_scheduler(model, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Steps(), SigmaBound("sigma_max", 14.614642), SigmaBound("sigma_min", 0.0291675),
              Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = SIGMAS

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        return (sch.karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    """Sigmas evenly spaced in log-sigma."""

    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Steps(), SigmaBound("sigma_max", 14.614642), SigmaBound("sigma_min", 0.0291675))
    outputs = SIGMAS

    def run(self, ctx, steps, sigma_max, sigma_min):
        return (sch.exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(Node):
    """Sigmas on a polynomial ramp (power rho) in log-sigma."""

    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Steps(), SigmaBound("sigma_max", 14.614642), SigmaBound("sigma_min", 0.0291675),
              Float("rho", 1.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = SIGMAS

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        return (sch.polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(Node):
    """Log-sigma at the quantiles of a Laplace(mu, beta) distribution; `steps` sigmas, no final 0."""

    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Steps(), SigmaBound("sigma_max", 14.614642), SigmaBound("sigma_min", 0.0291675),
              Float("mu", 0.0, min=-10.0, max=10.0, step=0.1, round=False),
              Float("beta", 0.5, min=0.0, max=10.0, step=0.1, round=False))
    outputs = SIGMAS

    def run(self, ctx, steps, sigma_max, sigma_min, mu, beta):
        return (sch.laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(Node):
    """The continuous variance-preserving SDE schedule of Song et al. 2021."""

    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Steps(), Float("beta_d", 19.9, min=0.0, max=5000.0, step=0.01, round=False),
              Float("beta_min", 0.1, min=0.0, max=5000.0, step=0.01, round=False),
              Float("eps_s", 0.001, min=0.0, max=1.0, step=0.0001, round=False))
    outputs = SIGMAS

    def run(self, ctx, steps, beta_d, beta_min, eps_s):
        return (sch.vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(Node):
    """Timesteps at the quantiles of a Beta(alpha, beta) distribution over the model's table."""

    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Steps(), Float("alpha", 0.6, min=0.0, max=50.0, step=0.01, round=False),
              Float("beta", 0.6, min=0.0, max=50.0, step=0.01, round=False))
    outputs = SIGMAS

    def run(self, ctx, model, steps, alpha, beta):
        return (sch.beta(model.get_model_object("model_sampling"), steps, alpha, beta),)


class SDTurboScheduler(Node):
    comfy_function = "get_sigmas"
    category = SCHEDULERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Int("steps", 1, min=1, max=10), Denoise())
    outputs = SIGMAS

    def run(self, ctx, model, steps, denoise):
        return (ks.sd_turbo_scheduler(model, steps, denoise),)


class AlignYourStepsScheduler(Node):
    """NVIDIA's Align Your Steps schedules for SD1.5, SDXL and SVD."""

    display_name = None
    comfy_function = "execute"
    category = SCHEDULERS
    comfy_module = "comfy_extras.nodes_align_your_steps"
    inputs = (Choice("model_type", ["SD1", "SDXL", "SVD"]), Int("steps", 10, min=1, max=MAX_STEPS), Denoise())
    outputs = SIGMAS

    def run(self, ctx, model_type, steps, denoise):
        return (sch.align_your_steps(model_type, steps, denoise),)


class GITSScheduler(Node):
    """GITS schedules searched for SD1.5, per coefficient (0.80 to 1.50 by 0.05)."""

    display_name = None
    comfy_function = "execute"
    category = SCHEDULERS
    comfy_module = "comfy_extras.nodes_gits"
    inputs = (Float("coeff", 1.2, min=0.8, max=1.5, step=0.05), Int("steps", 10, min=2, max=1000), Denoise())
    outputs = SIGMAS

    def run(self, ctx, coeff, steps, denoise):
        return (sch.gits(coeff, steps, denoise),)


class OptimalStepsScheduler(Node):
    """OptimalSteps schedules published for FLUX, Wan and Chroma."""

    display_name = None
    comfy_function = "execute"
    category = SCHEDULERS
    comfy_module = "comfy_extras.nodes_optimalsteps"
    inputs = (Choice("model_type", ["FLUX", "Wan", "Chroma"]), Int("steps", 20, min=3, max=1000), Denoise())
    outputs = SIGMAS

    def run(self, ctx, model_type, steps, denoise):
        return (sch.optimal_steps(model_type, steps, denoise),)


# -- sigma tools --------------------------------------------------------------------------------

SIGMAS_IN = Socket("sigmas", "SIGMAS")


class SplitSigmas(Node):
    comfy_function = "get_sigmas"
    category = SIGMA_TOOLS
    comfy_module = CUSTOM_SAMPLER
    inputs = (SIGMAS_IN, Int("step", 0, min=0, max=MAX_STEPS))
    outputs = (Output("SIGMAS", name="high_sigmas"), Output("SIGMAS", name="low_sigmas"))

    def run(self, ctx, sigmas, step):
        return ks.split_sigmas(sigmas, step)


class SplitSigmasDenoise(Node):
    """Splits a schedule so the low half holds the last round(steps * denoise) steps."""

    comfy_function = "get_sigmas"
    category = SIGMA_TOOLS
    comfy_module = CUSTOM_SAMPLER
    inputs = (SIGMAS_IN, Denoise())
    outputs = (Output("SIGMAS", name="high_sigmas"), Output("SIGMAS", name="low_sigmas"))

    def run(self, ctx, sigmas, denoise):
        return ks.split_sigmas_denoise(sigmas, denoise)


class FlipSigmas(Node):
    """Reverses a schedule (for unsampling: from a clean latent up to noise)."""

    comfy_function = "get_sigmas"
    category = SIGMA_TOOLS
    comfy_module = CUSTOM_SAMPLER
    inputs = (SIGMAS_IN,)
    outputs = SIGMAS

    def run(self, ctx, sigmas):
        return (ks.flip_sigmas(sigmas),)


class SetFirstSigma(Node):
    comfy_function = "set_first_sigma"
    category = SIGMA_TOOLS
    comfy_module = CUSTOM_SAMPLER
    inputs = (SIGMAS_IN, Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False))
    outputs = SIGMAS

    def run(self, ctx, sigmas, sigma):
        return (sch.set_first(sigmas, sigma),)


class ExtendIntermediateSigmas(Node):
    """Inserts `steps - 1` sigmas into every step whose start lies in [end_at_sigma, start_at_sigma]
    (start -1: no upper bound), spaced linearly, or bunched at one end (cosine / sine)."""

    comfy_function = "extend"
    category = SIGMA_TOOLS
    comfy_module = CUSTOM_SAMPLER
    inputs = (SIGMAS_IN, Int("steps", 2, min=1, max=100),
              Float("start_at_sigma", -1.0, min=-1.0, max=20000.0, step=0.01, round=False),
              Float("end_at_sigma", 12.0, min=0.0, max=20000.0, step=0.01, round=False),
              Combo("spacing", ["linear", "cosine", "sine"]))
    outputs = SIGMAS

    def run(self, ctx, sigmas, steps, start_at_sigma, end_at_sigma, spacing):
        return (sch.extend_intermediate(sigmas, steps, start_at_sigma, end_at_sigma, spacing),)


class SamplingPercentToSigma(Node):
    """The model's sigma a fraction of the way through sampling (0: start, 1: end). At exactly 0
    and 1 it gives the bounds used for interval checks (a huge value and 0) unless
    return_actual_sigma asks for the model's sigma_max / sigma_min."""

    comfy_function = "get_sigma"
    category = SIGMA_TOOLS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Float("sampling_percent", 0.0, min=0.0, max=1.0, step=0.0001),
              Boolean("return_actual_sigma", False))
    outputs = (Output("FLOAT", name="sigma_value"),)

    def run(self, ctx, model, sampling_percent, return_actual_sigma):
        ms = model.get_model_object("model_sampling")
        sigma = ms.percent_to_sigma(sampling_percent)
        if return_actual_sigma and sampling_percent == 0.0:
            sigma = float(ms.sigma_max)
        elif return_actual_sigma and sampling_percent == 1.0:
            sigma = float(ms.sigma_min)
        return (sigma,)


NODES = [BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
         VPScheduler, BetaSamplingScheduler, SDTurboScheduler, AlignYourStepsScheduler, GITSScheduler,
         OptimalStepsScheduler, SplitSigmas, SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas,
         SamplingPercentToSigma]
