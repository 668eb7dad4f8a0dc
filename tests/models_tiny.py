"""Tiny random-weight models for tests: seconds to build and run on a CPU, real key layouts.

API (keep it small; other test modules import it):
    TINY_UNET_STYLES                      names accepted below: "sd15", "sd21", "sdxl"
    tiny_unet_config(style)    -> UNetConfig   same family traits as the real model, widths 32-128
    tiny_unet(style, seed=0)   -> UNetModel    float32, eval mode, every weight random (norms too)
    tiny_unet_state_dict(style, seed=0, prefix=UNET_PREFIX) -> {checkpoint key: tensor}
    write_tiny_checkpoint(path, style, seed=0, extra=None) -> state dict written as .safetensors
        (`extra`: other components' original-layout tensors, e.g. "first_stage_model.*", merged in)
    diffusers_unet_config(config) -> dict  kwargs for diffusers.UNet2DConditionModel of the same
        architecture (SDXL-style: "text_time" add-embedding, see SDXL_TIME_EMBED_DIM)

The head layouts follow what `UNetConfig.from_state_dict` assumes by default (8 heads for conv
projections, 64-channel heads for linear ones), so the tiny configs are recoverable from weights.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from diffusion.unet import UNET_PREFIX, UNetConfig, UNetModel

TINY_UNET_STYLES = ("sd15", "sd21", "sdxl")
# SDXL-style adm vector = text_embeds (SDXL_TEXT_EMBED_DIM) + SDXL_NUM_TIME_IDS sinusoids of this width.
SDXL_TIME_EMBED_DIM = 8
SDXL_NUM_TIME_IDS = 3
SDXL_TEXT_EMBED_DIM = 16


def tiny_unet_config(style: str) -> UNetConfig:
    if style == "sd15":  # conv proj_in/out, 8 heads, attention on all but the deepest level
        return UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                          transformer_depth=(1, 1, 0), transformer_depth_middle=1, context_dim=24, num_heads=8)
    if style == "sd21":  # linear proj, 64-channel heads
        return UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                          transformer_depth_middle=1, context_dim=32, num_heads=-1, num_head_channels=64,
                          use_linear_in_transformer=True)
    if style == "sdxl":  # no attention on level 0, deeper transformers below, adm vector
        return UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, transformer_depth=(0, 1, 2),
                          transformer_depth_middle=2, context_dim=48, num_heads=-1, num_head_channels=64,
                          use_linear_in_transformer=True,
                          adm_in_channels=SDXL_TEXT_EMBED_DIM + SDXL_NUM_TIME_IDS * SDXL_TIME_EMBED_DIM)
    raise ValueError(f"unknown tiny UNet style {style!r}; one of {TINY_UNET_STYLES}")


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fills every parameter from a seeded generator, in key order.

    Norm scales are 1 + noise and biases noise, not 1/0, so a weight loaded into the wrong norm
    or bias changes the output; matrices get a 1/sqrt(fan_in) scale to keep activations O(1).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.ndim == 0:  # scalars such as CLIP's logit_scale: not used by the text path
            continue
        if p.ndim == 1:
            is_norm_scale = name.endswith("weight")
            value = 1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise
        else:
            value = noise / math.sqrt(p[0].numel())
        p.copy_(value.to(p.dtype))
    return module


def tiny_unet(style: str, seed: int = 0) -> UNetModel:
    return randomize_(UNetModel(tiny_unet_config(style)), seed).eval()


def tiny_unet_state_dict(style: str, seed: int = 0, prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tiny_unet(style, seed).state_dict().items()}


def write_tiny_checkpoint(path: str | Path, style: str, seed: int = 0,
                          extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    sd = tiny_unet_state_dict(style, seed)
    sd.update(extra or {})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return sd


def diffusers_unet_config(config: UNetConfig) -> dict:
    """UNet2DConditionModel kwargs for `config` (uniform num_res_blocks; middle depth = deepest level's)."""
    levels = len(config.channel_mult)
    nrb = config.num_res_blocks[0]
    if any(n != nrb for n in config.num_res_blocks):
        raise ValueError("diffusers needs the same num_res_blocks on every level")
    level_depth = [config.transformer_depth[level * nrb] for level in range(levels)]
    # diffusers reads the middle depth off the deepest level's entry, unused when that level has no attention.
    layers = [d or config.transformer_depth_middle for d in level_depth]
    if config.transformer_depth_middle != layers[-1]:
        raise ValueError("diffusers ties the middle transformer depth to the deepest level's")
    widths = [m * config.model_channels for m in config.channel_mult]
    # diffusers' `attention_head_dim` holds the number of heads for these models (a historic misnomer).
    heads = [config.attention_shape(w)[0] for w in widths]
    kwargs = dict(
        sample_size=32, in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in level_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(level_depth)],
        block_out_channels=widths, layers_per_block=nrb, cross_attention_dim=config.context_dim,
        attention_head_dim=heads, transformer_layers_per_block=layers,
        use_linear_projection=config.use_linear_in_transformer,
    )
    if config.adm_in_channels:
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                      projection_class_embeddings_input_dim=config.adm_in_channels)
    return kwargs


