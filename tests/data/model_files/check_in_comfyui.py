"""Step 2 of the ComfyUI load check (step 1: write_files.py, which says how to run both): ComfyUI's
own loaders read every file our saving nodes wrote. Writes comfyui_load_check.json beside this file.

Per file, with ComfyUI's log captured:
* checkpoints (CheckpointSave, ImageOnlyCheckpointSave): comfy.sd.load_checkpoint_guess_config must
  detect the family (SD15 / SD21UnclipH), report no missing or unexpected UNet keys and no missing
  VAE keys, and hold exactly the file's UNet and VAE tensors; its CLIP may miss only what a
  two-layer file cannot have (layers 2-11 of ComfyUI's 12-layer CLIP-L, the projection and logit
  scale SD1 files never carry). For the unCLIP file, comfy.clip_vision.convert_to_transformers on
  the file's vision prefix must give exactly the tower's keys (ComfyUI only builds a tower from
  them when it has ViT-H's 32 layers, which this test tower has not).
* ModelSave: comfy.sd.load_diffusion_model detects SD15 and holds the file's tensors.
* CLIPSave: comfy.sd.load_clip reads it as SD1's CLIP-L with the same allowed misses.
* VAESave: comfy.sd.VAE loads it with no missing keys and the file's tensors.
* LoraSave: comfy.sd.load_lora_for_models on ComfyUI's load of the saved checkpoint must use every
  key of the file ("lora key not loaded" / "NOT LOADED" never logged).
"""
import json
import logging
import re
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMFY = Path(sys.argv[1]).resolve()
FILES = Path(sys.argv[2]).resolve()
sys.path.insert(0, str(COMFY))

import comfy.options

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
sys.modules.setdefault("server", types.SimpleNamespace(PromptServer=None))
import comfy.clip_vision
import comfy.sd
import comfy.utils
import torch


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def captured(fn, *args, **kwargs):
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        return fn(*args, **kwargs), handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


ALLOWED_CLIP_MISSING = re.compile(r"(encoder\.layers\.([2-9]|1[01])\.|text_projection|logit_scale)")


def clip_missing(lines) -> list[str]:
    missing = []
    for line in lines:
        if line.startswith("clip missing:"):
            missing += re.findall(r"'([^']+)'", line)
    return missing


def same_tensors(module_sd: dict, file_sd: dict, prefix: str) -> bool:
    keys = [k for k in file_sd if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(module_sd[k[len(prefix):]].float(), file_sd[k].float()) for k in keys)


def check_checkpoint(path: Path, expected_class: str) -> dict:
    file_sd = comfy.utils.load_torch_file(str(path))
    (model, clip, vae, vision), lines = captured(comfy.sd.load_checkpoint_guess_config, str(path), True, True, True)
    problems = [line for line in lines if line.startswith(("unet missing", "unet unexpected", "Missing VAE keys"))]
    bad_clip = [k for k in clip_missing(lines) if not ALLOWED_CLIP_MISSING.search(k)]
    result = {"class": type(model.model).__name__, "unet_equal": same_tensors(
        model.model.diffusion_model.state_dict(), file_sd, "model.diffusion_model."),
        "vae_equal": same_tensors(vae.first_stage_model.state_dict(), file_sd, "first_stage_model."),
        "problems": problems, "unexpected_clip_missing": bad_clip, "clip_loaded": clip is not None}
    if expected_class == "SD21UNCLIP":
        prefix = "embedder.model.visual."
        tower = {k: v for k, v in file_sd.items() if k.startswith(prefix)}
        converted = comfy.clip_vision.convert_to_transformers(dict(tower), prefix)
        result["vision_keys"] = len(converted)
        result["vision_keys_equal"] = set(converted) == {k[len(prefix):] for k in tower}
        result["vision_built"] = vision is not None
    result["ok"] = (result["class"] == expected_class and result["unet_equal"] and result["vae_equal"]
                    and not problems and not bad_clip and result.get("vision_keys_equal", True))
    return result


def check_model(path: Path) -> dict:
    file_sd = comfy.utils.load_torch_file(str(path))
    model, lines = captured(comfy.sd.load_diffusion_model, str(path))
    equal = same_tensors(model.model.diffusion_model.state_dict(), file_sd, "model.diffusion_model.")
    problems = [line for line in lines if line.startswith(("unet missing", "unet unexpected"))]
    name = type(model.model.model_config).__name__
    return {"config": name, "unet_equal": equal, "problems": problems,
            "ok": name == "SD15" and equal and not problems}


def check_clip(path: Path) -> dict:
    clip, lines = captured(comfy.sd.load_clip, [str(path)])
    bad = [k for k in clip_missing(lines) if not ALLOWED_CLIP_MISSING.search(k)]
    name = type(clip.cond_stage_model).__name__
    return {"class": name, "unexpected_missing": bad, "ok": name == "SD1ClipModel" and not bad}


def check_vae(path: Path) -> dict:
    file_sd = comfy.utils.load_torch_file(str(path))
    vae, lines = captured(comfy.sd.VAE, sd=dict(file_sd))
    equal = same_tensors(vae.first_stage_model.state_dict(), file_sd, "")
    problems = [line for line in lines if line.startswith("Missing VAE keys")]
    return {"vae_equal": equal, "problems": problems, "ok": equal and not problems}


def check_lora(path: Path, checkpoint: Path) -> dict:
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), True, True)
    lora = comfy.utils.load_torch_file(str(path))
    (new_model, new_clip), lines = captured(comfy.sd.load_lora_for_models, model, clip, lora, 1.0, 1.0)
    unused = [line for line in lines if line.startswith(("lora key not loaded", "NOT LOADED"))]
    return {"keys": len(lora), "model_patches": len(new_model.patches), "clip_patches": len(new_clip.patcher.patches),
            "unused": unused[:10], "ok": not unused and len(new_model.patches) > 0 and len(new_clip.patcher.patches) > 0}


def main() -> None:
    manifest = json.loads((FILES / "manifest.json").read_text())
    out = FILES / "output"
    checkpoint = out / next(k for k, v in manifest.items() if v == "CheckpointSave")
    files = {}
    for name, node in manifest.items():
        path = out / name
        if node == "CheckpointSave":
            result = check_checkpoint(path, "BaseModel")
        elif node == "ImageOnlyCheckpointSave":
            result = check_checkpoint(path, "SD21UNCLIP")
        elif node == "ModelSave":
            result = check_model(path)
        elif node == "CLIPSave":
            result = check_clip(path)
        elif node == "VAESave":
            result = check_vae(path)
        else:
            result = check_lora(path, checkpoint)
        files[name] = {"node": node, **result}
        print(name, json.dumps(files[name]), flush=True)
    (HERE / "comfyui_load_check.json").write_text(json.dumps({"comfyui": "a125cd84", "files": files}, indent=1) + "\n")


if __name__ == "__main__":
    main()
