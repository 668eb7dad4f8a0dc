"""Inputs shared by tests/test_loader_parity.py and tests/data/loaders/make_reference.py, which ran
ComfyUI (a125cd84, its own venv) on exactly these weights and tensors to write the reference
values. Everything is drawn from seeded generators; the weights are tiny but in the real key
layouts (file formats as ComfyUI reads them).
"""
from __future__ import annotations

import re

import torch
from torch import nn


def rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _random_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    from tests.models_tiny import randomize_

    return {k: v.contiguous() for k, v in randomize_(module, seed).state_dict().items()}


# ---------------------------------------------------------------------------------------------
# CLIP vision: a 3-layer, 64-wide tower on 28-pixel images (2x2 patches of 14)

CLIP_VISION = dict(width=64, layers=3, image_size=28, patch=14, projection=32)


def clip_vision_state_dict() -> dict[str, torch.Tensor]:
    from tests.models_tiny import tiny_clip_vision

    return {k: v.contiguous() for k, v in tiny_clip_vision(**CLIP_VISION, seed=11).state_dict().items()}


def clip_vision_comfy_config() -> dict:
    """The same tower as one of ComfyUI's clip_vision_config_*.json files."""
    w = CLIP_VISION["width"]
    return {"hidden_act": "gelu", "hidden_size": w, "image_size": CLIP_VISION["image_size"],
            "intermediate_size": 4 * w, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
            "num_attention_heads": max(1, w // 64), "num_channels": 3, "num_hidden_layers": CLIP_VISION["layers"],
            "patch_size": CLIP_VISION["patch"], "projection_dim": CLIP_VISION["projection"]}


CLIP_VISION_IMAGES = {
    "wide": rand(21, 2, 40, 56, 3),     # resized by the shorter side, centre-cropped (or squashed)
    "exact": rand(22, 1, 28, 28, 3),    # already the model's size: only quantised and normalised
    "tall_rgba": rand(23, 1, 61, 33, 4),
}


# ---------------------------------------------------------------------------------------------
# T2I style adapter reading the tower above: 64 wide, 2 blocks, 4 tokens, SD1's 768-wide context

STYLE = dict(width=64, context=768, layers=2, tokens=4)


def style_model_state_dict() -> dict[str, torch.Tensor]:
    from diffusion.style_model import StyleAdapter

    adapter = StyleAdapter(STYLE["width"], STYLE["context"], 8, STYLE["layers"], STYLE["tokens"])
    sd = _random_state(adapter, 31)
    sd["style_embedding"] = randn(32, 1, STYLE["tokens"], STYLE["width"]) * STYLE["width"] ** -0.5
    sd["proj"] = randn(33, STYLE["width"], STYLE["context"]) * STYLE["width"] ** -0.5
    return sd


STYLE_PROMPT = randn(34, 1, 77, 768)


# ---------------------------------------------------------------------------------------------
# GLIGEN for the tiny SD1.5 checkpoint's UNet (tests.models_tiny "sd15")

_TRANSFORMER = re.compile(r"^model\.diffusion_model\.((?:input_blocks|output_blocks)\.\d+|middle_block)\.1\."
                          r"transformer_blocks\.0\.attn1\.to_q\.weight$")


def sd15_unet_state_dict() -> dict[str, torch.Tensor]:
    from tests.models_tiny import tiny_checkpoint_state_dict

    return {k: v for k, v in tiny_checkpoint_state_dict("sd15").items() if k.startswith("model.diffusion_model.")}


def gligen_state_dict(unet_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fuser per transformer of the UNet (8 heads, 768-wide phrase embeddings) and a position net;
    the gates are open (tanh(alpha) far from 0), as in a trained file."""
    from diffusion.gligen import GatedSelfAttentionDense, PositionNet

    sd = {}
    for i, key in enumerate(sorted(k for k in unet_sd if _TRANSFORMER.match(k))):
        block = _TRANSFORMER.match(key).group(1)
        query = unet_sd[key].shape[0]
        fuser = _random_state(GatedSelfAttentionDense(query, 768, 8, query // 8), 40 + i)
        fuser["alpha_attn"] = torch.tensor(0.6 + 0.1 * i)
        fuser["alpha_dense"] = torch.tensor(-0.4 - 0.1 * i)
        sd.update({f"{block}.1.transformer_blocks.0.fuser.{k}": v for k, v in fuser.items()})
    sd.update({"position_net." + k: v for k, v in _random_state(PositionNet(768, 768), 60).items()})
    return sd


# (pooled text embedding, height, width, y, x) in latent cells, as GLIGENTextBoxApply stores them
GLIGEN_BOXES = [(randn(61, 1, 768), 4, 6, 1, 2), (randn(62, 1, 768), 3, 3, 5, 0)]
UNET_X = randn(70, 2, 4, 8, 8)
UNET_T = torch.tensor([999.0, 420.0])
UNET_CONTEXT = randn(71, 2, 77, 768)


# ---------------------------------------------------------------------------------------------
# an A1111 hypernetwork: relu, layer norms, structure 1-2-1, for the widths the UNet's attention sees


def hypernetwork_object(unet_sd: dict[str, torch.Tensor]) -> dict:
    widths = sorted({unet_sd[k].shape[1] for k in unet_sd if k.endswith("attn2.to_k.weight")}
                    | {unet_sd[k].shape[1] for k in unet_sd if k.endswith("attn1.to_k.weight")})
    obj: dict = {"activation_func": "relu", "is_layer_norm": True, "use_dropout": False, "activate_output": False,
                 "last_layer_dropout": False, "layer_structure": [1, 2, 1], "name": "tiny"}
    for n, width in enumerate(widths):
        pair = []
        for which in range(2):
            layers = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.LayerNorm(2 * width),
                                   nn.Linear(2 * width, width), nn.LayerNorm(width))
            sd = _random_state(layers, 80 + 2 * n + which)
            pair.append({"linear." + k: v for k, v in sd.items()})
        obj[width] = pair
    return obj


HYPERNETWORK_STRENGTH = 0.7


# ---------------------------------------------------------------------------------------------
# unCLIP image embeddings (ViT-H width 1024; SDXL's pooled 1280)

UNCLIP_SEED = 1234
UNCLIP_CASES = {
    # name: (timestep_dim, [(embeds, strength, noise_augmentation), ...])
    "one": (1024, [(randn(90, 1, 1024), 0.8, 0.3)]),
    "clean": (1024, [(randn(91, 1, 1024), 1.0, 0.0)]),
    "batch_of_two": (1024, [(randn(92, 2, 1024), 1.0, 0.1)]),
    "two_entries": (1024, [(randn(93, 1, 1024), 0.5, 0.0), (randn(94, 1, 1024), 1.5, 0.9)]),
    "sdxl_one": (1280, [(randn(95, 1, 1280), 0.75, 0.2)]),
}


# ---------------------------------------------------------------------------------------------
# LoRA extraction and union ControlNets

LORA_DIFFS = {"linear": randn(100, 64, 48), "conv3x3": randn(101, 32, 16, 3, 3), "conv1x1": randn(102, 32, 16, 1, 1),
              "low_rank": randn(103, 40, 3) @ randn(104, 3, 24)}
LORA_RANK = 8


def union_controlnet_config():
    """A one-level SDXL-style union ControlNet: 320 channels (the union block's fixed width), 64-channel
    heads, a small adm vector, 8 control types."""
    from diffusion.controlnet import ControlNetConfig
    from diffusion.unet import UNetConfig

    unet = UNetConfig(model_channels=320, channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,),
                      transformer_depth_middle=1, context_dim=48, num_heads=-1, num_head_channels=64,
                      use_linear_in_transformer=True, adm_in_channels=40)
    return ControlNetConfig(unet, hint_channels=3, union_types=8)


def union_controlnet_state_dict() -> dict[str, torch.Tensor]:
    from diffusion.controlnet import ControlNetModel

    return _random_state(ControlNetModel(union_controlnet_config()), 110)


UNION_X = randn(111, 2, 4, 4, 4)
UNION_HINT = rand(112, 1, 3, 32, 32)
UNION_T = torch.tensor([800.0, 150.0])
UNION_CONTEXT = randn(113, 2, 5, 48)
UNION_Y = randn(114, 2, 40)
UNION_TYPES = {"auto": [], "depth": [1], "repaint": [7]}


# ---------------------------------------------------------------------------------------------
# image conditioning nodes

IP2P_PIXELS = rand(120, 1, 70, 68, 3)       # cropped to 64 x 64 before encoding
IP2P_NOISE = randn(121, 3, 4, 8, 8)
IP2P_LATENT = randn(122, 2, 4, 6, 5)        # resized to the noise and repeated to its batch
UPSCALE_IMAGES = rand(123, 2, 24, 20, 3)
UPSCALE_CASES = {"x4": (4.0, 0.3), "x2_5": (2.5, 0.0), "x1_3": (1.3, 0.05)}
