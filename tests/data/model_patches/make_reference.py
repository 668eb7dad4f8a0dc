"""Writes reference.safetensors beside this file: the latents ComfyUI samples for the cases of
tests/model_patch_cases.py. Run with ComfyUI's interpreter from this checkout's root:

    /work/ref/venv/bin/python tests/data/model_patches/make_reference.py /work/ref/ComfyUI

(ComfyUI commit a125cd84, CPU torch 2.13.0, run with --cpu, float32.) The tiny UNet's weights are
made by our tests/models_tiny.py (randomize_ over our UNetModel of the cases' config, so the keys
are the original checkpoint layout); ComfyUI detects its config from those keys
(comfy.model_detection.detect_unet_config), builds comfy.supported_models.SD15 from it (its model
matching needs SD1.5's real widths) and loads the weights into comfy.model_base.BaseModel under
a comfy.model_patcher.ModelPatcher. Each case applies ComfyUI's own node classes (classic FUNCTION
or V3 execute) to that MODEL and samples with nodes.common_ksampler. The sampled latent goes in
as "<case>/samples"; the metadata records each case's inputs and a fingerprint of the weights
and prompts, which the test checks before comparing.
"""
import asyncio
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
COMFY = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(COMFY))
sys.path.append(str(REPO))  # after ComfyUI: only our `diffusion` package is taken from here


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


import comfy.options

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its flags at import
sys.modules.setdefault("server", types.SimpleNamespace(PromptServer=None))
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models

import nodes

cases = load_by_path("lg_model_patch_cases", REPO / "tests" / "model_patch_cases.py")
models_tiny = load_by_path("lg_models_tiny", REPO / "tests" / "models_tiny.py")
from diffusion.unet import UNetConfig, UNetModel  # ours: only to make the weights

MODULES = ["comfy_extras.nodes_freelunch", "comfy_extras.nodes_hypertile", "comfy_extras.nodes_model_downscale",
           "comfy_extras.nodes_pag", "comfy_extras.nodes_sag", "comfy_extras.nodes_tomesd", "comfy_extras.nodes_eps",
           "comfy_extras.nodes_model_advanced", "comfy_extras.nodes_lumina2", "comfy_extras.nodes_cfg",
           "comfy_extras.nodes_tcfg", "comfy_extras.nodes_perpneg", "comfy_extras.nodes_differential_diffusion",
           "comfy_extras.nodes_mahiro", "comfy_extras.nodes_fresca", "comfy_extras.nodes_attention_multiply",
           "comfy_extras.nodes_latent", "comfy_extras.nodes_model_merging"]


def node_classes() -> dict:
    classes = {}
    for name in MODULES:
        module = importlib.import_module(name)
        classes.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
        entry = getattr(module, "comfy_entrypoint", None)
        if entry is not None:
            extension = asyncio.run(entry())
            for cls in asyncio.run(extension.get_node_list()):
                classes[cls.define_schema().node_id] = cls
    return classes


CLASSES = node_classes()


def call(node: str, inputs: dict) -> tuple:
    cls = CLASSES[node]
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        return tuple(out) if isinstance(out, tuple) else tuple(out.args)  # HyperTile returns a tuple
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def unet_state_dict(seed: int) -> dict:
    unet = models_tiny.randomize_(UNetModel(UNetConfig(**cases.UNET)), seed).eval()
    return {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}


def comfy_model(seed: int):
    sd = unet_state_dict(seed)
    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(sd, "model.diffusion_model."))
    model = config.get_model(sd, "model.diffusion_model.")
    weights = fingerprint(sd.values())  # before loading, which empties sd
    model.load_model_weights(sd, "model.diffusion_model.")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), weights


def fingerprint(tensors) -> list[float]:
    total = torch.zeros((), dtype=torch.float64)
    squares = torch.zeros((), dtype=torch.float64)
    for t in tensors:
        total += t.double().sum()
        squares += (t.double() ** 2).sum()
    return [float(total), float(squares)]


def resolve(inputs: dict, model, model2) -> dict:
    out = {}
    for name, value in inputs.items():
        if isinstance(value, cases.Call):
            value = call(value.node, value.inputs)[0]
        elif value == "<MODEL>":
            value = model
        elif value == "<MODEL2>":
            value = model2
        elif value == "<EMPTY>":
            value = cases.EMPTY
        out[name] = value
    return out


def main() -> None:
    torch.set_num_threads(1)
    base, weights = comfy_model(cases.WEIGHT_SEEDS["model"])
    second, weights2 = comfy_model(cases.WEIGHT_SEEDS["model2"])
    tensors = {}
    meta = {"weights": {"model": weights, "model2": weights2},
            "prompts": fingerprint([c[0] for c in cases.POSITIVE + cases.NEGATIVE + cases.EMPTY]),
            "cases": {}}
    for case in cases.CASES:
        model = base
        for node, inputs in case.patches:
            (model,) = call(node, resolve(inputs, model, second))[:1]
        latent = cases.LATENTS[case.latent]()
        with torch.inference_mode():
            (out,) = nodes.common_ksampler(model, cases.SEED, cases.STEPS, case.cfg, cases.SAMPLER, cases.SCHEDULER,
                                           cases.POSITIVE, cases.NEGATIVE, latent, denoise=case.denoise)
        tensors[f"{case.id}/samples"] = out["samples"].float().clone().contiguous()
        meta["cases"][case.id] = {"patches": [[n, {k: repr(v) for k, v in i.items()}] for n, i in case.patches],
                                  "latent": case.latent, "cfg": case.cfg, "denoise": case.denoise}
        print(case.id, float(out["samples"].abs().mean()), flush=True)
    save_file(tensors, str(HERE / "reference.safetensors"), metadata={"json": json.dumps(meta)})
    print(f"{len(tensors)} cases -> {HERE / 'reference.safetensors'}")


if __name__ == "__main__":
    main()
