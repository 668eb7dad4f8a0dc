"""Text to image end to end on tiny random-weight checkpoints in the real key layouts.

The two shared workflows run unchanged through the command line (512x512/20 steps and
1024x1024/25 steps; most of their time is the UNet's full-resolution self-attention). Everything
else runs the SD1.5 API workflow shrunk to 64x64 and a few steps through the engine's API, and
one small prompt per remaining family (SD2.1-v, SDXL refiner, 9-channel inpainting).
"""
import copy
import gc
import json
import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion.device import CPU_BF16_ENV
from tests.conftest import make_runtime
from tests import paths

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = paths.SHARED_WORKFLOWS
SD15_API = WORKFLOWS / "sd15_txt2img_api.json"
SDXL_UI = WORKFLOWS / "image_sdxl_simple.json"
# ComfyUI's latent of an all-grey image (0 in -1..1), per channel, in model space: what it feeds
# a 9-channel inpainting UNet as the "masked image" when the latent has no noise mask
# (comfy/model_base.py, BaseModel.concat_cond / blank_inpaint_image_like), next to an all-ones mask.
COMFY_BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)
# The tiny checkpoints' VAE has four levels like a real one: 8 pixels per latent cell.
TINY_VAE_SCALE = 8
SMALL = 64  # pixel side asked of EmptyLatentImage in the small prompts
SMALL_IMAGE = SMALL // 8 * TINY_VAE_SCALE


# ---------------------------------------------------------------------------------------------
# helpers


def place_checkpoint(base: Path, source: Path, name: str) -> Path:
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        target.symlink_to(source)
    return target


def run_cli(base: Path, workflow: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`main.py run` at the precision a user of this machine gets (the suite's fp32 override left
    out): these runs compare no numbers with ComfyUI, and in fp32 the shared 512x512 and 1024x1024
    workflows spend minutes in ComfyUI's exact CPU attention over the tiny models' 4-channel heads."""
    env = {k: v for k, v in os.environ.items() if k != CPU_BF16_ENV}
    return subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(base), str(workflow)],
                          capture_output=True, text=True, timeout=timeout, cwd=base, env=env)


def written_pngs(proc: subprocess.CompletedProcess) -> list[Path]:
    return [Path(line) for line in proc.stdout.splitlines() if line.endswith(".png")]


def pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)


def assert_real_image(image: torch.Tensor) -> None:
    """Random weights give no picture, but a broken stack gives constant or non-finite pixels."""
    image = image.float()
    assert torch.isfinite(image).all()
    assert image.std() > 1e-3 and (image.amax() - image.amin()) > 1e-2


class Captures(list):
    """A runtime with CaptureAny registered: an output node that keeps whatever reaches it."""

    def node_class(self):
        captured = self

        class CaptureAny:
            CATEGORY = "testing"
            FUNCTION = "run"
            OUTPUT_NODE = True
            RETURN_TYPES = ()

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("*",)}}

            def run(self, value):
                captured.append(value)
                return {"ui": {}}

        return CaptureAny


def capturing_runtime(base: Path, *flags: str):
    rt = make_runtime(base, *flags)
    captures = Captures()
    rt.registry.register("CaptureAny", captures.node_class(), python_module="tests")
    return rt, captures


def run(rt, prompt: dict):
    events = []
    result = rt.executor.run(copy.deepcopy(prompt), emit=lambda e, d: events.append((e, d)))
    assert result.ok, result.error
    return result, events


def small_sd15_prompt(seed: int = 8566257, steps: int = 3) -> dict:
    """The shared SD1.5 API workflow at 64x64 and a few steps, plus a capture of the decoded image."""
    prompt = json.loads(SD15_API.read_text())
    prompt["5"]["inputs"].update(width=SMALL, height=SMALL)
    prompt["3"]["inputs"].update(seed=seed, steps=steps)
    prompt["10"] = {"class_type": "CaptureAny", "inputs": {"value": ["8", 0]}}
    return prompt


def text_to_image(ckpt: str, positive: dict, negative: dict, seed: int = 1, steps: int = 2, size: int = SMALL) -> dict:
    """A small API prompt: loader, two encoders (their inputs given), empty latent, KSampler, decode."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {**positive, "inputs": {**positive["inputs"], "clip": ["1", 1]}},
        "3": {**negative, "inputs": {**negative["inputs"], "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "CaptureAny", "inputs": {"value": ["6", 0]}},
    }


def encode(text: str) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text}}


def loader_only(ckpt: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "CaptureAny", "inputs": {"value": ["1", 0]}}}


def record_unet_inputs(model) -> list:
    """Every (x, kwargs) the UNet is called with, through a forward pre-hook."""
    calls = []
    model.model.diffusion_model.register_forward_pre_hook(lambda _m, args, kwargs: calls.append((args[0].clone(), dict(kwargs))),
                                         with_kwargs=True)
    return calls


