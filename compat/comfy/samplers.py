"""ComfyUI's `comfy.samplers`: KSampler (with SAMPLERS / SCHEDULERS), KSAMPLER, ksampler,
sampler_object, sample, CFGGuider, calc_cond_batch, sampling_function, cfg_function,
calculate_sigmas and the schedulers. They are the engine's own (diffusion/ksampler.py); the
engine calls the replaceable ones through this module's attributes, so a plugin's replacement
(of sampling_function, calc_cond_batch, sample, sampler_object, KSampler, ...) takes effect for
the built-in nodes too."""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import torch

from diffusion import schedules as _schedules
from diffusion.ksampler import (
    KSAMPLER,
    KSAMPLER_NAMES,
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    CFGGuider,
    CondObj,
    KSampler,
    KSamplerX0Inpaint,
    Sampler,
    add_area_dims,
    apply_empty_x_to_equal_area,
    calc_cond_batch,
    calc_cond_uncond_batch,
    calculate_sigmas,
    calculate_start_end_timesteps,
    can_concat_cond,
    cfg_function,
    cond_cat,
    cond_equal_size,
    create_cond_with_same_area_if_none,
    encode_model_conds,
    filter_registered_hooks_on_conds,
    finalize_default_conds,
    get_area_and_mult,
    get_mask_aabb,
    get_total_hook_groups_in_conds,
    ksampler,
    pre_run_control,
    preprocess_conds_hooks,
    process_conds,
    resolve_areas_and_cond_masks_multidim,
    sample,
    sampler_object,
    sampling_function,
)


def resolve_areas_and_cond_masks(conditions, h, w, device):
    return resolve_areas_and_cond_masks_multidim(conditions, [h, w], device)


def simple_scheduler(model_sampling, steps):
    return _schedules.simple(model_sampling, steps)


def ddim_scheduler(model_sampling, steps):
    return _schedules.ddim_uniform(model_sampling, steps)


def normal_scheduler(model_sampling, steps, sgm=False, floor=False):
    return _schedules.normal(model_sampling, steps, sgm=sgm)


def beta_scheduler(model_sampling, steps, alpha=0.6, beta=0.6):
    return _schedules.beta(model_sampling, steps, alpha, beta)


def linear_quadratic_schedule(model_sampling, steps, threshold_noise=0.025, linear_steps=None):
    return _schedules.linear_quadratic(model_sampling, steps, threshold_noise, linear_steps)


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _schedules.kl_optimal(n, sigma_min, sigma_max)


def _karras(n, sigma_min, sigma_max):
    return _schedules.karras(n, sigma_min, sigma_max)


def _exponential(n, sigma_min, sigma_max):
    return _schedules.exponential(n, sigma_min, sigma_max)


class SchedulerHandler(NamedTuple):
    handler: Callable[..., torch.Tensor]
    use_ms: bool = True  # handler(model_sampling, steps), else handler(n, sigma_min, sigma_max)


SCHEDULER_HANDLERS = {
    "simple": SchedulerHandler(simple_scheduler),
    "sgm_uniform": SchedulerHandler(partial(normal_scheduler, sgm=True)),
    "karras": SchedulerHandler(_karras, use_ms=False),
    "exponential": SchedulerHandler(_exponential, use_ms=False),
    "ddim_uniform": SchedulerHandler(ddim_scheduler),
    "beta": SchedulerHandler(beta_scheduler),
    "normal": SchedulerHandler(normal_scheduler),
    "linear_quadratic": SchedulerHandler(linear_quadratic_schedule),
    "kl_optimal": SchedulerHandler(kl_optimal_scheduler, use_ms=False),
}

__all__ = ["CFGGuider", "CondObj", "KSAMPLER", "KSAMPLER_NAMES", "KSampler", "KSamplerX0Inpaint", "SAMPLER_NAMES",
           "SCHEDULER_HANDLERS", "SCHEDULER_NAMES", "Sampler", "SchedulerHandler", "add_area_dims",
           "apply_empty_x_to_equal_area", "beta_scheduler", "calc_cond_batch", "calc_cond_uncond_batch",
           "calculate_sigmas", "calculate_start_end_timesteps", "can_concat_cond", "cfg_function", "cond_cat",
           "cond_equal_size", "create_cond_with_same_area_if_none", "ddim_scheduler", "encode_model_conds",
           "filter_registered_hooks_on_conds", "finalize_default_conds", "get_area_and_mult", "get_mask_aabb",
           "get_total_hook_groups_in_conds", "kl_optimal_scheduler", "ksampler",
           "linear_quadratic_schedule", "normal_scheduler", "pre_run_control", "preprocess_conds_hooks", "process_conds",
           "resolve_areas_and_cond_masks", "resolve_areas_and_cond_masks_multidim", "sample", "sampler_object",
           "sampling_function", "simple_scheduler"]
