"""MODEL hooks set by a plugin change the sampled latent exactly as they do in ComfyUI.

tests/packs/lg_hook_nodes.py is a plugin-style pack written against ComfyUI's ModelPatcher API
(a cfg function, a post-cfg function, an attn2 patch, a UNet function wrapper, an attn1
replacement and an output-block patch). tests/data/comfy_hooks/reference.json holds what ComfyUI
itself samples with each of them on the same tiny checkpoint, seed and conditioning (see
make_reference.py there for exactly how). Here the pack is loaded as a custom node pack, its
nodes patch our MODEL, and our KSampler node samples.

Tolerance: the two UNets are independent float32 implementations of the same network (ours runs
NHWC convolutions on the CPU, ComfyUI NCHW), so results agree to rounding, not bit for bit:
max |ours - ComfyUI| <= 1e-4 * max |ComfyUI| + 1e-5 over the latent. Every hook moves the result
by more than 100 times that tolerance, so a hook that is ignored or wired differently fails.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import make_runtime

DATA = Path(__file__).parent / "data" / "comfy_hooks"
PACK = Path(__file__).parent / "packs" / "lg_hook_nodes.py"
CKPT = "tiny_sd15.safetensors"
HOOKS = ["HookCfgFunction", "HookPostCfgFunction", "HookAttn2Patch", "HookUnetWrapper", "HookAttn1Replace",
         "HookOutputBlockPatch"]


@pytest.fixture(scope="module")
def reference():
    return json.loads((DATA / "reference.json").read_text())


@pytest.fixture(scope="module")
def session(tiny_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("hooks")
    (base / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint("sd15"), base / "models" / "checkpoints" / CKPT)
    (base / "custom_nodes").mkdir()
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)
    runtime = make_runtime(base)
    model = runtime.registry.get("CheckpointLoaderSimple").cls().load_checkpoint(CKPT)[0]
    return runtime, model


def conditioning(seed: int):
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


def sample(runtime, model, settings) -> torch.Tensor:
    ksampler = runtime.registry.get("KSampler").cls()
    latent = {"samples": torch.zeros(settings["latent"])}
    with torch.inference_mode():
        (out,) = ksampler.sample(model, settings["seed"], settings["steps"], settings["cfg"], settings["sampler"],
                                 settings["scheduler"], conditioning(1), conditioning(2), latent, denoise=1.0)
    return out["samples"].flatten()


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor, what: str):
    tol = 1e-4 * theirs.abs().max().item() + 1e-5
    err = (ours - theirs).abs().max().item()
    assert err <= tol, f"{what}: max difference {err:.3g} > {tol:.3g}"
    return tol


def test_unpatched_model_samples_as_comfyui(session, reference):
    runtime, model = session
    assert_matches(sample(runtime, model, reference["settings"]), torch.tensor(reference["latents"]["none"]), "none")


@pytest.mark.parametrize("hook", HOOKS)
def test_a_plugin_hook_changes_the_result_exactly_as_in_comfyui(session, reference, hook):
    runtime, model = session
    node = runtime.registry.get(hook)
    assert node.python_module != "nodes"  # loaded as a custom node pack
    (patched,) = node.cls().patch(model)
    assert patched is not model and not model.model_options.get("sampler_cfg_function")
    theirs = torch.tensor(reference["latents"][hook])
    tol = assert_matches(sample(runtime, patched, reference["settings"]), theirs, hook)
    unpatched = torch.tensor(reference["latents"]["none"])
    assert (theirs - unpatched).abs().max().item() > 100 * tol, f"{hook} barely changes ComfyUI's result"
