"""Attention weight multipliers (ComfyUI's _for_testing/attention_experiments): the q, k, v and
output projections of every self-attention (attn1) or cross-attention (attn2) layer of the UNet,
or of every CLIP text layer, scaled by constant factors.

The scaling is a weight patch (strength_model = the factor, no added delta), so it costs no copy
of the network until sampling or encoding and composes with LoRA and merges in patch order.
"""
from __future__ import annotations

from graph.contract import Float, Node, Output, Socket

ATTENTION_EXPERIMENTS = "_for_testing/attention_experiments"
MODULE = "comfy_extras.nodes_attention_multiply"


def scale_weights(patcher, factors: dict[str, float]) -> None:
    """Queue on `patcher` a multiplication of every weight and bias whose key ends with
    "<suffix>.weight" / "<suffix>.bias" by factors[suffix]."""
    for key in patcher.model_state_dict():
        for suffix, factor in factors.items():
            if key.endswith((f"{suffix}.weight", f"{suffix}.bias")):
                patcher.add_patches({key: (None,)}, 0.0, factor)


def Factor(name: str) -> Float:
    return Float(name, 1.0, min=0.0, max=10.0, step=0.01)


FACTORS = (Factor("q"), Factor("k"), Factor("v"), Factor("out"))


class _UNetAttentionMultiply(Node):
    comfy_function = "execute"
    comfy_module = MODULE
    category = ATTENTION_EXPERIMENTS
    display_name = None
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL"), *FACTORS)
    outputs = (Output("MODEL"),)
    attention = ""

    def run(self, ctx, model, q, k, v, out):
        a = self.attention
        patched = model.clone()
        scale_weights(patched, {f"{a}.to_q": q, f"{a}.to_k": k, f"{a}.to_v": v, f"{a}.to_out.0": out})
        return (patched,)


class UNetSelfAttentionMultiply(_UNetAttentionMultiply):
    """Scales the q, k, v and output projections of the UNet's self-attention layers."""

    comfy_function = "execute"
    comfy_module = MODULE
    attention = "attn1"


class UNetCrossAttentionMultiply(_UNetAttentionMultiply):
    """Scales the q, k, v and output projections of the UNet's cross-attention (text) layers."""

    comfy_function = "execute"
    comfy_module = MODULE
    attention = "attn2"


class CLIPAttentionMultiply(Node):
    """Scales the q, k, v and output projections of the text encoder's self-attention layers."""

    comfy_function = "execute"
    comfy_module = MODULE
    category = ATTENTION_EXPERIMENTS
    display_name = None
    EXPERIMENTAL = True
    inputs = (Socket("clip", "CLIP"), *FACTORS)
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip, q, k, v, out):
        patched = clip.clone()
        scale_weights(patched.patcher, {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v,
                                        "self_attn.out_proj": out})
        return (patched,)


NODES = [UNetSelfAttentionMultiply, UNetCrossAttentionMultiply, CLIPAttentionMultiply]
