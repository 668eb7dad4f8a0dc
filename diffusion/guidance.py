"""Variants of classifier-free guidance, as the MODEL hooks ComfyUI's sampler calls:

* cfg functions (`sampler_cfg_function`, args with noise predictions "cond"/"uncond" = x - D and
  the x0 estimates "cond_denoised"/"uncond_denoised"; they return a noise prediction):
  RescaleCFG, RenormCFG;
* post-CFG functions (`sampler_post_cfg_function`, args with the guided x0 "denoised"; they
  return an x0): epsilon scaling, CFGNorm, CFG-Zero*, Mahiro;
* pre-CFG functions (`sampler_pre_cfg_function`, args with "conds_out" = [cond x0, uncond x0,
  ...]; they return that list): TCFG, FreSca.

Each builder returns the function to register; the formulas are those of the papers as ComfyUI
implements them (its node files name the papers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[:1] + (1,) * (like.ndim - 1))


# -- cfg functions --------------------------------------------------------------------------------

def rescale_cfg(multiplier: float):
    """Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps Are Flawed", eq. 15-16):
    CFG on v-predictions, the result's per-sample std rescaled to the positive prediction's,
    mixed by `multiplier` with plain CFG. The v of an eps model is recovered from x and x0."""

    def cfg(args):
        x_orig, cond_scale = args["input"], args["cond_scale"]
        sigma = _per_sample(args["sigma"], args["cond"])
        x = x_orig / (sigma * sigma + 1.0)
        to_v = lambda eps: ((x - (x_orig - eps)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        cond, uncond = to_v(args["cond"]), to_v(args["uncond"])
        v_cfg = uncond + cond_scale * (cond - uncond)
        std_pos = torch.std(cond, dim=(1, 2, 3), keepdim=True)
        std_cfg = torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
        v_final = multiplier * (v_cfg * (std_pos / std_cfg)) + (1.0 - multiplier) * v_cfg
        return x_orig - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)

    return cfg


def renorm_cfg(in_channels: int, cfg_trunc: float, renorm: float):
    """Lumina-Image 2.0's guidance: while the timestep argument (the sigma) is below `cfg_trunc`,
    CFG on the first `in_channels` channels with the result's norm capped at `renorm` times the
    positive prediction's (renorm 0: no cap); from cfg_trunc up, the positive prediction alone.
    Channels past `in_channels` always take the positive prediction."""

    def cfg(args):
        cond, uncond = args["cond_denoised"], args["uncond_denoised"]
        cond_scale, x_orig = args["cond_scale"], args["input"]
        cond_main, uncond_main, rest = cond[:, :in_channels], uncond[:, :in_channels], cond[:, in_channels:]
        if args["timestep"][0] < cfg_trunc:
            guided = uncond_main + cond_scale * (cond_main - uncond_main)
            if float(renorm) > 0.0:
                dims = tuple(range(1, cond_main.ndim))
                limit = torch.linalg.vector_norm(cond_main, dim=dims, keepdim=True) * float(renorm)
                norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
                # Per sample (ComfyUI compares one tensor as a bool, so only a batch of 1 runs there).
                guided = torch.where(norm >= limit, guided * (limit / norm), guided)
        else:
            guided = cond_main
        return x_orig - torch.cat([guided, rest], dim=1)

    return cfg


# -- post-CFG functions ----------------------------------------------------------------------------

def epsilon_scaling(scaling_factor: float):
    """Ning et al. 2023 ("Elucidating the Exposure Bias in Diffusion Models"), uniform schedule:
    the guided noise prediction divided by `scaling_factor`."""
    factor = scaling_factor if scaling_factor != 0 else 1e-9

    def post_cfg(args):
        x = args["input"]
        return x - (x - args["denoised"]) / factor

    return post_cfg


def cfg_norm(strength: float):
    """The guided x0 scaled per pixel so its channel norm does not exceed the positive
    prediction's, then by `strength`."""

    def post_cfg(args):
        cond, guided = args["cond_denoised"], args["denoised"]
        ratio = torch.norm(cond, dim=1, keepdim=True) / (torch.norm(guided, dim=1, keepdim=True) + 1e-8)
        return guided * ratio.clamp(min=0.0, max=1.0) * strength

    return post_cfg


