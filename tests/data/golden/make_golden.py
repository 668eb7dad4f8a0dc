"""Compute the golden reference values of tests/test_sampler_golden.py by running ComfyUI.

How the committed file was made (ComfyUI a125cd84 at /work/ref/ComfyUI, its venv: CPU torch
2.13.0, torchsde 0.2.6, scipy 1.17.1, numpy 2.4.6):

    /work/ref/venv/bin/python tests/data/golden/make_golden.py /work/ref/ComfyUI

It writes tests/data/golden/comfyui_reference.safetensors: float32/float64 tensors, and in the
header's metadata a JSON list ("cases") saying what produced each key. Nothing from ComfyUI is
copied here; this script imports ComfyUI and calls it:

* samplers: the sampling function ComfyUI's KSampler uses for every name in SAMPLER_NAMES
  (`comfy.samplers.sampler_object(name).sampler_function`), called like ComfyUI's KSAMPLER calls
  it, on the problem of tests/golden_problem.py (CFG 3 over two different analytic denoisers,
  combined by ComfyUI's own `comfy.samplers.cfg_function`, so CFG++ hooks run as in ComfyUI),
  for the sigmas of every scheduler in SCHEDULER_NAMES (8 steps, SD1 table) and two cut
  schedules (ending above 0; starting below sigma_max). Per-step noise comes from the seed in
  extra_args, as in ComfyUI.
* schedulers: `comfy.samplers.calculate_sigmas` for every scheduler and several step counts, on
  the SD1 table with and without zero-terminal-SNR.
* nodes: ComfyUI's own node classes (custom-sampling samplers, schedulers, sigma tools, noise,
  model-sampling patches) called with the inputs listed in the metadata; sampler nodes' SAMPLER
  objects are run on the "karras" case above. Nodes that take a MODEL get a stand-in holding
  ComfyUI's SD1.5 model sampling and latent format.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
OUT = HERE / "comfyui_reference.safetensors"

STEPS = 8
SCHEDULE_STEPS = (1, 2, 3, 5, 8, 13, 25, 50)
PERCENTS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
SIGMA_PROBES = (0.03, 0.2, 1.0, 3.0, 14.0, 80.0)


def main(comfy_root: str) -> None:
    sys.path.insert(0, comfy_root)
    warnings.simplefilter("ignore")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as `main.py --cpu`: this torch has no CUDA
    import comfy.latent_formats
    import comfy.model_sampling
    import comfy.samplers
    from comfy.extra_samplers import uni_pc  # noqa: F401 (sampler_object imports it too)
    from safetensors.torch import save_file

    # Loaded from its file: putting tests/ on sys.path would shadow ComfyUI's node_helpers.
    spec = importlib.util.spec_from_file_location("golden_problem", REPO / "tests" / "golden_problem.py")
    P = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(P)

    class SD1Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    ms = SD1Sampling()
    ms_zsnr = SD1Sampling(zsnr=True)
    tensors: dict[str, torch.Tensor] = {}
    cases: list[dict] = []

    def put(key: str, value, **info) -> None:
        t = torch.as_tensor(value)
        tensors[key] = (t.double() if t.dtype == torch.float64 else t.float()).clone().contiguous()
        cases.append({"key": key, **info})

    # -- the model a ComfyUI sampling function sees (KSamplerX0Inpaint over a CFGGuider) ------
    class Model:
        def __init__(self, model_sampling):
            base = SimpleNamespace(model_sampling=model_sampling)
            patcher = SimpleNamespace(get_model_object=lambda name: {"model_sampling": model_sampling}[name])
            self.inner_model = SimpleNamespace(inner_model=base, model_patcher=patcher, model_sampling=model_sampling)

        def __call__(self, x, sigma, denoise_mask=None, model_options={}, seed=None):
            cond, uncond = P.cond_uncond(x, sigma)
            if math.isclose(P.CFG, 1.0) and not model_options.get("disable_cfg1_optimization", False):
                uncond = torch.zeros_like(x)
            return comfy.samplers.cfg_function(None, cond, uncond, P.CFG, x, sigma, model_options=model_options)

    def run(ksampler_obj, sigmas):
        """The sampler's output and the x0 estimates its callback reported, in order."""
        x = P.start_latent(float(sigmas[0]))
        extra_args = {"model_options": {}, "seed": P.SEED, "denoise_mask": None}
        reported = []
        torch.manual_seed(P.SEED)  # for samplers that draw from the global generator (lcm upscale)
        out = ksampler_obj.sampler_function(Model(ms), x, sigmas.clone(), extra_args=extra_args,
                                            callback=lambda d: reported.append(d["denoised"]), disable=True,
                                            **ksampler_obj.extra_options)
        return out, reported

    # -- sigma cases shared by every sampler --------------------------------------------------
    sigma_cases = {name: comfy.samplers.calculate_sigmas(ms, name, STEPS) for name in comfy.samplers.SCHEDULER_NAMES}
    long = comfy.samplers.calculate_sigmas(ms, "karras", 12)
    sigma_cases["partial"] = long[:8]  # stops above 0, as KSamplerAdvanced with leftover noise
    sigma_cases["low"] = long[5:]  # starts below sigma_max, as with denoise < 1
    for case, sigmas in sigma_cases.items():
        put(f"sigmas/{case}", sigmas, kind="sigmas", case=case)
        put(f"x/{case}", P.start_latent(float(sigmas[0])), kind="start", case=case)
    for name in comfy.samplers.SAMPLER_NAMES:
        for case, sigmas in sigma_cases.items():
            out, reported = run(comfy.samplers.sampler_object(name), sigmas)
            put(f"sampler/{name}/{case}", out, kind="sampler", sampler=name, case=case)
            if case == "karras":  # what SamplerCustom's denoised_output and the previews see
                put(f"sampler_x0/{name}/{case}", reported[-1], kind="sampler_x0", sampler=name, case=case,
                    callbacks=len(reported))

    # -- schedulers ---------------------------------------------------------------------------
    for table, tms in (("sd1", ms), ("sd1_zsnr", ms_zsnr)):
        for name in comfy.samplers.SCHEDULER_NAMES:
            for steps in SCHEDULE_STEPS:
                put(f"schedule/{table}/{name}/{steps}", comfy.samplers.calculate_sigmas(tms, name, steps),
                    kind="schedule", table=table, scheduler=name, steps=steps)

    # -- nodes --------------------------------------------------------------------------------
    from comfy_extras import (nodes_advanced_samplers, nodes_align_your_steps, nodes_custom_sampler, nodes_gits,
                              nodes_model_advanced, nodes_optimalsteps)

    class Patcher:
        """The MODEL a node sees: ComfyUI's SD1.5 model sampling and latent format."""

        def __init__(self, model_sampling=ms, latent_format=None):
            self.objects = {"model_sampling": model_sampling}
            self.latent_format = latent_format or comfy.latent_formats.SD15()
            self.model = SimpleNamespace(model_config=SimpleNamespace(sampling_settings={}),
                                         latent_format=self.latent_format)

        def get_model_object(self, name):
            if name == "process_latent_in":
                return self.latent_format.process_in
            if name == "process_latent_out":
                return self.latent_format.process_out
            return self.objects[name]

        def clone(self):
            return Patcher(self.objects["model_sampling"], self.latent_format)

        def add_object_patch(self, name, obj):
            if name == "latent_format":
                self.latent_format = obj
            self.objects[name] = obj

    modules = {"nodes_custom_sampler": nodes_custom_sampler, "nodes_advanced_samplers": nodes_advanced_samplers,
               "nodes_align_your_steps": nodes_align_your_steps, "nodes_gits": nodes_gits,
               "nodes_optimalsteps": nodes_optimalsteps, "nodes_model_advanced": nodes_model_advanced}

    def call_node(module: str, node: str, inputs: dict):
        cls = getattr(modules[module], node)
        if hasattr(cls, "execute"):  # V3 node
            return tuple(cls.execute(**inputs).result)
        obj = cls()
        return getattr(obj, cls.FUNCTION)(**inputs)

    def model_inputs(inputs):
        return {k: (Patcher() if v == "<MODEL>" else v) for k, v in inputs.items()}

    for i, (module, node, inputs) in enumerate(SAMPLER_NODE_CASES):
        sampler, = call_node(module, node, model_inputs(inputs))
        out, _ = run(sampler, sigma_cases["karras"])
        put(f"node/{node}/{i}", out, kind="sampler_node", node=node, inputs=inputs, case="karras")

    for i, (module, node, inputs) in enumerate(SIGMA_NODE_CASES):
        given = dict(inputs)
        if "sigmas" in given:
            given["sigmas"] = torch.tensor(given["sigmas"], dtype=torch.float32)
        outs = call_node(module, node, model_inputs(given))
        for j, value in enumerate(outs):
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value, dtype=torch.float64)  # SamplingPercentToSigma's FLOAT
            put(f"node/{node}/{i}/{j}", value, kind="sigma_node", node=node, inputs=inputs, output=j)

    latent = P.start_latent(0.0)
    for i, (seed, sigmas) in enumerate(ADD_NOISE_CASES):
        noise = (nodes_custom_sampler.Noise_RandomNoise(seed) if seed is not None
                 else nodes_custom_sampler.Noise_EmptyNoise())
        for j, samples in enumerate((latent, torch.zeros_like(latent))):
            out, = nodes_custom_sampler.AddNoise().add_noise(Patcher(), noise, torch.tensor(sigmas),
                                                             {"samples": samples})
            put(f"node/AddNoise/{i}/{j}", out["samples"], kind="add_noise", seed=seed, sigmas=sigmas,
                latent="start" if j == 0 else "zeros")

    probes = torch.tensor(SIGMA_PROBES)
    x = P.start_latent(1.0)
    model_output = P.start_latent(0.0).flip(0)
    batch_sigma = torch.tensor([0.5, 6.0])
    for i, (node, inputs) in enumerate(MODEL_SAMPLING_CASES):
        patched, = call_node("nodes_model_advanced", node, model_inputs(inputs))
        m = patched.get_model_object("model_sampling")
        base = f"model_sampling/{i}"
        info = {"kind": "model_sampling", "node": node, "inputs": inputs}
        put(f"{base}/sigmas", m.sigmas, **info)
        timesteps = m.timestep(probes)
        put(f"{base}/timestep", timesteps, **info)
        # one at a time: cosmos_rflow's sigma() takes a single timestep
        put(f"{base}/sigma", torch.stack([torch.as_tensor(m.sigma(t)) for t in timesteps.float()]), **info)
        put(f"{base}/percent_to_sigma", torch.tensor([float(m.percent_to_sigma(p)) for p in PERCENTS],
                                                      dtype=torch.float64), **info)
        put(f"{base}/calculate_input", m.calculate_input(batch_sigma, x), **info)
        put(f"{base}/calculate_denoised", m.calculate_denoised(batch_sigma, model_output, x), **info)
        put(f"{base}/noise_scaling", m.noise_scaling(batch_sigma, model_output.clone(), x), **info)
        put(f"{base}/noise_scaling_max", m.noise_scaling(torch.tensor(float(m.sigma_max)), model_output.clone(), x,
                                                         max_denoise=True), **info)
        put(f"{base}/inverse_noise_scaling", m.inverse_noise_scaling(batch_sigma, x.clone()), **info)
        put(f"{base}/latent_in", patched.latent_format.process_in(x), **info)
        for name in comfy.samplers.SCHEDULER_NAMES:
            put(f"{base}/schedule/{name}", comfy.samplers.calculate_sigmas(m, name, 10), **info)

    meta = {"comfyui": "a125cd84", "torch": torch.__version__, "cases": json.dumps(cases)}
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {len(tensors)} tensors to {OUT}")


