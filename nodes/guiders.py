"""Guiders of ComfyUI's custom sampling (the GUIDER type that SamplerCustomAdvanced runs) and the
APG model patch: how the network's predictions for several prompts become the one x0 estimate a
sampler steps with.

Each guider is a `diffusion.ksampler.CFGGuider` (MODEL + prompts + scales) whose predict_noise
combines the batched predictions; class names follow ComfyUI's (Guider_Basic, Guider_DualCFG,
Guider_PerpNeg) since plugins subclass them.
"""
from __future__ import annotations

import math

import torch

from diffusion import ksampler as ks
from diffusion.overrides import comfy_function
from graph.contract import Combo, Float, Node, Output, Socket

from .conditioning_tools import set_values
from .sampling import Cfg

GUIDERS = "sampling/custom_sampling/guiders"
CUSTOM_SAMPLER = "comfy_extras.nodes_custom_sampler"
GUIDER = (Output("GUIDER"),)


def _samplers_function(name: str, ours):
    """comfy.samplers' function as a plugin may have replaced it."""
    return comfy_function("comfy.samplers", name, ours)


class Guider_Basic(ks.CFGGuider):
    """One prompt, no guidance: D = D(positive)."""

    def set_conds(self, positive):
        self.inner_set_conds({"positive": positive})


class Guider_DualCFG(ks.CFGGuider):
    """Two prompts and a negative. "regular": D = CFG(cond2 vs negative, cfg2) + cfg1 (cond1 -
    cond2); "nested": D = neg + cfg2 (CFG(cond1 vs cond2, cfg1) - neg). cond2 is encoded as a
    negative prompt (SDXL's refiner-style aesthetic score and the like)."""

    def set_cfg(self, cfg1, cfg2, nested=False):
        self.cfg1, self.cfg2, self.nested = cfg1, cfg2, nested

    def set_conds(self, positive, middle, negative):
        middle = set_values(middle, {"prompt_type": "negative"}, "cond2")
        self.inner_set_conds({"positive": positive, "middle": middle, "negative": negative})

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options if model_options is not None else {}
        negative, middle, positive = (self.conds.get(k) for k in ("negative", "middle", "positive"))
        calc_cond_batch = _samplers_function("calc_cond_batch", ks.calc_cond_batch)
        cfg_function = _samplers_function("cfg_function", ks.cfg_function)
        if self.nested:
            out = calc_cond_batch(self.inner_model, [negative, middle, positive], x, timestep, model_options)
            pred_text = cfg_function(self.inner_model, out[2], out[1], self.cfg1, x, timestep,
                                     model_options=model_options, cond=positive, uncond=middle)
            return out[0] + self.cfg2 * (pred_text - out[0])
        if not model_options.get("disable_cfg1_optimization", False) and math.isclose(self.cfg2, 1.0):
            negative = None  # unused at cfg2 = 1; and middle too when cfg1 = 1 (as ComfyUI skips them)
            if math.isclose(self.cfg1, 1.0):
                middle = None
        out = calc_cond_batch(self.inner_model, [negative, middle, positive], x, timestep, model_options)
        return (cfg_function(self.inner_model, out[1], out[0], self.cfg2, x, timestep, model_options=model_options,
                             cond=middle, uncond=negative) + (out[2] - out[1]) * self.cfg1)


