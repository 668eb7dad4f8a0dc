"""Sampling nodes with ComfyUI's names and widgets: KSampler, KSamplerAdvanced, the custom-sampling
building blocks, and the model-sampling override."""
from __future__ import annotations

from diffusion import ksampler as ks
from diffusion.noise import prepare_noise
from diffusion.overrides import comfy_function
from diffusion.samplers import SAMPLER_NAMES
from diffusion.schedules import SCHEDULER_NAMES
from graph.context import LatentPreview, current_context
from graph.contract import Boolean, Combo, Float, Int, Node, Output, Socket

SEED_MAX = 0xFFFFFFFFFFFFFFFF
MAX_STEPS = 10000


def Seed(name: str) -> Int:
    return Int(name, 0, min=0, max=SEED_MAX, control_after_generate=True,
               tooltip="The random seed used for creating the noise.")


def Steps(default: int = 20) -> Int:
    return Int("steps", default, min=1, max=MAX_STEPS)


def Cfg() -> Float:
    return Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01)


def step_reporter(ctx, model):
    """The sampler's per-step hook: progress (which also raises on interrupt) and a live preview."""
    family = getattr(getattr(model, "model", model), "family", "sd1")
    return lambda step, total, x0: ctx.progress(step, total, LatentPreview(x0, family))


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0,
                    disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, ctx=None):
    """KSampler's work under ComfyUI's name and signature (plugins call it): returns (latent,).
    Progress and previews go to `ctx`, by default the node running on this thread."""
    if ctx is None:
        ctx = current_context.get()
    callback = step_reporter(ctx, model) if ctx is not None else None
    return (ks.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               denoise=denoise, disable_noise=disable_noise, start_step=start_step,
                               last_step=last_step, force_full_denoise=force_full_denoise, callback=callback),)


class KSampler(Node):
    """Denoises a latent with a sampler and scheduler, guided by positive and negative conditioning."""

    comfy_function = "sample"
    category = "sampling"
    inputs = (Socket("model", "MODEL"), Seed("seed"), Steps(), Cfg(), Combo("sampler_name", SAMPLER_NAMES),
              Combo("scheduler", SCHEDULER_NAMES), Socket("positive", "CONDITIONING"),
              Socket("negative", "CONDITIONING"), Socket("latent_image", "LATENT"),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=1.0):
        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise, ctx=ctx)


class KSamplerAdvanced(Node):
    display_name = "KSampler (Advanced)"
    comfy_function = "sample"
    category = "sampling"
    inputs = (Socket("model", "MODEL"), Combo("add_noise", ["enable", "disable"]),
              Int("noise_seed", 0, min=0, max=SEED_MAX, control_after_generate=True), Steps(),
              Cfg(), Combo("sampler_name", SAMPLER_NAMES), Combo("scheduler", SCHEDULER_NAMES),
              Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("latent_image", "LATENT"), Int("start_at_step", 0, min=0, max=MAX_STEPS),
              Int("end_at_step", MAX_STEPS, min=0, max=MAX_STEPS),
              Combo("return_with_leftover_noise", ["disable", "enable"]))
    outputs = (Output("LATENT"),)

    def run(self, ctx, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, start_at_step, end_at_step, return_with_leftover_noise, denoise=1.0):
        return common_ksampler(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent_image, denoise=denoise, disable_noise=add_noise == "disable",
                               start_step=start_at_step, last_step=end_at_step,
                               force_full_denoise=return_with_leftover_noise == "disable", ctx=ctx)


class ModelSamplingDiscrete(Node):
    """Overrides what the model predicts (eps or v), e.g. for a v-prediction SD1.x fine-tune."""

    comfy_function = "patch"
    category = "advanced/model"
    comfy_module = "comfy_extras.nodes_model_advanced"
    inputs = (Socket("model", "MODEL"), Combo("sampling", ["eps", "v_prediction", "x0"]),
              Boolean("zsnr", False))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, sampling, zsnr):
        patched = model.clone()
        patched.add_object_patch("model_sampling", model.get_model_object("model_sampling").with_prediction(sampling, zsnr))
        return (patched,)


class KSamplerSelect(Node):
    comfy_function = "get_sampler"
    category = "sampling/custom_sampling/samplers"
    comfy_module = "comfy_extras.nodes_custom_sampler"
    inputs = (Combo("sampler_name", SAMPLER_NAMES),)
    outputs = (Output("SAMPLER"),)

    def run(self, ctx, sampler_name):
        return (ks.ksampler_select(sampler_name),)


class BasicScheduler(Node):
    comfy_function = "get_sigmas"
    category = "sampling/custom_sampling/schedulers"
    comfy_module = "comfy_extras.nodes_custom_sampler"
    inputs = (Socket("model", "MODEL"), Combo("scheduler", SCHEDULER_NAMES), Steps(),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, model, scheduler, steps, denoise):
        return (ks.basic_scheduler(model, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    comfy_function = "get_sigmas"
    category = "sampling/custom_sampling/schedulers"
    comfy_module = "comfy_extras.nodes_custom_sampler"
    inputs = (Steps(), Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
              Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
              Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, steps, sigma_max, sigma_min, rho):
        return (ks.karras_scheduler(steps, sigma_max, sigma_min, rho),)


class SDTurboScheduler(Node):
    comfy_function = "get_sigmas"
    category = "sampling/custom_sampling/schedulers"
    comfy_module = "comfy_extras.nodes_custom_sampler"
    inputs = (Socket("model", "MODEL"), Int("steps", 1, min=1, max=10),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx, model, steps, denoise):
        return (ks.sd_turbo_scheduler(model, steps, denoise),)


class SplitSigmas(Node):
    comfy_function = "get_sigmas"
    category = "sampling/custom_sampling/sigmas"
    comfy_module = "comfy_extras.nodes_custom_sampler"
    inputs = (Socket("sigmas", "SIGMAS"), Int("step", 0, min=0, max=MAX_STEPS))
    outputs = (Output("SIGMAS", name="high_sigmas"), Output("SIGMAS", name="low_sigmas"))

    def run(self, ctx, sigmas, step):
        return ks.split_sigmas(sigmas, step)


class SamplerCustom(Node):
    comfy_function = "sample"
    category = "sampling/custom_sampling"
    comfy_module = "comfy_extras.nodes_custom_sampler"
    inputs = (Socket("model", "MODEL"), Boolean("add_noise", True), Seed("noise_seed"), Cfg(),
              Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("sampler", "SAMPLER"), Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT", name="output"), Output("LATENT", name="denoised_output"))

    def run(self, ctx, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        samples = comfy_function("comfy.sample", "fix_empty_latent_channels", ks.fix_empty_latent_channels)(
            model, latent_image["samples"])
        noise = (comfy_function("comfy.sample", "prepare_noise", prepare_noise)(
            samples, noise_seed, latent_image.get("batch_index")) if add_noise
            else samples.new_zeros(samples.shape, device="cpu"))
        return ks.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                seed=noise_seed, callback=step_reporter(ctx, model))


NODES = [KSampler, KSamplerAdvanced, ModelSamplingDiscrete, KSamplerSelect, BasicScheduler, KarrasScheduler,
         SDTurboScheduler, SplitSigmas, SamplerCustom]
