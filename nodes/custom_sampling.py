"""Custom sampling building blocks: SAMPLER objects with their options, and NOISE sources.

A SAMPLER is a `diffusion.ksampler.KSAMPLER`: a sampling function from `diffusion.samplers` plus
the options it is called with. The nodes below mirror ComfyUI's comfy_extras custom-sampling
nodes widget for widget."""
from __future__ import annotations

from diffusion import ksampler as ks
from diffusion import noise as noise_sources
from diffusion import samplers as S
from diffusion.overrides import comfy_function
from diffusion.samplers import SAMPLER_NAMES
from graph.contract import Boolean, Choice, Combo, Float, Input, Int, Node, Output, Socket

from .sampling import SEED_MAX, step_reporter

SAMPLERS = "sampling/custom_sampling/samplers"
CUSTOM_SAMPLER = "comfy_extras.nodes_custom_sampler"
ADVANCED_SAMPLERS = "comfy_extras.nodes_advanced_samplers"
SAMPLER = (Output("SAMPLER"),)


def Option(name: str, default: float, max: float = 100.0) -> Float:
    """A sampler option widget (eta, s_noise, tolerances): 0..max in steps of 0.01, unrounded."""
    return Float(name, default, min=0.0, max=max, step=0.01, round=False)


def NoiseDevice() -> Combo:
    return Combo("noise_device", ["gpu", "cpu"])


def _on_device(name: str, noise_device: str) -> str:
    """The Brownian-tree samplers' "_gpu" names build the tree on the latent's device."""
    return name if noise_device == "cpu" else f"{name}_gpu"


class KSamplerSelect(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Combo("sampler_name", SAMPLER_NAMES),)
    outputs = SAMPLER

    def run(self, ctx, sampler_name):
        return (ks.ksampler_select(sampler_name),)


class SamplerEulerAncestral(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Option("eta", 1.0), Option("s_noise", 1.0))
    outputs = SAMPLER

    def run(self, ctx, eta, s_noise):
        return (ks.ksampler_select("euler_ancestral", eta=eta, s_noise=s_noise),)


class SamplerEulerAncestralCFGPP(Node):
    display_name = "SamplerEulerAncestralCFG++"
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Option("eta", 1.0, max=1.0), Option("s_noise", 1.0, max=10.0))
    outputs = SAMPLER

    def run(self, ctx, eta, s_noise):
        return (ks.ksampler_select("euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise),)


class SamplerEulerCFGpp(Node):
    """Euler with CFG++; "alternative" takes the slope from x shifted by the guidance instead."""

    display_name = "SamplerEulerCFG++"
    comfy_function = "execute"
    category = "_for_testing"
    comfy_module = ADVANCED_SAMPLERS
    inputs = (Choice("version", ["regular", "alternative"]),)
    outputs = SAMPLER

    def run(self, ctx, version):
        if version == "alternative":
            return (ks.KSAMPLER(S.sample_euler_pp),)
        return (ks.ksampler_select("euler_cfg_pp"),)


class SamplerDPMPP_2S_Ancestral(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Option("eta", 1.0), Option("s_noise", 1.0))
    outputs = SAMPLER

    def run(self, ctx, eta, s_noise):
        return (ks.ksampler_select("dpmpp_2s_ancestral", eta=eta, s_noise=s_noise),)


class SamplerDPMPP_SDE(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Option("eta", 1.0), Option("s_noise", 1.0), Option("r", 0.5), NoiseDevice())
    outputs = SAMPLER

    def run(self, ctx, eta, s_noise, r, noise_device):
        return (ks.ksampler_select(_on_device("dpmpp_sde", noise_device), eta=eta, s_noise=s_noise, r=r),)


class SamplerDPMPP_2M_SDE(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Combo("solver_type", ["midpoint", "heun"]), Option("eta", 1.0), Option("s_noise", 1.0), NoiseDevice())
    outputs = SAMPLER

    def run(self, ctx, solver_type, eta, s_noise, noise_device):
        return (ks.ksampler_select(_on_device("dpmpp_2m_sde", noise_device), eta=eta, s_noise=s_noise,
                                   solver_type=solver_type),)


class SamplerDPMPP_3M_SDE(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Option("eta", 1.0), Option("s_noise", 1.0), NoiseDevice())
    outputs = SAMPLER

    def run(self, ctx, eta, s_noise, noise_device):
        return (ks.ksampler_select(_on_device("dpmpp_3m_sde", noise_device), eta=eta, s_noise=s_noise),)


class SamplerLMS(Node):
    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Int("order", 4, min=1, max=100),)
    outputs = SAMPLER

    def run(self, ctx, order):
        return (ks.ksampler_select("lms", order=order),)


class SamplerDPMAdaptative(Node):
    """DPM-Solver-12/23 with a PID step-size controller (the name is ComfyUI's spelling)."""

    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Int("order", 3, min=2, max=3), Option("rtol", 0.05), Option("atol", 0.0078), Option("h_init", 0.05),
              Option("pcoeff", 0.0), Option("icoeff", 1.0), Option("dcoeff", 0.0), Option("accept_safety", 0.81),
              Option("eta", 0.0), Option("s_noise", 1.0))
    outputs = SAMPLER

    def run(self, ctx, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise):
        return (ks.ksampler_select("dpm_adaptive", order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff,
                                   icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta,
                                   s_noise=s_noise),)


