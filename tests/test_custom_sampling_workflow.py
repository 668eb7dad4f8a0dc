"""Custom sampling end to end on a tiny random-weight SD1.5 checkpoint: the shipped example workflow
(examples/custom_sampling.json: RandomNoise, CFGGuider, SamplerEulerAncestral, BasicScheduler,
SamplerCustomAdvanced) from the command line, and its equivalence with KSampler: the same seed,
sampler, scheduler, steps and cfg give a bit-identical latent, as in ComfyUI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import make_runtime
from tests.node_helpers import call_in_context

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "custom_sampling.json"
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"


def place_checkpoint(base: Path, tiny_checkpoint) -> None:
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.link(tiny_checkpoint("sd15"), folder / CHECKPOINT)
    except OSError:
        shutil.copy(tiny_checkpoint("sd15"), folder / CHECKPOINT)


def test_example_runs_from_the_command_line(tmp_path, tiny_checkpoint):
    place_checkpoint(tmp_path, tiny_checkpoint)
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(tmp_path), "--cpu",
                           str(EXAMPLE)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    assert [p.name for p in written] == ["custom_sampling_00001_.png"]
    with Image.open(written[0]) as img:
        assert img.size == (256, 256)
        prompt = json.loads(img.text["prompt"])
    assert prompt["9"]["class_type"] == "SamplerCustomAdvanced"


@pytest.fixture(scope="module")
def rt(tmp_path_factory, tiny_checkpoint):
    base = tmp_path_factory.mktemp("custom_sampling")
    place_checkpoint(base, tiny_checkpoint)
    return make_runtime(base, "--cpu")


def node(rt, name: str, **inputs):
    return call_in_context(rt.registry, name, **inputs)


def test_custom_sampling_gives_ksamplers_latent(rt):
    example = json.loads(EXAMPLE.read_text())
    seed, cfg = example["5"]["inputs"]["noise_seed"], example["6"]["inputs"]["cfg"]
    scheduler, steps = example["8"]["inputs"]["scheduler"], example["8"]["inputs"]["steps"]
    model, clip, _ = node(rt, "CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    positive, = node(rt, "CLIPTextEncode", text=example["2"]["inputs"]["text"], clip=clip)
    negative, = node(rt, "CLIPTextEncode", text=example["3"]["inputs"]["text"], clip=clip)
    latent, = node(rt, "EmptyLatentImage", width=64, height=64, batch_size=2)
    noise, = node(rt, "RandomNoise", noise_seed=seed)
    guider, = node(rt, "CFGGuider", model=model, positive=positive, negative=negative, cfg=cfg)
    sampler, = node(rt, "SamplerEulerAncestral", eta=1.0, s_noise=1.0)
    sigmas, = node(rt, "BasicScheduler", model=model, scheduler=scheduler, steps=steps, denoise=1.0)
    with torch.inference_mode():
        custom, denoised = node(rt, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler,
                                sigmas=sigmas, latent_image=latent)
        classic, = node(rt, "KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler_ancestral",
                        scheduler=scheduler, positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    assert torch.equal(custom["samples"], classic["samples"])
    assert custom["samples"].shape == (2, 4, 8, 8) and torch.isfinite(custom["samples"]).all()
    # euler_ancestral's last step (to sigma 0) is the x0 estimate, reported as denoised_output
    assert torch.allclose(denoised["samples"], custom["samples"], atol=1e-5)
