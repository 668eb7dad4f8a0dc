"""The hires-fix (upscale model) and tiled-VAE example workflows, end to end through the command
line, on the tiny SD1.5-layout checkpoint and a small Real-ESRGAN-layout x4 upscaler written as
RealESRGAN_x4plus.pth (wrapped in "params_ema", as the published file is)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from tests.paths import REPO
from tests.upscale_models_tiny import real_esrgan_state_dict

EXAMPLES = REPO / "examples"
# file -> (saved image name, its size): hires fix is 64x48 -> x4 model -> x0.5 = 128x96
OUTPUTS = {"hires_fix_upscale_model": ("hires_fix_00001_.png", (128, 96)),
           "tiled_vae": ("tiled_vae_00001_.png", (160, 128))}


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)


def test_hires_fix_and_tiled_vae_examples_run_from_the_command_line(tmp_path, tiny_checkpoint):
    _place(tiny_checkpoint("sd15"), tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    upscalers = tmp_path / "models" / "upscale_models"
    upscalers.mkdir(parents=True)
    torch.save({"params_ema": real_esrgan_state_dict(4)}, upscalers / "RealESRGAN_x4plus.pth")
    (tmp_path / "input").mkdir()
    shutil.copy(EXAMPLES / "example_input.png", tmp_path / "input" / "example_input.png")

    files = [str(EXAMPLES / f"{name}.json") for name in OUTPUTS]
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(tmp_path), "--cpu",
                           *files], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    assert [p.name for p in written] == [name for name, _ in OUTPUTS.values()]
    for path, (_, size) in zip(written, OUTPUTS.values()):
        with Image.open(path) as img:
            assert img.size == size, path.name
            assert json.loads(img.text["prompt"])  # the workflow rides along, as from any SaveImage