def perp_neg(x, pred_pos, pred_neg, pred_empty, neg_scale: float, cond_scale: float) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023, "Re-imagine the negative prompt algorithm"): guide along the
    positive direction minus only the part of the negative direction perpendicular to it,
    D = D_empty + cfg (pos - neg_scale (neg - proj_pos neg)), pos / neg taken from D_empty. The
    projection is over the whole batch at once, as in ComfyUI."""
    pos = pred_pos - pred_empty
    neg = pred_neg - pred_empty
    perpendicular = neg - (torch.mul(neg, pos).sum() / torch.norm(pos) ** 2) * pos
    return pred_empty + cond_scale * (pos - perpendicular * neg_scale)


class Guider_PerpNeg(ks.CFGGuider):
    """Perp-Neg guidance with an empty prompt as the reference; positive, negative and empty are
    predicted in one batch."""

    def set_conds(self, positive, negative, empty_negative_prompt):
        empty = set_values(empty_negative_prompt, {"prompt_type": "negative"}, "empty_conditioning")
        self.inner_set_conds({"positive": positive, "empty_negative_prompt": empty, "negative": negative})

    def set_cfg(self, cfg, neg_scale):
        self.cfg, self.neg_scale = cfg, neg_scale

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options if model_options is not None else {}
        positive, negative, empty = (self.conds.get(k) for k in ("positive", "negative", "empty_negative_prompt"))
        if not model_options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            negative = None
            if math.isclose(self.cfg, 1.0):
                empty = None
        conds = [positive, negative, empty]
        out = _samplers_function("calc_cond_batch", ks.calc_cond_batch)(self.inner_model, conds, x, timestep,
                                                                         model_options)
        # sampling_function is bypassed (one batch for three prompts), so its hooks run here
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        pred_pos, pred_neg, pred_empty = out
        result = perp_neg(x, pred_pos, pred_neg, pred_empty, self.neg_scale, self.cfg)
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn({"denoised": result, "cond": positive, "uncond": negative, "cond_scale": self.cfg,
                         "model": self.inner_model, "uncond_denoised": pred_neg, "cond_denoised": pred_pos,
                         "sigma": timestep, "model_options": model_options, "input": x, "empty_cond": empty,
                         "empty_cond_denoised": pred_empty})
        return result


def apg_pre_cfg(eta: float, norm_threshold: float, momentum: float):
    """Adaptive Projected Guidance (Sadat et al. 2024, "Eliminating oversaturation and artifacts of
    high guidance scales in diffusion models") as a pre-CFG hook: the guidance cond - uncond is
    averaged with momentum (reset when sigma rises, i.e. a new sampling run), its norm per item
    capped at norm_threshold, and its part parallel to cond scaled by eta. The cond prediction is
    rewritten so that the CFG step after it yields cond + cfg * (the modified guidance)."""
    state = {"running": None, "sigma": None}

    def pre_cfg(args):
        conds_out = args["conds_out"]
        if len(conds_out) == 1:
            return conds_out
        cond, uncond = conds_out[0], conds_out[1]
        sigma, cond_scale = args["sigma"][0], args["cond_scale"]
        if state["sigma"] is not None and sigma > state["sigma"]:
            state["running"] = None
        state["sigma"] = sigma
        guidance = cond - uncond
        if momentum != 0:
            state["running"] = guidance if state["running"] is None else momentum * state["running"] + guidance
            guidance = state["running"]
        if norm_threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
        direction = torch.nn.functional.normalize(cond, dim=[-1, -2, -3])
        parallel = (guidance * direction).sum(dim=[-1, -2, -3], keepdim=True) * direction
        modified = (guidance - parallel) + eta * parallel
        return [uncond + modified + (cond - uncond) / cond_scale, uncond] + list(conds_out[2:])

    return pre_cfg


# -- nodes ----------------------------------------------------------------------------------------


class BasicGuider(Node):
    """Guides with one prompt only (no negative, no CFG)."""

    comfy_function = "get_guider"
    category = GUIDERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Socket("conditioning", "CONDITIONING"))
    outputs = GUIDER

    def run(self, ctx, model, conditioning):
        guider = Guider_Basic(model)
        guider.set_conds(conditioning)
        return (guider,)


class CFGGuider(Node):
    """Classifier-free guidance between a positive and a negative prompt."""

    comfy_function = "get_guider"
    category = GUIDERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Cfg())
    outputs = GUIDER

    def run(self, ctx, model, positive, negative, cfg):
        guider = ks.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


class DualCFGGuider(Node):
    """Two prompts with their own scales against one negative ("regular": both added; "nested":
    cond1 guided against cond2, the result against the negative)."""

    comfy_function = "get_guider"
    category = GUIDERS
    comfy_module = CUSTOM_SAMPLER
    inputs = (Socket("model", "MODEL"), Socket("cond1", "CONDITIONING"), Socket("cond2", "CONDITIONING"),
              Socket("negative", "CONDITIONING"), Float("cfg_conds", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
              Float("cfg_cond2_negative", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
              Combo("style", ["regular", "nested"]))
    outputs = GUIDER

    def run(self, ctx, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        guider = Guider_DualCFG(model)
        guider.set_conds(cond1, cond2, negative)
        guider.set_cfg(cfg_conds, cfg_cond2_negative, nested=style == "nested")
        return (guider,)


class PerpNegGuider(Node):
    """Perp-Neg: the negative prompt only removes what is perpendicular to the positive one,
    measured from an empty prompt."""

    display_name = None
    comfy_function = "execute"
    category = "_for_testing"
    comfy_module = "comfy_extras.nodes_perpneg"
    inputs = (Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("empty_conditioning", "CONDITIONING"), Cfg(),
              Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01))
    outputs = GUIDER

    def run(self, ctx, model, positive, negative, empty_conditioning, cfg, neg_scale):
        guider = Guider_PerpNeg(model)
        guider.set_conds(positive, negative, empty_conditioning)
        guider.set_cfg(cfg, neg_scale)
        return (guider,)


class APG(Node):
    """Adaptive Projected Guidance: CFG whose guidance is norm-capped, optionally averaged with
    momentum, and whose component along the conditional prediction is scaled by eta."""

    display_name = "Adaptive Projected Guidance"
    comfy_function = "execute"
    category = "sampling/custom_sampling"
    comfy_module = "comfy_extras.nodes_apg"
    inputs = (Socket("model", "MODEL"),
              Float("eta", 1.0, min=-10.0, max=10.0, step=0.01,
                    tooltip="Controls the scale of the parallel guidance vector. Default CFG behavior at a setting "
                            "of 1."),
              Float("norm_threshold", 5.0, min=0.0, max=50.0, step=0.1,
                    tooltip="Normalize guidance vector to this value, normalization disable at a setting of 0."),
              Float("momentum", 0.0, min=-5.0, max=1.0, step=0.01,
                    tooltip="Controls a running average of guidance during diffusion, disabled at a setting of 0."))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, eta, norm_threshold, momentum):
        patched = model.clone()
        patched.set_model_sampler_pre_cfg_function(apg_pre_cfg(eta, norm_threshold, momentum))
        return (patched,)


NODES = [BasicGuider, CFGGuider, DualCFGGuider, PerpNegGuider, APG]