# ---------------------------------------------------------------------------------------------
# the shared workflows through the command line


def test_sd15_api_workflow_through_the_command_line(tmp_path, tiny_checkpoint):
    workflow = json.loads(SD15_API.read_text())
    place_checkpoint(tmp_path, tiny_checkpoint("sd15"), workflow["4"]["inputs"]["ckpt_name"])
    proc = run_cli(tmp_path, SD15_API)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [png] = written_pngs(proc)
    assert png.parent == tmp_path / "output" and png.name.startswith("LatentGraph_")
    with Image.open(png) as img:
        latent = workflow["5"]["inputs"]
        assert img.size == (latent["width"] // 8 * TINY_VAE_SCALE, latent["height"] // 8 * TINY_VAE_SCALE)
        saved_prompt = json.loads(img.text["prompt"])
        assert "workflow" not in img.text  # an API prompt carries no editor workflow
    assert saved_prompt["6"]["inputs"]["text"] == "a photograph of an astronaut riding a horse"
    assert {k: v["class_type"] for k, v in saved_prompt.items()} == {k: v["class_type"] for k, v in workflow.items()}
    assert_real_image(pixels(png))


def test_sdxl_ui_workflow_through_the_command_line(tmp_path, tiny_checkpoint):
    workflow = json.loads(SDXL_UI.read_text())
    [loader] = [n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    [latent] = [n for n in workflow["nodes"] if n["type"] == "EmptyLatentImage"]
    [positive] = [n for n in workflow["nodes"] if n.get("title") == "Positive Prompt"]
    place_checkpoint(tmp_path, tiny_checkpoint("sdxl"), loader["widgets_values"][0])
    proc = run_cli(tmp_path, SDXL_UI)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [png] = written_pngs(proc)
    assert png.name.startswith("sdxl_simple_")
    with Image.open(png) as img:
        assert img.size == tuple(side // 8 * TINY_VAE_SCALE for side in latent["widgets_values"][:2])
        saved_prompt = json.loads(img.text["prompt"])
        saved_workflow = json.loads(img.text["workflow"])
    assert saved_prompt[str(positive["id"])]["inputs"]["text"] == positive["widgets_values"][0]
    assert saved_workflow["id"] == workflow["id"]
    assert sorted(n["id"] for n in saved_workflow["nodes"]) == sorted(n["id"] for n in workflow["nodes"])
    assert_real_image(pixels(png))


# ---------------------------------------------------------------------------------------------
# determinism and caching through the engine's API


@pytest.fixture
def sd15_base(tmp_path, tiny_checkpoint):
    place_checkpoint(tmp_path, tiny_checkpoint("sd15"), "v1-5-pruned-emaonly.safetensors")
    return tmp_path


def test_same_seed_gives_bit_identical_images_in_fresh_runtimes(tmp_path, tiny_checkpoint):
    images = []
    for name in ("first", "second"):
        base = tmp_path / name
        place_checkpoint(base, tiny_checkpoint("sd15"), "v1-5-pruned-emaonly.safetensors")
        rt, captured = capturing_runtime(base)
        run(rt, small_sd15_prompt(seed=42))
        [image] = captured
        images.append(image)
    assert images[0].shape == (1, SMALL_IMAGE, SMALL_IMAGE, 3)
    assert_real_image(images[0])
    assert torch.equal(images[0], images[1])


def test_another_seed_gives_another_image(sd15_base):
    rt, captured = capturing_runtime(sd15_base)
    run(rt, small_sd15_prompt(seed=42))
    run(rt, small_sd15_prompt(seed=43))
    a, b = captured
    assert (a - b).abs().mean() > 1e-3


def test_rerun_executes_nothing_and_a_new_seed_reruns_only_sampler_decode_and_save(sd15_base):
    rt, _ = capturing_runtime(sd15_base)
    first, _ = run(rt, small_sd15_prompt())
    assert sorted(first.executed) == sorted(small_sd15_prompt())
    again, events = run(rt, small_sd15_prompt())
    assert again.executed == []
    assert ("execution_cached", sorted(small_sd15_prompt())) in [(e, d.get("nodes")) for e, d in events]
    reseeded, events = run(rt, small_sd15_prompt(seed=1234))
    assert sorted(reseeded.executed) == ["10", "3", "8", "9"]  # KSampler, VAEDecode, SaveImage, capture
    cached = [d["nodes"] for e, d in events if e == "execution_cached"]
    assert cached == [["4", "5", "6", "7"]]
    assert [d["node"] for e, d in events if e == "executing" and d.get("node")] == ["3", "8", "9", "10"]


@pytest.mark.parametrize("flags, nhwc", [(("--bf16-unet",), True), (("--force-fp32",), False)])
def test_a_loaded_unet_keeps_its_conv_layout_for_the_cpu(sd15_base, flags, nhwc):
    """The re-layout for the CPU happens once when the checkpoint loads (never per forward): NHWC
    in a reduced precision; NCHW, ComfyUI's layout and order of sums, in fp32."""
    rt, captured = capturing_runtime(sd15_base, *flags)
    run(rt, loader_only("v1-5-pruned-emaonly.safetensors"))
    convs = [m for m in captured[0].model.diffusion_model.modules() if isinstance(m, torch.nn.Conv2d)]
    spatial = [c for c in convs if c.kernel_size != (1, 1)]   # a 1x1 kernel is laid out both ways
    assert spatial and all(c.weight.is_contiguous(memory_format=torch.channels_last) == nhwc for c in spatial)
    assert all(c.weight.is_contiguous() != nhwc for c in spatial)


def test_a_cpu_with_native_bf16_samples_and_decodes_in_bf16_and_force_fp32_is_exact(sd15_base, monkeypatch):
    """Default precision on a bf16 CPU: UNet and VAE weights bf16, the text encoder fp16 (computed in
    fp32, as on any CPU), an image close to the fp32 one; --force-fp32 gives the fp32 pixels bit
    for bit."""
    def image_and_parts(*flags):
        rt, captured = capturing_runtime(sd15_base, *flags)
        prompt = small_sd15_prompt(seed=42)
        prompt["11"] = {"class_type": "CaptureAny", "inputs": {"value": ["4", 0]}}
        prompt["12"] = {"class_type": "CaptureAny", "inputs": {"value": ["4", 1]}}
        prompt["13"] = {"class_type": "CaptureAny", "inputs": {"value": ["4", 2]}}
        run(rt, prompt)
        by_type = {type(v).__name__: v for v in captured}
        dtypes = (next(by_type["ModelPatcher"].model.diffusion_model.parameters()).dtype,
                  next(by_type["CLIP"].cond_stage_model.parameters()).dtype,
                  next(by_type["VAE"].first_stage_model.parameters()).dtype)
        [image] = [v for v in captured if isinstance(v, torch.Tensor)]
        return image, dtypes

    fp32, fp32_dtypes = image_and_parts()   # the suite pins the probe to "no native bf16"
    assert fp32_dtypes == (torch.float32, torch.float16, torch.float32)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    bf16, bf16_dtypes = image_and_parts()
    assert bf16_dtypes == (torch.bfloat16, torch.float16, torch.bfloat16)
    assert_real_image(bf16)
    mse = float(((bf16.float() - fp32.float()) ** 2).mean())
    assert 0 < mse and 10 * math.log10(1 / mse) > 25, mse   # PSNR over 0..1 pixels
    forced, forced_dtypes = image_and_parts("--force-fp32")
    assert forced_dtypes == fp32_dtypes and torch.equal(forced, fp32)


def test_checkpoint_cache_hits_on_the_same_file_and_frees_the_old_model_on_a_switch(sd15_base, tiny_checkpoint):
    place_checkpoint(sd15_base, tiny_checkpoint("sd21_v"), "v2-1_768-ema-pruned.safetensors")
    # Without the node-output cache the loader node really runs each time and asks the ModelCache.
    rt, captured = capturing_runtime(sd15_base, "--cache-none")
    service = rt.env.models
    run(rt, loader_only("v1-5-pruned-emaonly.safetensors"))
    run(rt, loader_only("v1-5-pruned-emaonly.safetensors"))
    assert (service.cache_misses, service.cache_hits, service.cached_count()) == (1, 1, 1)
    assert captured[0] is captured[1]
    old = weakref.ref(captured[0].model.diffusion_model)
    captured.clear()
    run(rt, loader_only("v2-1_768-ema-pruned.safetensors"))
    assert (service.cache_misses, service.cache_hits, service.cached_count()) == (2, 1, 1)
    assert captured[0].get_model_object("model_sampling").prediction == "v_prediction"
    captured.clear()
    gc.collect()
    assert old() is None, "the SD1.5 UNet is still alive after switching checkpoints"


# ---------------------------------------------------------------------------------------------
# the other families


def test_sd21_v_checkpoint_denoises_with_the_v_prediction_formula(tmp_path, tiny_checkpoint):
    place_checkpoint(tmp_path, tiny_checkpoint("sd21_v"), "sd21_v.safetensors")
    rt, captured = capturing_runtime(tmp_path)
    prompt = text_to_image("sd21_v.safetensors", encode("a lighthouse"), encode("fog"))
    prompt["8"] = {"class_type": "CaptureAny", "inputs": {"value": ["1", 0]}}
    prompt["9"] = {"class_type": "CaptureAny", "inputs": {"value": ["2", 0]}}
    run(rt, prompt)
    by_type = {type(v).__name__: v for v in captured}
    image, patcher, [[cond, _]] = by_type["Tensor"], by_type["ModelPatcher"], by_type["list"]
    model = patcher.model
    assert image.shape == (1, SMALL_IMAGE, SMALL_IMAGE, 3)
    assert_real_image(image)
    assert cond.shape[-1] == 1024  # OpenCLIP ViT-H width
    # x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1), with v the UNet's output at c_in * x
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([2.5])
    with torch.inference_mode():
        got = model.apply_model(x, sigma, c_crossattn=cond)
        t = model.model_sampling.timestep(sigma).float()
        v = model.diffusion_model(x / math.sqrt(2.5 ** 2 + 1), t, context=cond).float()
    expected = x / (2.5 ** 2 + 1) - v * 2.5 / math.sqrt(2.5 ** 2 + 1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    eps_x0 = x - 2.5 * v  # what an eps reading of the same output would give
    assert (got - eps_x0).abs().max() > 0.1


def sinusoid(value: float, dim: int = 256) -> torch.Tensor:
    """diffusers' get_timestep_embedding with SDXL's settings (cos first, no frequency shift)."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(torch.tensor([value]), dim, flip_sin_to_cos=True, downscale_freq_shift=0)[0]


def test_sdxl_refiner_gets_the_aesthetic_score_in_its_adm_vector(tmp_path, tiny_checkpoint):
    place_checkpoint(tmp_path, tiny_checkpoint("sdxl_refiner"), "refiner.safetensors")
    rt, captured = capturing_runtime(tmp_path)
    refine = {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {"width": 64, "height": 64}}
    positive = {**refine, "inputs": {**refine["inputs"], "ascore": 6.0, "text": "a castle"}}
    negative = {**refine, "inputs": {**refine["inputs"], "ascore": 2.5, "text": "blurry"}}
    prompt = text_to_image("refiner.safetensors", positive, negative)
    run(rt, loader_only("refiner.safetensors"))
    [model] = captured
    unet_calls = record_unet_inputs(model)
    prompt["8"] = {"class_type": "CaptureAny", "inputs": {"value": ["2", 0]}}
    prompt["9"] = {"class_type": "CaptureAny", "inputs": {"value": ["3", 0]}}
    run(rt, prompt)
    conds = {id(c): c for c in captured[1:] if isinstance(c, list)}
    assert len(conds) == 2 and len(unet_calls) >= 2
    image = [c for c in captured if isinstance(c, torch.Tensor)][0]
    assert_real_image(image)
    # ComfyUI's refiner adm: pooled (1280) + sinusoids of [height, width, crop_h, crop_w, ascore]
    expected = []
    for [[_, extras]] in conds.values():
        assert extras["pooled_output"].shape == (1, 1280)
        scalars = [64, 64, 0, 0, extras["aesthetic_score"]]
        expected.append(torch.cat([extras["pooled_output"][0]] + [sinusoid(s) for s in scalars]))
    assert not torch.equal(expected[0], expected[1])  # the scores differ, so the vectors must
    rows = torch.cat([kwargs["y"].float() for _, kwargs in unet_calls])
    assert rows.shape[1] == 2560
    for want in expected:
        matches = [(row - want).abs().max().item() < 1e-4 for row in rows]
        assert any(matches), "no UNet call carried the expected adm vector"


def test_inpainting_checkpoint_with_a_plain_empty_latent_gets_comfyuis_blank_concat(tmp_path, tiny_checkpoint):
    place_checkpoint(tmp_path, tiny_checkpoint("sd15_inpaint"), "inpaint.safetensors")
    rt, captured = capturing_runtime(tmp_path)
    run(rt, loader_only("inpaint.safetensors"))
    [model] = captured
    unet_calls = record_unet_inputs(model)
    run(rt, text_to_image("inpaint.safetensors", encode("a red door"), encode("")))
    image = captured[1]
    assert image.shape == (1, SMALL_IMAGE, SMALL_IMAGE, 3)
    assert_real_image(image)
    assert unet_calls
    blank = torch.tensor(COMFY_BLANK_INPAINT_LATENT).view(1, 4, 1, 1)
    for x, _ in unet_calls:
        assert x.shape[1] == 9 and x.shape[-2:] == (8, 8)
        assert torch.equal(x[:, 4:5].float(), torch.ones_like(x[:, 4:5]).float())
        torch.testing.assert_close(x[:, 5:].float(), blank.expand(x.shape[0], 4, 8, 8), rtol=0, atol=1e-6)