# ---------------------------------------------------------------------------------------------
# Whole single-file checkpoints: tiny widths, but the real context widths, adm sizes and key
# layouts, so family detection, loading and the core nodes see what a real file gives them.

# family -> (UNet in_channels, context_dim, adm_in_channels, text encoder class name, text widths)
CHECKPOINT_FAMILIES = {
    "sd15": (4, 768, None, "SD1TextEncoder", {"l": 768}),
    "sd15_inpaint": (9, 768, None, "SD1TextEncoder", {"l": 768}),
    "sd21_v": (4, 1024, None, "SD2TextEncoder", {"h": 1024}),
    "sdxl": (4, 2048, 2816, "SDXLTextEncoder", {"l": 768, "g": 1280}),
    "sdxl_refiner": (4, 1280, 2560, "SDXLRefinerTextEncoder", {"g": 1280}),
    "sd15_ip2p": (8, 768, None, "SD1TextEncoder", {"l": 768}),
    "sd21_unclip_h": (4, 1024, 2048, "SD2TextEncoder", {"h": 1024}),
}
# the CLIP vision tower an unCLIP-H checkpoint carries: OpenCLIP layout under this prefix, its
# projection as wide as the image embedding the UNet's adm vector starts with (1024)
UNCLIP_VISION_PREFIX = "embedder.model.visual."


def tiny_checkpoint_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every component of a `family` checkpoint in the original layout, random weights.

    The UNet has 32-64 channels and one attention level; the text towers one layer at the real
    width (their width is the UNet's context width); the VAE 32 channels over four levels (8x). An
    "sd21_v" file carries the `v_pred` marker key that ComfyUI's saver writes.
    """
    from diffusion import text_encoders
    from diffusion.vae import AutoencoderKL, VAEConfig

    in_channels, context_dim, adm, text_cls, widths = CHECKPOINT_FAMILIES[family]
    linear = not family.startswith("sd15")
    unet_config = UNetConfig(in_channels=in_channels, model_channels=64 if linear else 32, channel_mult=(1, 2),
                             num_res_blocks=1, transformer_depth=(0, 1) if adm else (1, 1),
                             transformer_depth_middle=1, context_dim=context_dim,
                             num_heads=8 if not linear else -1, num_head_channels=-1 if not linear else 64,
                             use_linear_in_transformer=linear, adm_in_channels=adm)
    unet = randomize_(UNetModel(unet_config), seed)
    # four levels, as every SD VAE has: 8 pixels per latent cell
    vae = randomize_(AutoencoderKL(VAEConfig(base_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1)), seed + 1)
    act = {"l": "quick_gelu"}
    text = getattr(text_encoders, text_cls)(
        {name: text_encoders.text_config(width, 1, act=act.get(name, "gelu")) for name, width in widths.items()})
    randomize_(text, seed + 2)
    sd = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    sd.update(text.state_dict_original())
    if family == "sd21_v":
        sd["v_pred"] = torch.tensor([])
    if family == "sd21_unclip_h":
        from diffusion.clip_vision import transformers_to_openclip

        tower = transformers_to_openclip(tiny_clip_vision(projection=adm // 2, seed=seed + 3).state_dict())
        sd.update({UNCLIP_VISION_PREFIX + k: v for k, v in tower.items()})
    return {k: v.contiguous() for k, v in sd.items()}


def tiny_clip_vision(width: int = 64, layers: int = 3, image_size: int = 28, patch: int = 14, projection: int = 32,
                     seed: int = 0):
    """A random CLIPVisionModelWithProjection: 64-channel heads (our rule for towers other than the
    released ones), gelu, `image_size` / `patch` squared patches plus the class token."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                              num_attention_heads=max(1, width // 64), image_size=image_size, patch_size=patch,
                              projection_dim=projection, hidden_act="gelu", layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config)
    randomize_(model, seed)
    with torch.no_grad():  # randomize_ skips 0-d tensors; the class embedding is 1-d, keep it O(1)
        model.vision_model.embeddings.class_embedding.mul_(10.0)
    return model.eval()


def write_tiny_full_checkpoint(path: str | Path, family: str, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    save_file(tiny_checkpoint_state_dict(family, seed), str(path))
    return Path(path)
