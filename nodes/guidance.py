"""Guidance patches: MODEL clones whose sampler hooks change how the predictions for the prompts
become the step's x0 (ComfyUI's advanced/guidance and advanced/model nodes, PAG, SAG, Perp-Neg,
FreSca, Mahiro, and LatentApplyOperationCFG).

The formulas live in diffusion.guidance and diffusion.attention_guidance; each node registers one
as a cfg, pre-CFG or post-CFG function, exactly where ComfyUI's node does, so chains of these
nodes compose in ComfyUI's order.
"""
from __future__ import annotations

from diffusion import guidance
from diffusion import ksampler as ks
from diffusion.attention_guidance import pag_post_cfg, sag_patches
from diffusion.overrides import comfy_function
from graph.contract import Float, Int, Node, Output, Socket

from .guiders import perp_neg
from .latent_math import LATENT_MODULE
from .latent_operations import OPERATIONS

GUIDANCE = "advanced/guidance"
ADVANCED_MODEL = "advanced/model"
MODEL = (Output("MODEL"),)
PATCHED_MODEL = (Output("MODEL", name="patched_model"),)


def _with_post_cfg(model, function, disable_cfg1_optimization=False):
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(function, disable_cfg1_optimization)
    return (patched,)


def _with_pre_cfg(model, function):
    patched = model.clone()
    patched.set_model_sampler_pre_cfg_function(function)
    return (patched,)


def _with_cfg(model, function):
    patched = model.clone()
    patched.set_model_sampler_cfg_function(function)
    return (patched,)


class PerturbedAttentionGuidance(Node):
    """Perturbed-Attention Guidance: steers away from a prediction made with the middle block's
    self-attention reduced to the identity (sharper structure); costs one more UNet pass per step."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_pag"
    category = "model_patches/unet"
    display_name = None
    inputs = (Socket("model", "MODEL"), Float("scale", 3.0, min=0.0, max=100.0, step=0.01, round=0.01))
    outputs = MODEL

    def run(self, ctx, model, scale):
        return _with_post_cfg(model, pag_post_cfg(scale))


class SelfAttentionGuidance(Node):
    """Self-Attention Guidance: steers away from a prediction of the negative prompt's x0 blurred
    where the middle block's self-attention concentrates; costs one more UNet pass per step."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_sag"
    category = "_for_testing"
    display_name = "Self-Attention Guidance"
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"), Float("scale", 0.5, min=-2.0, max=5.0, step=0.01),
              Float("blur_sigma", 2.0, min=0.0, max=10.0, step=0.1))
    outputs = MODEL

    def run(self, ctx, model, scale, blur_sigma):
        record, post_cfg = sag_patches(scale, blur_sigma)
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
        # diffusers' mid_block.attentions[0].transformer_blocks[0].attn1
        patched.set_model_attn1_replace(record, "middle", 0, 0)
        return (patched,)


class EpsilonScaling(Node):
    """Epsilon Scaling (Ning et al. 2023): the guided noise prediction divided by scaling_factor
    at every step, against the exposure bias of sampling."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_eps"
    category = "model_patches/unet"
    display_name = None
    inputs = (Socket("model", "MODEL"),
              Float("scaling_factor", 1.005, min=0.5, max=1.5, step=0.001, display="number"))
    outputs = MODEL

    def run(self, ctx, model, scaling_factor):
        return _with_post_cfg(model, guidance.epsilon_scaling(scaling_factor))


EpsilonScaling.__name__ = EpsilonScaling.__qualname__ = "Epsilon Scaling"  # ComfyUI's node id


class RescaleCFG(Node):
    """RescaleCFG (Lin et al. 2024): CFG done on v-predictions with the result's spread rescaled
    to the positive prediction's, mixed by multiplier (for v-prediction and zero-SNR models)."""

    comfy_function = "patch"
    comfy_module = "comfy_extras.nodes_model_advanced"
    category = ADVANCED_MODEL
    inputs = (Socket("model", "MODEL"), Float("multiplier", 0.7, min=0.0, max=1.0, step=0.01))
    outputs = MODEL

    def run(self, ctx, model, multiplier):
        return _with_cfg(model, guidance.rescale_cfg(multiplier))


def _in_channels(model) -> int:
    unet = model.model.diffusion_model
    channels = getattr(unet, "in_channels", None)
    return channels if channels is not None else unet.config.in_channels


