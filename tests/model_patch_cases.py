"""Sampling runs with model-patch, guidance and merge nodes, whose results ComfyUI computed, for
tests/test_model_patch_parity.py.

Shared, unchanged, by the test (which runs our nodes and sampler) and by
tests/data/model_patches/make_reference.py (which ran ComfyUI's node classes and
nodes.common_ksampler at commit a125cd84 under ComfyUI's interpreter). It imports nothing but
torch, so both interpreters load it.

Both sides build the same network: a tiny SD1-layout UNet (UNET below: three levels 32/64/128
wide, attention on the first two and in the middle block, 8 heads) filled by
tests.models_tiny.randomize_ with WEIGHT_SEEDS, inside SD1.5's model sampling (eps, scaled-linear
betas). ComfyUI cannot detect a model this small, so its script builds comfy.supported_models.SD15
from the detected UNet config directly. The prompts are fixed random context tensors rather than
encoded text. Every case is KSampler (common_ksampler) with SEED, STEPS, SAMPLER, SCHEDULER and
the case's cfg, on the case's latent, after applying the case's nodes in order to the MODEL.

A case is Case(id, patches, latent, cfg, denoise); a patch is (node, inputs) where "<MODEL>" stands
for the model so far, "<MODEL2>" for a second network (WEIGHT_SEEDS["model2"]), "<EMPTY>" for the
EMPTY conditioning, and Call(node, inputs) for the first output of another node.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

UNET = {"model_channels": 32, "channel_mult": (1, 2, 4), "num_res_blocks": 1, "transformer_depth": (1, 1, 0),
        "transformer_depth_middle": 1, "context_dim": 24, "num_heads": 8}
WEIGHT_SEEDS = {"model": 7, "model2": 8}
SEED, STEPS, SAMPLER, SCHEDULER = 5, 4, "euler", "normal"


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


POSITIVE = [[_randn(11, 1, 8, 24), {}]]
NEGATIVE = [[_randn(12, 1, 8, 24), {}]]
EMPTY = [[_randn(13, 1, 8, 24), {}]]


def _masked_latent() -> dict:
    """An image latent to repaint under a soft mask that ramps 0 -> 1 from left to right."""
    mask = torch.linspace(0.0, 1.0, 16).reshape(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    return {"samples": _randn(14, 1, 4, 16, 16), "noise_mask": mask}


LATENTS = {
    "empty": lambda: {"samples": torch.zeros(1, 4, 16, 16)},
    "empty2": lambda: {"samples": torch.zeros(2, 4, 16, 16)},
    "masked": _masked_latent,
}


@dataclass(frozen=True)
class Call:
    node: str
    inputs: dict


@dataclass(frozen=True)
class Case:
    id: str
    patches: tuple = ()
    latent: str = "empty"
    cfg: float = 3.0
    denoise: float = 1.0


M = "<MODEL>"
ATTENTION = {"q": 1.2, "k": 0.8, "v": 1.1, "out": 0.9}

CASES = [
    Case("FreeU", (("FreeU", {"model": M, "b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),)),
    Case("FreeU_V2", (("FreeU_V2", {"model": M, "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),), latent="empty2"),
    Case("HyperTile", (("HyperTile", {"model": M, "tile_size": 32, "swap_size": 3, "max_depth": 1,
                                      "scale_depth": False}),)),
    Case("HyperTile_scaled", (("HyperTile", {"model": M, "tile_size": 64, "swap_size": 2, "max_depth": 1,
                                             "scale_depth": True}),), latent="empty2"),
    Case("DeepShrink", (("PatchModelAddDownscale", {
        "model": M, "block_number": 1, "downscale_factor": 2.0, "start_percent": 0.0, "end_percent": 0.5,
        "downscale_after_skip": True, "downscale_method": "bicubic", "upscale_method": "bicubic"}),)),
    Case("DeepShrink_before_skip", (("PatchModelAddDownscale", {
        "model": M, "block_number": 3, "downscale_factor": 1.5, "start_percent": 0.0, "end_percent": 0.7,
        "downscale_after_skip": False, "downscale_method": "bislerp", "upscale_method": "area"}),)),
    Case("PAG", (("PerturbedAttentionGuidance", {"model": M, "scale": 3.0}),)),
    Case("SAG", (("SelfAttentionGuidance", {"model": M, "scale": 0.5, "blur_sigma": 2.0}),)),
    Case("ToMe", (("TomePatchModel", {"model": M, "ratio": 0.5}),)),
    Case("EpsilonScaling", (("Epsilon Scaling", {"model": M, "scaling_factor": 1.05}),)),
    Case("RescaleCFG", (("RescaleCFG", {"model": M, "multiplier": 0.7}),), latent="empty2"),
    Case("RenormCFG", (("RenormCFG", {"model": M, "cfg_trunc": 100.0, "renorm_cfg": 1.0}),)),
    Case("RenormCFG_trunc", (("RenormCFG", {"model": M, "cfg_trunc": 5.0, "renorm_cfg": 0.5}),)),
    Case("CFGNorm", (("CFGNorm", {"model": M, "strength": 0.8}),)),
    Case("CFGZeroStar", (("CFGZeroStar", {"model": M}),), latent="empty2"),
    Case("TCFG", (("TCFG", {"model": M}),), latent="empty2"),
    Case("PerpNeg", (("PerpNeg", {"model": M, "empty_conditioning": "<EMPTY>", "neg_scale": 1.5}),)),
    Case("DifferentialDiffusion", (("DifferentialDiffusion", {"model": M}),), latent="masked"),
    Case("DifferentialDiffusion_soft", (("DifferentialDiffusion", {"model": M, "strength": 0.6}),),
         latent="masked", denoise=0.8),
    Case("Mahiro", (("Mahiro", {"model": M}),)),
    Case("FreSca", (("FreSca", {"model": M, "scale_low": 0.9, "scale_high": 1.25, "freq_cutoff": 3}),)),
    Case("UNetSelfAttentionMultiply", (("UNetSelfAttentionMultiply", {"model": M, **ATTENTION}),)),
    Case("UNetCrossAttentionMultiply", (("UNetCrossAttentionMultiply",
                                         {"model": M, "q": 0.7, "k": 1.3, "v": 0.9, "out": 1.2}),)),
    Case("LatentApplyOperationCFG", (("LatentApplyOperationCFG", {
        "model": M, "operation": Call("LatentOperationTonemapReinhard", {"multiplier": 0.5})}),)),
    Case("ModelMergeSimple", (("ModelMergeSimple", {"model1": M, "model2": "<MODEL2>", "ratio": 0.3}),)),
    Case("ModelMergeBlocks", (("ModelMergeBlocks", {"model1": M, "model2": "<MODEL2>", "input": 0.2,
                                                    "middle": 0.6, "out": 0.9}),)),
    Case("ModelMergeSubtract", (("ModelMergeSubtract", {"model1": M, "model2": "<MODEL2>", "multiplier": 0.4}),)),
    Case("ModelMergeAdd", (("ModelMergeAdd", {"model1": M, "model2": "<MODEL2>"}),), cfg=1.5),
    # patches composing: weight patches under a merge, block and guidance hooks together
    Case("chain_attention_merge_freeu_pag", (
        ("UNetSelfAttentionMultiply", {"model": M, **ATTENTION}),
        ("ModelMergeSimple", {"model1": M, "model2": "<MODEL2>", "ratio": 0.6}),
        ("FreeU_V2", {"model": M, "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
        ("PerturbedAttentionGuidance", {"model": M, "scale": 2.0}),
        ("RescaleCFG", {"model": M, "multiplier": 0.5}),
    )),
]


def baseline_id(case: Case) -> str:
    """The unpatched run with the same latent, CFG and denoise as `case`."""
    return f"baseline_{case.latent}_cfg{case.cfg}_denoise{case.denoise}"


CASES += [Case(baseline_id(c), (), c.latent, c.cfg, c.denoise)
          for c in {baseline_id(c): c for c in CASES}.values()]
