"""Samplers for the probability-flow ODE / reverse SDE in the variance-exploding view, one module
per family (euler, lms, dpm_solver, dpmpp, sde, er_sde, seeds, lcm, multistep, res, sa_solver,
uni_pc; shared pieces in common).

Every sampler has the signature

    sample_NAME(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x

where `model(x, sigma_batch, **extra_args)` is a denoiser D(x, sigma) returning the x0 estimate
(eps- and v-prediction networks are both wrapped to this form), `x` is already noised to
sigmas[0] and `sigmas` is a descending schedule (usually ending in 0). `callback`, if given, gets
{"x", "i", "sigma", "sigma_hat", "denoised"} once per model step. The maths follows ComfyUI's
k-diffusion fork so that a seed gives ComfyUI's image (tests/test_sampler_golden.py checks every
name against ComfyUI's own functions); the code is our own.

Stochastic samplers take their noise from `noise_sampler(sigma, sigma_next)`; by default a
per-step generator seeded with extra_args["seed"] (ancestral) or a Brownian tree over
[sigma_min, sigma_max] with that seed (SDE samplers). CFG++ samplers read the unconditional
estimate through the "sampler_post_cfg_function" hook of extra_args["model_options"].
"""
from __future__ import annotations

from .common import append_dims, get_ancestral_step, to_d
from .dpm_solver import dpm_solver_adaptive, dpm_solver_fast, sample_dpm_adaptive, sample_dpm_fast
from .dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_cfg_pp, sample_dpmpp_2s_ancestral, sample_dpmpp_2s_ancestral_cfg_pp
from .er_sde import sample_er_sde
from .euler import (sample_dpm_2, sample_dpm_2_ancestral, sample_euler, sample_euler_ancestral,
                    sample_euler_ancestral_cfg_pp, sample_euler_cfg_pp, sample_euler_pp, sample_gradient_estimation,
                    sample_gradient_estimation_cfg_pp, sample_heun, sample_heunpp2)
from .lcm import sample_ddpm, sample_lcm, sample_lcm_upscale
from .lms import linear_multistep_coeff, sample_lms
from .multistep import sample_deis, sample_ipndm, sample_ipndm_v
from .res import (sample_res_multistep, sample_res_multistep_ancestral, sample_res_multistep_ancestral_cfg_pp,
                  sample_res_multistep_cfg_pp)
from .sa_solver import sample_sa_solver, sample_sa_solver_pece, tau_interval
from .sde import (sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_gpu, sample_dpmpp_2m_sde_heun,
                  sample_dpmpp_2m_sde_heun_gpu, sample_dpmpp_3m_sde, sample_dpmpp_3m_sde_gpu, sample_dpmpp_sde,
                  sample_dpmpp_sde_gpu)
from .seeds import sample_seeds_2, sample_seeds_3
from .uni_pc import sample_uni_pc, sample_uni_pc_bh2

SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]

# KSampler computes one extra step for these and drops the second-to-last sigma: their final
# step to 0 is Euler, so this keeps the number of second-order steps equal to `steps`.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def sampler_function(name: str):
    """The sampling function of a sampler name. "ddim" is Euler (in the VE frame Euler on the
    probability-flow ODE is exactly deterministic DDIM); KSampler adds its inpainting noise rule."""
    if name == "ddim":
        return sample_euler
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}")
    return globals()[f"sample_{name}"]


__all__ = ["SAMPLER_NAMES", "DISCARD_PENULTIMATE_SIGMA_SAMPLERS", "sampler_function", "append_dims", "to_d",
           "get_ancestral_step", "linear_multistep_coeff", "dpm_solver_fast", "dpm_solver_adaptive", "tau_interval",
           "sample_euler_pp", "sample_lcm_upscale"] + [f"sample_{n}" for n in SAMPLER_NAMES if n != "ddim"]