# (module, node, inputs); "<MODEL>" is the SD1.5 stand-in.
SAMPLER_NODE_CASES = [
    ("nodes_custom_sampler", "SamplerEulerAncestral", {"eta": 0.5, "s_noise": 0.8}),
    ("nodes_custom_sampler", "SamplerEulerAncestralCFGPP", {"eta": 0.6, "s_noise": 1.2}),
    ("nodes_custom_sampler", "SamplerDPMPP_2S_Ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("nodes_custom_sampler", "SamplerDPMPP_SDE", {"eta": 0.7, "s_noise": 0.9, "r": 0.3, "noise_device": "cpu"}),
    ("nodes_custom_sampler", "SamplerDPMPP_SDE", {"eta": 1.0, "s_noise": 1.0, "r": 0.5, "noise_device": "gpu"}),
    ("nodes_custom_sampler", "SamplerDPMPP_2M_SDE",
     {"solver_type": "heun", "eta": 0.5, "s_noise": 0.8, "noise_device": "cpu"}),
    ("nodes_custom_sampler", "SamplerDPMPP_2M_SDE",
     {"solver_type": "midpoint", "eta": 1.0, "s_noise": 1.0, "noise_device": "gpu"}),
    ("nodes_custom_sampler", "SamplerDPMPP_3M_SDE", {"eta": 0.5, "s_noise": 1.1, "noise_device": "cpu"}),
    ("nodes_custom_sampler", "SamplerDPMPP_3M_SDE", {"eta": 1.0, "s_noise": 1.0, "noise_device": "gpu"}),
    ("nodes_custom_sampler", "SamplerLMS", {"order": 2}),
    ("nodes_custom_sampler", "SamplerLMS", {"order": 6}),
    ("nodes_custom_sampler", "SamplerDPMAdaptative",
     {"order": 2, "rtol": 0.01, "atol": 0.001, "h_init": 0.1, "pcoeff": 0.1, "icoeff": 0.9, "dcoeff": 0.05,
      "accept_safety": 0.9, "eta": 0.0, "s_noise": 1.0}),
    ("nodes_custom_sampler", "SamplerDPMAdaptative",
     {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0, "icoeff": 1.0, "dcoeff": 0.0,
      "accept_safety": 0.81, "eta": 0.4, "s_noise": 0.9}),
    ("nodes_custom_sampler", "SamplerER_SDE", {"solver_type": "ER-SDE", "max_stage": 3, "eta": 1.0, "s_noise": 0.9}),
    ("nodes_custom_sampler", "SamplerER_SDE",
     {"solver_type": "Reverse-time SDE", "max_stage": 2, "eta": 0.5, "s_noise": 1.0}),
    ("nodes_custom_sampler", "SamplerER_SDE", {"solver_type": "ODE", "max_stage": 1, "eta": 1.0, "s_noise": 1.0}),
    ("nodes_custom_sampler", "SamplerER_SDE",
     {"solver_type": "Reverse-time SDE", "max_stage": 3, "eta": 0.0, "s_noise": 1.0}),
    ("nodes_custom_sampler", "SamplerSASolver",
     {"model": "<MODEL>", "eta": 1.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8, "s_noise": 1.0,
      "predictor_order": 3, "corrector_order": 4, "use_pece": False, "simple_order_2": False}),
    ("nodes_custom_sampler", "SamplerSASolver",
     {"model": "<MODEL>", "eta": 0.7, "sde_start_percent": 0.1, "sde_end_percent": 0.6, "s_noise": 0.8,
      "predictor_order": 2, "corrector_order": 1, "use_pece": True, "simple_order_2": True}),
    ("nodes_custom_sampler", "SamplerSASolver",
     {"model": "<MODEL>", "eta": 0.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8, "s_noise": 1.0,
      "predictor_order": 5, "corrector_order": 0, "use_pece": False, "simple_order_2": False}),
    ("nodes_advanced_samplers", "SamplerEulerCFGpp", {"version": "regular"}),
    ("nodes_advanced_samplers", "SamplerEulerCFGpp", {"version": "alternative"}),
    ("nodes_advanced_samplers", "SamplerLCMUpscale",
     {"scale_ratio": 1.5, "scale_steps": -1, "upscale_method": "bislerp"}),
    ("nodes_advanced_samplers", "SamplerLCMUpscale",
     {"scale_ratio": 2.0, "scale_steps": 2, "upscale_method": "nearest-exact"}),
    ("nodes_advanced_samplers", "SamplerLCMUpscale",
     {"scale_ratio": 0.75, "scale_steps": 20, "upscale_method": "area"}),
]

_SIGMAS = [14.6146, 9.7, 4.2, 2.0, 0.9, 0.3, 0.0]
SIGMA_NODE_CASES = [
    ("nodes_custom_sampler", "KarrasScheduler", {"steps": 9, "sigma_max": 20.0, "sigma_min": 0.05, "rho": 5.0}),
    ("nodes_custom_sampler", "ExponentialScheduler", {"steps": 7, "sigma_max": 14.614642, "sigma_min": 0.0291675}),
    ("nodes_custom_sampler", "PolyexponentialScheduler",
     {"steps": 9, "sigma_max": 14.614642, "sigma_min": 0.0291675, "rho": 2.5}),
    ("nodes_custom_sampler", "LaplaceScheduler",
     {"steps": 10, "sigma_max": 14.614642, "sigma_min": 0.0291675, "mu": 0.0, "beta": 0.5}),
    ("nodes_custom_sampler", "LaplaceScheduler",
     {"steps": 7, "sigma_max": 10.0, "sigma_min": 0.1, "mu": 0.7, "beta": 1.3}),
    ("nodes_custom_sampler", "VPScheduler", {"steps": 8, "beta_d": 19.9, "beta_min": 0.1, "eps_s": 0.001}),
    ("nodes_custom_sampler", "VPScheduler", {"steps": 5, "beta_d": 12.0, "beta_min": 0.3, "eps_s": 0.01}),
    ("nodes_custom_sampler", "BetaSamplingScheduler", {"model": "<MODEL>", "steps": 12, "alpha": 0.6, "beta": 0.6}),
    ("nodes_custom_sampler", "BetaSamplingScheduler", {"model": "<MODEL>", "steps": 30, "alpha": 0.3, "beta": 2.0}),
    ("nodes_custom_sampler", "SDTurboScheduler", {"model": "<MODEL>", "steps": 4, "denoise": 0.8}),
    ("nodes_custom_sampler", "BasicScheduler", {"model": "<MODEL>", "scheduler": "karras", "steps": 6, "denoise": 0.6}),
    ("nodes_align_your_steps", "AlignYourStepsScheduler", {"model_type": "SD1", "steps": 10, "denoise": 1.0}),
    ("nodes_align_your_steps", "AlignYourStepsScheduler", {"model_type": "SDXL", "steps": 16, "denoise": 1.0}),
    ("nodes_align_your_steps", "AlignYourStepsScheduler", {"model_type": "SVD", "steps": 7, "denoise": 0.6}),
    ("nodes_align_your_steps", "AlignYourStepsScheduler", {"model_type": "SD1", "steps": 10, "denoise": 0.5}),
    ("nodes_gits", "GITSScheduler", {"coeff": 1.2, "steps": 10, "denoise": 1.0}),
    ("nodes_gits", "GITSScheduler", {"coeff": 0.8, "steps": 2, "denoise": 1.0}),
    ("nodes_gits", "GITSScheduler", {"coeff": 1.5, "steps": 20, "denoise": 0.5}),
    ("nodes_gits", "GITSScheduler", {"coeff": 1.05, "steps": 37, "denoise": 1.0}),
    ("nodes_gits", "GITSScheduler", {"coeff": 0.95, "steps": 13, "denoise": 0.7}),
    ("nodes_optimalsteps", "OptimalStepsScheduler", {"model_type": "FLUX", "steps": 10, "denoise": 1.0}),
    ("nodes_optimalsteps", "OptimalStepsScheduler", {"model_type": "Wan", "steps": 12, "denoise": 0.75}),
    ("nodes_optimalsteps", "OptimalStepsScheduler", {"model_type": "Chroma", "steps": 40, "denoise": 1.0}),
    ("nodes_custom_sampler", "SplitSigmasDenoise", {"sigmas": _SIGMAS, "denoise": 0.5}),
    ("nodes_custom_sampler", "SplitSigmasDenoise", {"sigmas": _SIGMAS, "denoise": 0.34}),
    ("nodes_custom_sampler", "SplitSigmasDenoise", {"sigmas": _SIGMAS, "denoise": 1.0}),
    ("nodes_custom_sampler", "FlipSigmas", {"sigmas": _SIGMAS}),
    ("nodes_custom_sampler", "SetFirstSigma", {"sigmas": _SIGMAS, "sigma": 136.0}),
    ("nodes_custom_sampler", "ExtendIntermediateSigmas",
     {"sigmas": _SIGMAS, "steps": 2, "start_at_sigma": -1.0, "end_at_sigma": 12.0, "spacing": "linear"}),
    ("nodes_custom_sampler", "ExtendIntermediateSigmas",
     {"sigmas": _SIGMAS, "steps": 4, "start_at_sigma": 5.0, "end_at_sigma": 0.5, "spacing": "cosine"}),
    ("nodes_custom_sampler", "ExtendIntermediateSigmas",
     {"sigmas": _SIGMAS, "steps": 3, "start_at_sigma": -1.0, "end_at_sigma": 0.0, "spacing": "sine"}),
    ("nodes_custom_sampler", "SamplingPercentToSigma",
     {"model": "<MODEL>", "sampling_percent": 0.0, "return_actual_sigma": False}),
    ("nodes_custom_sampler", "SamplingPercentToSigma",
     {"model": "<MODEL>", "sampling_percent": 0.0, "return_actual_sigma": True}),
    ("nodes_custom_sampler", "SamplingPercentToSigma",
     {"model": "<MODEL>", "sampling_percent": 1.0, "return_actual_sigma": True}),
    ("nodes_custom_sampler", "SamplingPercentToSigma",
     {"model": "<MODEL>", "sampling_percent": 1.0, "return_actual_sigma": False}),
    ("nodes_custom_sampler", "SamplingPercentToSigma",
     {"model": "<MODEL>", "sampling_percent": 0.37, "return_actual_sigma": False}),
]

# (RandomNoise seed or None for DisableNoise, sigmas)
ADD_NOISE_CASES = [(42, [14.6, 3.0, 0.0]), (3, [2.5, 1.0]), (None, [5.0, 0.0]), (9, [0.7])]

MODEL_SAMPLING_CASES = [
    ("ModelSamplingDiscrete", {"model": "<MODEL>", "sampling": s, "zsnr": z})
    for s in ("eps", "v_prediction", "lcm", "x0", "img_to_img") for z in (False, True)
] + [
    ("ModelSamplingContinuousEDM", {"model": "<MODEL>", "sampling": s, "sigma_max": 120.0, "sigma_min": 0.002})
    for s in ("v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow")
] + [
    ("ModelSamplingContinuousEDM", {"model": "<MODEL>", "sampling": "eps", "sigma_max": 80.0, "sigma_min": 0.03}),
    ("ModelSamplingContinuousV", {"model": "<MODEL>", "sampling": "v_prediction", "sigma_max": 500.0,
                                  "sigma_min": 0.03}),
    ("ModelSamplingContinuousV", {"model": "<MODEL>", "sampling": "v_prediction", "sigma_max": 80.0,
                                  "sigma_min": 0.1}),
]

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/ref/ComfyUI")
