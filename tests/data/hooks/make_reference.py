"""Writes reference.safetensors beside this file: ComfyUI's latents for the workflows of
tests/hook_cases.py, compared with ours by tests/test_hooks.py.

How the committed file was made (ComfyUI a125cd84 at /work/ref/ComfyUI, its venv, CPU torch 2.13.0),
from this checkout's root:

    /work/ref/venv/bin/python tests/data/hooks/make_reference.py /work/ref/ComfyUI

It writes the cases' files (tiny SD1.5 checkpoints A and B, the LoRA) with tests/hook_cases.py
into a temporary folder registered as ComfyUI's "loras" and "checkpoints" folders, builds
checkpoint A's UNet with ComfyUI's own code (detect_unet_config, its SD15 model config,
load_model_weights, a ComfyUI ModelPatcher, float32) and its one-layer CLIP-L (ComfyUI's SD1 CLIP
classes over its CLIP-L config with num_hidden_layers 1; ComfyUI's default CPU text-encoder
precision: weights stored in fp16, computed in fp32, as ours), runs each case's
nodes from ComfyUI's comfy_extras/nodes_hooks.py (and nodes.py's LoraLoaderModelOnly and
CLIPTextEncode) on seeded random prompts or that CLIP, and samples with comfy.sample.sample.
ComfyUI's load_checkpoint_guess_config refuses the tiny checkpoints only because a 32-channel UNet
matches none of its released configs, so CreateHookModelAsLora* get checkpoint B's MODEL built the
same way (its text encoder is not part of any case). Metadata: settings, and fingerprints of the
files' tensors so the test can tell its files are the same.
"""
import functools
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
COMFY = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(COMFY))
sys.path.append(str(REPO))  # after ComfyUI: only the test builders (and their `diffusion`) come from here

import comfy.options

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
sys.modules.setdefault("server", types.SimpleNamespace(PromptServer=None))
import comfy.model_detection
import comfy.model_patcher
import comfy.sample
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.utils
import folder_paths
import torch
from comfy_extras.nodes_hooks import NODE_CLASS_MAPPINGS
from safetensors.torch import load_file, save_file

import nodes


def load_by_path(name: str, path: Path):
    """Our test modules under their own names (ComfyUI has a `tests` package of its own)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


load_by_path("tests.models_tiny", REPO / "tests" / "models_tiny.py")
cases = load_by_path("tests.hook_cases", REPO / "tests" / "hook_cases.py")


def comfy_model(path: Path):
    sd = comfy.utils.load_torch_file(str(path))
    prefix = "model.diffusion_model."
    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(sd, prefix))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model(sd, prefix, device=torch.device("cpu"))
    base.load_model_weights(sd, prefix)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


def comfy_clip(path: Path):
    """Checkpoint A's one-layer CLIP-L in ComfyUI's SD1 CLIP classes (its CLIP-L config with one
    layer: ComfyUI's loader would build the released twelve), stored in fp16."""
    config = json.loads((COMFY / "comfy" / "sd1_clip_config.json").read_text())
    config["num_hidden_layers"] = 1
    tower = functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=config, return_projected_pooled=False)
    target = types.SimpleNamespace(params={}, tokenizer=comfy.sd1_clip.SD1Tokenizer,
                                   clip=functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=tower))
    clip = comfy.sd.CLIP(target)
    sd = comfy.utils.load_torch_file(str(path))
    prefix = "cond_stage_model.transformer."
    clip.load_sd({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    return clip


def fingerprint(path: Path) -> list:
    tensors = load_file(str(path)).values()
    return [float(sum(t.double().sum() for t in tensors)), float(sum((t.double() ** 2).sum() for t in tensors))]


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    paths = cases.write_files(folder)
    folder_paths.add_model_folder_path("loras", str(folder))
    folder_paths.add_model_folder_path("checkpoints", str(folder))
    comfy.sd.load_checkpoint_guess_config = lambda path, **kw: (comfy_model(Path(path)), None, None, None)

    def run_node(name, **inputs):
        cls = NODE_CLASS_MAPPINGS.get(name) or nodes.NODE_CLASS_MAPPINGS[name]
        return getattr(cls(), cls.FUNCTION)(**inputs)

    model = comfy_model(paths[cases.CKPT_A])
    clip = comfy_clip(paths[cases.CKPT_A])
    settings = cases.SETTINGS
    latent = torch.zeros(settings["latent"])
    noise = comfy.sample.prepare_noise(latent, settings["seed"])
    out = {}
    for name, case in cases.CASES.items():
        patched, positive, negative = cases.inputs(case, model, clip, run_node, cases.placeholders())
        out[name] = comfy.sample.sample(patched, noise, settings["steps"], settings["cfg"], settings["sampler"],
                                        settings["scheduler"], positive, negative, latent,
                                        seed=settings["seed"]).contiguous()
        print(name, float(out[name].abs().max()))
    meta = {"settings": settings, "files": {k: fingerprint(p) for k, p in paths.items()}, "cases": list(out)}
    save_file(out, str(HERE / "reference.safetensors"), metadata={"json": json.dumps(meta)})


if __name__ == "__main__":
    main()
