"""A plugin-style pack of MODEL patch nodes, written against ComfyUI's ModelPatcher API only.

The same file is loaded by LatentGraph (as a custom node pack) and by ComfyUI itself (by
tests/data/comfy_hooks/make_reference.py), so the sampled results of both can be compared: each
node clones the MODEL and sets one hook, with formulas that use the arguments ComfyUI hands the
hook (noise predictions for cfg functions, sigma and input for post-cfg ones, the block being run
for attention patches, cond_or_uncond order for UNet wrappers).
"""
import torch


def _model_node(name, hook, extra=None):
    class Node:
        CATEGORY = "testing/hooks"
        FUNCTION = "patch"
        RETURN_TYPES = ("MODEL",)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), **(extra or {})}}

        def patch(self, model, **kwargs):
            m = model.clone()
            hook(m, **kwargs)
            return (m,)

    Node.__name__ = name
    return Node


def cfg_hook(m, scale=0.5):
    def cfg(args):
        # cond / uncond are noise predictions (x - denoised): a half-strength guidance, damped
        cond, uncond = args["cond"], args["uncond"]
        return (uncond + (cond - uncond) * (args["cond_scale"] * scale)) * 0.9
    m.set_model_sampler_cfg_function(cfg)


def post_cfg_hook(m, mix=0.2):
    def post(args):
        sigma = args["sigma"].view(-1, 1, 1, 1)
        return args["denoised"] * (1 - mix) + args["cond_denoised"] * mix - 0.01 * sigma * args["input"]
    m.set_model_sampler_post_cfg_function(post)


def attn2_hook(m, factor=1.1):
    def patch(n, context, value, extra_options):
        if extra_options["block"][0] != "input":  # only the encoder's cross-attention
            return n, context, value
        return n * factor, context * (2.0 - factor), value + 0.05
    m.set_model_attn2_patch(patch)


def unet_wrapper_hook(m, gain=1.05):
    def wrapper(apply_model, args):
        x, t, c = args["input"], args["timestep"], args["c"]
        out = apply_model(x * gain, t, **c)
        # an offset per chunk by its prompt: 0 for cond, 0.01 for uncond, in the order they ran
        offsets = torch.tensor(args["cond_or_uncond"], dtype=out.dtype, device=out.device) * 0.01
        per_chunk = out.shape[0] // len(args["cond_or_uncond"])
        return out + offsets.repeat_interleave(per_chunk).view(-1, 1, 1, 1)
    m.set_model_unet_function_wrapper(wrapper)


def attn1_replace_hook(m):
    from comfy.ldm.modules.attention import optimized_attention

    def replace(q, k, v, extra_options):
        # self-attention with keys sharpened: plain attention of (q, 1.5 k, v)
        return optimized_attention(q, k * 1.5, v, extra_options["n_heads"])
    m.set_model_attn1_replace(replace, "output", 3)


def output_block_hook(m):
    def patch(h, hsp, transformer_options):
        return h, hsp * 0.9
    m.set_model_output_block_patch(patch)


HOOKS = {
    "HookCfgFunction": cfg_hook,
    "HookPostCfgFunction": post_cfg_hook,
    "HookAttn2Patch": attn2_hook,
    "HookUnetWrapper": unet_wrapper_hook,
    "HookAttn1Replace": attn1_replace_hook,
    "HookOutputBlockPatch": output_block_hook,
}

NODE_CLASS_MAPPINGS = {name: _model_node(name, hook) for name, hook in HOOKS.items()}