class SamplerER_SDE(Node):
    """ER-SDE-Solver. "ER-SDE" uses the paper's noise scaler; "Reverse-time SDE" the scaler
    x^(eta + 1), which is the plain reverse-time SDE of strength eta; "ODE" (or eta 0) no noise."""

    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Input("solver_type", "COMBO", choices=["ER-SDE", "Reverse-time SDE", "ODE"], typed_combo=True),
              Int("max_stage", 3, min=1, max=3), Option("eta", 1.0), Option("s_noise", 1.0))
    outputs = SAMPLER

    def run(self, ctx, solver_type, max_stage, eta, s_noise):
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0

        def reverse_time_sde(x):
            return x ** (eta + 1)

        noise_scaler = None if solver_type == "ER-SDE" else reverse_time_sde
        return (ks.ksampler_select("er_sde", s_noise=s_noise, noise_scaler=noise_scaler, max_stage=max_stage),)


class SamplerSASolver(Node):
    """SA-Solver with noise of strength eta between two points of the model's schedule."""

    comfy_function = "get_sampler"
    category = SAMPLERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Option("eta", 1.0, max=10.0),
              Float("sde_start_percent", 0.2, min=0.0, max=1.0, step=0.001),
              Float("sde_end_percent", 0.8, min=0.0, max=1.0, step=0.001), Option("s_noise", 1.0),
              Int("predictor_order", 3, min=1, max=6), Int("corrector_order", 4, min=0, max=6),
              Boolean("use_pece", None), Boolean("simple_order_2", None))
    outputs = SAMPLER

    def run(self, ctx, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order, corrector_order,
            use_pece, simple_order_2):
        ms = model.get_model_object("model_sampling")
        tau = S.tau_interval(ms.percent_to_sigma(sde_start_percent), ms.percent_to_sigma(sde_end_percent), eta)
        return (ks.ksampler_select("sa_solver", tau_func=tau, s_noise=s_noise, predictor_order=predictor_order,
                                   corrector_order=corrector_order, use_pece=use_pece,
                                   simple_order_2=simple_order_2),)


class SamplerLCMUpscale(Node):
    """LCM sampling that upscales the latent by scale_ratio over the first scale_steps steps
    (-1: about half of them)."""

    display_name = None
    comfy_function = "execute"
    category = SAMPLERS
    comfy_module = ADVANCED_SAMPLERS
    inputs = (Float("scale_ratio", 1.0, min=0.1, max=20.0, step=0.01), Int("scale_steps", -1, min=-1, max=1000, step=1),
              Choice("upscale_method", ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]))
    outputs = SAMPLER

    def run(self, ctx, scale_ratio, scale_steps, upscale_method):
        options = {"total_upscale": scale_ratio, "upscale_steps": None if scale_steps < 0 else scale_steps,
                   "upscale_method": upscale_method}
        return (ks.KSAMPLER(S.sample_lcm_upscale, options),)


# -- noise ----------------------------------------------------------------------------------------

NOISE = (Output("NOISE"),)


class RandomNoise(Node):
    """Seeded initial noise, drawn as KSampler draws it."""

    comfy_function = "get_noise"
    category = "sampling/custom_sampling/noise"
    comfy_module = CUSTOM_SAMPLER
    inputs = (Int("noise_seed", 0, min=0, max=SEED_MAX, control_after_generate=True),)
    outputs = NOISE

    def run(self, ctx, noise_seed):
        return (noise_sources.RandomNoise(noise_seed),)


class DisableNoise(Node):
    """No initial noise (for a latent that is already noisy)."""

    comfy_function = "get_noise"
    category = "sampling/custom_sampling/noise"
    comfy_module = CUSTOM_SAMPLER
    outputs = NOISE

    def run(self, ctx):
        return (noise_sources.DisableNoise(),)


class AddNoise(Node):
    """Noises a latent to the schedule's span |sigmas[0] - sigmas[-1]| (or sigmas[0] alone)."""

    comfy_function = "add_noise"
    category = "_for_testing/custom_sampling/noise"
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Socket("noise", "NOISE"), Socket("sigmas", "SIGMAS"),
              Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, model, noise, sigmas, latent_image):
        return (noise_sources.add_noise(model, noise, sigmas, latent_image),)


# -- the sampler ----------------------------------------------------------------------------------


class SamplerCustomAdvanced(Node):
    """Samples a latent with separately chosen noise, guider, sampler and sigmas. The second
    output is the last x0 estimate (the denoised latent at the last step's start)."""

    comfy_function = "sample"
    category = "sampling/custom_sampling"
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("noise", "NOISE"), Socket("guider", "GUIDER"), Socket("sampler", "SAMPLER"),
              Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT"))
    outputs = (Output("LATENT", name="output"), Output("LATENT", name="denoised_output"))

    def run(self, ctx, noise, guider, sampler, sigmas, latent_image):
        model = guider.model_patcher
        latent = dict(latent_image)
        latent["samples"] = comfy_function("comfy.sample", "fix_empty_latent_channels", ks.fix_empty_latent_channels)(
            model, latent["samples"])
        report = step_reporter(ctx, model) if ctx is not None else None
        total, last = max(sigmas.shape[-1] - 1, 0), {}

        def callback(i, x0, x, n):
            last["x0"] = x0
            if report is not None:
                report(i + 1, total, x0)

        samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                                denoise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True,
                                seed=noise.seed)
        out = {**latent, "samples": samples.cpu()}
        if "x0" not in last:
            return out, out
        return out, {**latent, "samples": model.model.process_latent_out(last["x0"].cpu())}


NODES = [KSamplerSelect, SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerEulerCFGpp,
         SamplerDPMPP_2S_Ancestral, SamplerDPMPP_SDE, SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE, SamplerLMS,
         SamplerDPMAdaptative, SamplerER_SDE, SamplerSASolver, SamplerLCMUpscale, RandomNoise, DisableNoise, AddNoise,
         SamplerCustomAdvanced]
