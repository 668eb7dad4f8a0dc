"""Reference latents for tests/test_model_hooks.py, computed by ComfyUI itself.

How they were made (ComfyUI a125cd84 at /work/ref/ComfyUI, its venv, CPU torch 2.13.0):

    python -c "from tests.models_tiny import write_tiny_full_checkpoint as w; w('/tmp/tiny_sd15.safetensors', 'sd15')"
    /work/ref/venv/bin/python tests/data/comfy_hooks/make_reference.py /tmp/tiny_sd15.safetensors \
        tests/data/comfy_hooks/reference.json

The tiny SD1.5 checkpoint's UNet (tests/models_tiny.py, seed 0) is built by ComfyUI's own code:
its detect_unet_config reads the tiny config off the keys, its SD15 model config builds the
BaseModel, load_model_weights loads it, and a ComfyUI ModelPatcher wraps it (ComfyUI's
load_checkpoint_guess_config refuses the file only because a 32-channel UNet matches none of its
released model configs; the text encoder is not used). Each hook node of tests/packs/lg_hook_nodes.py patches the
MODEL, and ComfyUI's comfy.sample.sample runs euler / normal, 3 steps, cfg 7, seed 42 on an empty
64x64 latent, with seeded random conditioning (torch.Generator seeds 1 and 2, [1, 77, 768]).
"""
import json
import os
import sys
from pathlib import Path

COMFY = Path(os.environ.get("COMFYUI", "/work/ref/ComfyUI"))
PACK = Path(__file__).resolve().parents[2] / "packs"

SETTINGS = {"steps": 3, "cfg": 7.0, "sampler": "euler", "scheduler": "normal", "seed": 42, "latent": [1, 4, 8, 8]}


def conditioning(seed: int):
    import torch
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


def main(ckpt: str, out: str) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(COMFY))
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.sample
    sys.path.insert(0, str(PACK))
    import lg_hook_nodes

    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    sd = comfy.utils.load_torch_file(ckpt)
    prefix = "model.diffusion_model."
    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(sd, prefix))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model(sd, prefix, device=torch.device("cpu"))
    base.load_model_weights(sd, prefix)
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    latent = torch.zeros(SETTINGS["latent"])
    noise = comfy.sample.prepare_noise(latent, SETTINGS["seed"])
    results = {}
    for name in [None, *lg_hook_nodes.NODE_CLASS_MAPPINGS]:
        patched = model if name is None else lg_hook_nodes.NODE_CLASS_MAPPINGS[name]().patch(model)[0]
        samples = comfy.sample.sample(patched, noise, SETTINGS["steps"], SETTINGS["cfg"], SETTINGS["sampler"],
                                      SETTINGS["scheduler"], conditioning(1), conditioning(2), latent,
                                      seed=SETTINGS["seed"])
        results[name or "none"] = samples.flatten().tolist()
    Path(out).write_text(json.dumps({"settings": SETTINGS, "latents": results}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