class RenormCFG(Node):
    """Lumina 2's guidance: CFG whose result's norm is capped at renorm_cfg times the positive
    prediction's, used while the step's sigma is below cfg_trunc (the positive alone above)."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_lumina2"
    category = ADVANCED_MODEL
    display_name = None
    inputs = (Socket("model", "MODEL"), Float("cfg_trunc", 100, min=0.0, max=100.0, step=0.01),
              Float("renorm_cfg", 1.0, min=0.0, max=100.0, step=0.01))
    outputs = MODEL

    def run(self, ctx, model, cfg_trunc, renorm_cfg):
        return _with_cfg(model, guidance.renorm_cfg(_in_channels(model), cfg_trunc, renorm_cfg))


class CFGNorm(Node):
    """The guided prediction limited per pixel to the positive prediction's norm, times strength."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_cfg"
    category = GUIDANCE
    display_name = None
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"), Float("strength", 1.0, min=0.0, max=100.0, step=0.01))
    outputs = PATCHED_MODEL

    def run(self, ctx, model, strength):
        return _with_post_cfg(model, guidance.cfg_norm(strength))


class CFGZeroStar(Node):
    """CFG-Zero* (Fan et al. 2025): the negative prediction rescaled by the least-squares factor
    that best matches it to the positive one before guidance."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_cfg"
    category = GUIDANCE
    display_name = None
    inputs = (Socket("model", "MODEL"),)
    outputs = PATCHED_MODEL

    def run(self, ctx, model):
        return _with_post_cfg(model, guidance.cfg_zero_star())


class TCFG(Node):
    """Tangential Damping CFG (Kwon et al. 2025, arXiv 2503.18137): the negative prediction keeps
    only its component along the positive one, so guidance pushes less sideways."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_tcfg"
    category = GUIDANCE
    display_name = "Tangential Damping CFG"
    inputs = (Socket("model", "MODEL"),)
    outputs = PATCHED_MODEL

    def run(self, ctx, model):
        return _with_pre_cfg(model, guidance.tcfg())


class PerpNeg(Node):
    """Perp-Neg as a model patch (superseded by PerpNegGuider): the negative prompt only removes
    what is perpendicular to the positive direction, both measured from empty_conditioning."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_perpneg"
    category = "_for_testing"
    display_name = "Perp-Neg (DEPRECATED by PerpNegGuider)"
    EXPERIMENTAL = True
    DEPRECATED = True
    inputs = (Socket("model", "MODEL"), Socket("empty_conditioning", "CONDITIONING"),
              Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01))
    outputs = MODEL

    def run(self, ctx, model, empty_conditioning, neg_scale):
        empty = ks.convert_cond(empty_conditioning)

        def cfg(args):
            inner, x, sigma = args["model"], args["input"], args["sigma"]
            encoded = ks.encode_model_conds(inner.extra_conds, empty, x, x.device, "negative")
            calc_cond_batch = comfy_function("comfy.samplers", "calc_cond_batch", ks.calc_cond_batch)
            (pred_empty,) = calc_cond_batch(inner, [encoded], x, sigma, args["model_options"])
            return x - perp_neg(x, args["cond_denoised"], args["uncond_denoised"], pred_empty, neg_scale,
                                args["cond_scale"])

        return _with_cfg(model, cfg)


class Mahiro(Node):
    """Guidance weighted towards the positive prediction's own direction, by how similar the
    negative prediction is to the guided one."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_mahiro"
    category = "_for_testing"
    display_name = "Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)"
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"),)
    outputs = PATCHED_MODEL

    def run(self, ctx, model):
        return _with_post_cfg(model, guidance.mahiro())


class FreSca(Node):
    """FreSca: the guidance direction's low and high spatial frequencies scaled separately."""

    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_fresca"
    category = "_for_testing"
    display_name = "FreSca"
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"),
              Float("scale_low", 1.0, min=0, max=10, step=0.01,
                    tooltip="Scaling factor for low-frequency components"),
              Float("scale_high", 1.25, min=0, max=10, step=0.01,
                    tooltip="Scaling factor for high-frequency components"),
              Int("freq_cutoff", 20, min=1, max=10000, step=1,
                  tooltip="Number of frequency indices around center to consider as low-frequency"))
    outputs = MODEL

    def run(self, ctx, model, scale_low, scale_high, freq_cutoff):
        return _with_pre_cfg(model, guidance.fresca(scale_low, scale_high, freq_cutoff))


class LatentApplyOperationCFG(Node):
    """A latent operation applied to the guidance direction (cond - uncond) at every step, or to
    the positive prediction when there is no negative."""

    comfy_function = "execute"
    comfy_module = LATENT_MODULE
    category = OPERATIONS
    display_name = None
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"), Socket("operation", "LATENT_OPERATION"))
    outputs = MODEL

    def run(self, ctx, model, operation):
        def pre_cfg(args):
            conds_out = args["conds_out"]
            if len(conds_out) == 2:
                conds_out[0] = operation(latent=(conds_out[0] - conds_out[1])) + conds_out[1]
            else:
                conds_out[0] = operation(latent=conds_out[0])
            return conds_out

        return _with_pre_cfg(model, pre_cfg)


NODES = [PerturbedAttentionGuidance, SelfAttentionGuidance, EpsilonScaling, RescaleCFG, RenormCFG, CFGNorm,
         CFGZeroStar, TCFG, PerpNeg, Mahiro, FreSca, LatentApplyOperationCFG]
