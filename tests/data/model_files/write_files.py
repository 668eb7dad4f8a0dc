"""Step 1 of the ComfyUI load check: our saving nodes write files that ComfyUI then loads
(step 2, check_in_comfyui.py, under ComfyUI's interpreter). Run from this checkout's root:

    python tests/data/model_files/write_files.py /tmp/lg_saved
    /work/ref/venv/bin/python tests/data/model_files/check_in_comfyui.py /work/ref/ComfyUI /tmp/lg_saved

ComfyUI only recognises model families by their real widths (an SD1.5 UNet has 320 channels and a
768-wide context; its VAE is the released 128-channel one), so the models here are random
weights at those widths but as shallow as ComfyUI's detection allows: a one-level 320-channel
UNet, a two-layer CLIP-L (released vocabulary; ComfyUI's CLIP-L file reader fails on one layer), the released VAE architecture; and for unCLIP-H
the same UNet with the 2048-wide adm vector plus a 2-layer CLIP vision tower with a 1024-wide
projection. Our loaders read those source files; the nodes CheckpointSave, ModelSave, CLIPSave,
VAESave, ImageOnlyCheckpointSave and LoraSave (standard and full_diff, from the difference of two
such models) write into <out>/output/. `manifest.json` says which node wrote which file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO), str(REPO / "compat")]

from diffusion import text_encoders
from diffusion.unet import UNET_PREFIX, UNetConfig, UNetModel
from diffusion.vae import AutoencoderKL, VAEConfig
from tests.model_files import session
from tests.models_tiny import UNCLIP_VISION_PREFIX, randomize_, tiny_clip_vision


def comfy_sized(adm: int | None, context: int, seed: int) -> dict[str, torch.Tensor]:
    linear = context != 768
    unet = UNetConfig(model_channels=320, channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,),
                      transformer_depth_middle=1, context_dim=context, num_heads=-1 if linear else 8,
                      num_head_channels=64 if linear else -1, use_linear_in_transformer=linear, adm_in_channels=adm)
    sd = {UNET_PREFIX + k: v for k, v in randomize_(UNetModel(unet), seed).state_dict().items()}
    vae = randomize_(AutoencoderKL(VAEConfig()), seed + 1)  # the released SD VAE architecture
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    if context == 768:
        text = text_encoders.SD1TextEncoder({"l": text_encoders.text_config(768, 2)})
    else:
        text = text_encoders.SD2TextEncoder({"h": text_encoders.text_config(1024, 2, act="gelu", projection_dim=1024)})
    sd.update(randomize_(text, seed + 2).state_dict_original())
    if adm:
        from diffusion.clip_vision import transformers_to_openclip

        tower = tiny_clip_vision(width=64, layers=2, projection=adm // 2, seed=seed + 3).state_dict()
        sd.update({UNCLIP_VISION_PREFIX + k: v for k, v in transformers_to_openclip(tower).items()})
    return {k: v.contiguous() for k, v in sd.items()}


def main(out: Path) -> None:
    checkpoints = out / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    save_file(comfy_sized(None, 768, 0), str(checkpoints / "sd15_a.safetensors"))
    save_file(comfy_sized(None, 768, 10), str(checkpoints / "sd15_b.safetensors"))
    save_file(comfy_sized(2048, 1024, 20), str(checkpoints / "unclip_h.safetensors"))
    s = session(out)
    manifest = {}

    def wrote(node: str, before: set):
        for path in sorted(set((out / "output").rglob("*.safetensors")) - before):
            manifest[str(path.relative_to(out / "output"))] = node

    def files():
        return set((out / "output").rglob("*.safetensors"))

    prompt = {"1": {"class_type": "CheckpointSave", "inputs": {}}}
    m1, c1, v1 = s.node("CheckpointLoaderSimple", ckpt_name="sd15_a.safetensors")
    m2, c2, _ = s.node("CheckpointLoaderSimple", ckpt_name="sd15_b.safetensors")
    for node, inputs in (("CheckpointSave", dict(model=m1, clip=c1, vae=v1, filename_prefix="checkpoints/lg")),
                         ("ModelSave", dict(model=m1, filename_prefix="diffusion_models/lg")),
                         ("CLIPSave", dict(clip=c1, filename_prefix="clip/lg")),
                         ("VAESave", dict(vae=v1, filename_prefix="vae/lg"))):
        before = files()
        s.node(node, **inputs, prompt=prompt)
        wrote(node, before)
    um, _, uv, vision = s.node("unCLIPCheckpointLoader", ckpt_name="unclip_h.safetensors")
    before = files()
    s.node("ImageOnlyCheckpointSave", model=um, clip_vision=vision, vae=uv, filename_prefix="checkpoints/lg_image")
    wrote("ImageOnlyCheckpointSave", before)
    from tests.test_model_saving import _subtract, _subtract_clip

    for lora_type in ("standard", "full_diff"):
        before = files()
        s.node("LoraSave", filename_prefix=f"loras/lg_{lora_type}", rank=8, lora_type=lora_type, bias_diff=True,
               model_diff=_subtract(m1, m2), text_encoder_diff=_subtract_clip(c1, c2))
        wrote("LoraSave", before)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