def optimized_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per sample, the least-squares s* with s* negative ~ positive: <p, n> / (|n|^2 + 1e-8)."""
    p = positive.reshape(positive.shape[0], -1)
    n = negative.reshape(negative.shape[0], -1)
    s = torch.sum(p * n, dim=1, keepdim=True) / (torch.sum(n ** 2, dim=1, keepdim=True) + 1e-8)
    return s.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def cfg_zero_star():
    """Fan et al. 2025 ("CFG-Zero*"), optimized scale: the unconditional x0 in the CFG result is
    scaled by alpha = s*(noise predictions), i.e. D = D_cfg + (alpha - 1)(1 - cfg) D_uncond."""

    def post_cfg(args):
        x, cfg = args["input"], args["cond_scale"]
        cond, uncond = args["cond_denoised"], args["uncond_denoised"]
        alpha = optimized_scale(x - cond, x - uncond)
        return args["denoised"] + uncond * (alpha - 1.0) + cfg * uncond * (1.0 - alpha)

    return post_cfg


def mahiro():
    """Mahiro guidance: a mix of the CFG result and the positive prediction scaled by the CFG
    scale, weighted by how similar (mean cosine over pixels of the signed square roots) the
    scaled negative prediction is to their average."""

    def post_cfg(args):
        scale = args["cond_scale"]
        leap = args["cond_denoised"] * scale
        uncond_leap = args["uncond_denoised"] * scale
        guided = args["denoised"]
        merge = (leap + guided) / 2
        signed_root = lambda t: torch.sqrt(t.abs()) * t.sign()
        similarity = F.cosine_similarity(signed_root(uncond_leap), signed_root(merge)).mean()
        weight = 2 * (similarity + 1)
        return (weight * guided + (4 - weight) * leap) / 4

    return post_cfg


# -- pre-CFG functions -----------------------------------------------------------------------------

def _guided_pair(args) -> bool:
    return len(args["conds_out"]) > 1 and None not in args["conds"][:2]


def tangential_damping(cond_score: torch.Tensor, uncond_score: torch.Tensor) -> torch.Tensor:
    """TCFG (Kwon et al. 2025, arXiv 2503.18137): the unconditional score projected onto the first
    right singular vector of the 2-row matrix [uncond; cond] (per sample), dropping its tangential
    part."""
    batch = cond_score.shape[0]
    cond_flat = cond_score.reshape(batch, 1, -1).float()
    uncond_flat = uncond_score.reshape(batch, 1, -1).float()
    matrix = torch.cat((uncond_flat, cond_flat), dim=1)
    try:
        _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    except RuntimeError:  # some backends lack the SVD
        _, _, vh = torch.linalg.svd(matrix.cpu(), full_matrices=False)
    v1 = vh[:, 0:1, :].to(uncond_flat.device)
    return ((uncond_flat @ v1.transpose(-2, -1)) * v1).reshape_as(uncond_score).to(uncond_score.dtype)


def tcfg():
    def pre_cfg(args):
        conds_out = args["conds_out"]
        if not _guided_pair(args):
            return conds_out
        x = args["input"]
        cond, uncond = conds_out[0], conds_out[1]
        damped = tangential_damping(x - cond, x - uncond)
        return [cond, x - damped] + conds_out[2:]

    return pre_cfg


def scale_frequencies(x: torch.Tensor, scale_low: float = 1.0, scale_high: float = 1.5,
                      freq_cutoff: int = 20) -> torch.Tensor:
    """FreSca (Huang et al. 2025): x's spectrum over its last two axes scaled by `scale_low` within
    `freq_cutoff` indices of the centre (on every axis after the first two, as ComfyUI marks it),
    by `scale_high` elsewhere; computed in float32, returned in x's dtype."""
    dtype, device = x.dtype, x.device
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.to(torch.float32), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones(spectrum.shape, device=device) * scale_high
    centre = mask
    for axis in range(2, x.ndim):
        c = spectrum.shape[axis] // 2
        f = min(freq_cutoff, c)
        centre = centre.narrow(axis, c - f, f * 2)
    centre[:] = scale_low
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(dtype)


def fresca(scale_low: float, scale_high: float, freq_cutoff: int):
    """The guidance direction (cond - uncond) frequency-scaled, the positive prediction rebuilt
    from it."""

    def pre_cfg(args):
        conds_out = args["conds_out"]
        if not _guided_pair(args):
            return conds_out
        cond, uncond = conds_out[0], conds_out[1]
        filtered = scale_frequencies(cond - uncond, scale_low, scale_high, freq_cutoff)
        return [filtered + uncond, uncond] + conds_out[2:]

    return pre_cfg


__all__ = ["cfg_norm", "cfg_zero_star", "epsilon_scaling", "fresca", "mahiro", "optimized_scale", "renorm_cfg",
           "rescale_cfg", "scale_frequencies", "tangential_damping", "tcfg"]
