"""The shipped example workflows (examples/): every file they need ships, they share one checkpoint
name with the editor's default workflow, the command line finds their input images beside them,
and every one of them runs end to end through `main.py run` on tiny random-weight models.

The examples are sized for a real SD1.5 checkpoint (512 pixels, 20 steps); on tiny models that
would still take minutes on a CPU, so the end-to-end run uses copies with every pixel size divided
by 8 and 2 steps, next to their input pictures scaled the same way. Graph, node types, file names
and the checkpoint name are the shipped ones."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.cli import UPLOAD_OPTIONS
from examples.scaling import SCALE, scale_pixels
from tests.paths import REPO, SHARED
from tests.test_controlnet import tiny_sd15_controlnet_sd
from tests.upscale_models_tiny import real_esrgan_state_dict

EXAMPLES = REPO / "examples"
pytestmark = pytest.mark.usefixtures("builtin_models")  # shapes_txt2img runs on the built-in model
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
UPSCALER = "RealESRGAN_x4plus.pth"
OBJECT_INFO = json.loads((SHARED / "spec" / "object_info_full.json").read_text())  # ComfyUI's
# example -> the size of its saved picture at 1/8 scale
OUTPUTS = {"hello_image": (64, 64), "img2img": (64, 64), "inpaint": (64, 64), "outpaint": (96, 64),
           "controlnet": (64, 64), "hires_fix_upscale_model": (128, 96), "tiled_vae": (128, 128),
           "custom_sampling": (32, 32), "freeu_pag": (32, 32), "model_merging": (32, 32),
           "shapes_txt2img": (64, 64)}
BUILTIN = "latentgraph-shapes-64.safetensors"  # models_builtin/: the shapes example's own model
SECOND = "other_sd15_model.safetensors"  # model_merging's second checkpoint
UNSCALED = {"shapes_txt2img"}  # sized for the built-in model already (64 pixels)


def examples() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))}


def input_files(prompt: dict) -> set[str]:
    """Names of input/ files the prompt's upload widgets (Load Image, ...) refer to."""
    names = set()
    for node in prompt.values():
        declared = OBJECT_INFO.get(node["class_type"], {}).get("input", {}).get("required", {})
        for name, value in node["inputs"].items():
            spec = declared.get(name)
            if spec and len(spec) > 1 and any(spec[1].get(k) for k in UPLOAD_OPTIONS):
                names.add(value)
    return names


def model_names(prompt: dict, class_type: str, key: str) -> set[str]:
    return {n["inputs"][key] for n in prompt.values() if n["class_type"] == class_type}


def test_every_example_is_listed_and_has_its_files_and_one_checkpoint_name():
    found = examples()
    assert set(found) == set(OUTPUTS), "a new example needs a row in OUTPUTS (and examples/README.md)"
    readme = (EXAMPLES / "README.md").read_text()
    for name, prompt in found.items():
        assert f"{name}.json" in readme, f"examples/README.md does not describe {name}.json"
        for file in input_files(prompt):
            assert (EXAMPLES / file).is_file(), f"{name}.json needs {file}, which does not ship in examples/"
    checkpoints = set().union(*(model_names(p, "CheckpointLoaderSimple", "ckpt_name") for p in found.values()))
    assert checkpoints == {CHECKPOINT, SECOND, BUILTIN}
    assert model_names(found["shapes_txt2img"], "CheckpointLoaderSimple", "ckpt_name") == {BUILTIN}
    assert (REPO / "models_builtin" / BUILTIN).is_file()
    # the editor's default workflow names the same file, so one download serves both
    default = (REPO / "web" / "js" / "default_workflow.js").read_text()
    assert re.findall(r"v1-5[\w.-]*\.safetensors", default) == [CHECKPOINT]
    assert CHECKPOINT in (REPO / "README.md").read_text()


def scaled_copy(name: str, prompt: dict) -> dict:
    if name in UNSCALED:
        return prompt
    doc = scale_pixels(prompt, SCALE)
    for node in doc.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 2
    return doc


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_checkpoint):
    """A base directory with tiny stand-ins under the file names the examples load."""
    base = tmp_path_factory.mktemp("examples_base")
    ckpt = tiny_checkpoint("sd15")
    target = base / "models" / "checkpoints" / CHECKPOINT
    target.parent.mkdir(parents=True)
    try:
        os.link(ckpt, target)
    except OSError:
        shutil.copy(ckpt, target)
    from tests.test_example_patches_merging import other_unet
    save_file(other_unet(target), str(target.parent / SECOND))
    (base / "models" / "controlnet").mkdir(parents=True)
    save_file(tiny_sd15_controlnet_sd(ckpt, seed=3), str(base / "models" / "controlnet" / CONTROLNET))
    (base / "models" / "upscale_models").mkdir(parents=True)
    # wrapped in "params_ema", as the published Real-ESRGAN file is
    torch.save({"params_ema": real_esrgan_state_dict(4)}, base / "models" / "upscale_models" / UPSCALER)
    return base


def run_cli(base: Path, *files: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(base), "--cpu",
                           *map(str, files)], capture_output=True, text=True, timeout=timeout, cwd=base)


def test_every_example_runs_end_to_end_on_tiny_models(base, tmp_path):
    work = tmp_path / "examples"
    work.mkdir()
    files = []
    for name, prompt in examples().items():
        doc = scaled_copy(name, prompt)
        (work / f"{name}.json").write_text(json.dumps(doc))
        files.append(work / f"{name}.json")
        for picture in input_files(prompt):
            with Image.open(EXAMPLES / picture) as img:
                img.resize((img.width // SCALE, img.height // SCALE)).save(work / picture)
    # the ControlNet's effect: the same graph with the plain prompts gives another picture
    plain = json.loads((work / "controlnet.json").read_text())
    sampler = next(n for n in plain.values() if n["class_type"] == "KSampler")
    sampler["inputs"].update(positive=["4", 0], negative=["5", 0])
    next(n for n in plain.values() if n["class_type"] == "SaveImage")["inputs"]["filename_prefix"] = "plain"
    (work / "plain.json").write_text(json.dumps(plain))

    proc = run_cli(base, *files, work / "plain.json")
    for picture in ("example_input.png", "controlnet_hint.png"):  # found beside the workflow, once
        assert proc.stderr.count(f"copied {work / picture} into the input folder") == 1, proc.stderr
    assert proc.stderr.count("Prompt executed in") == len(files) + 1, proc.stderr
    by_prefix = {p.name.rsplit("_", 2)[0]: p for p in map(Path, proc.stdout.split())}
    problems = []
    for name, size in OUTPUTS.items():
        prefix = next(n["inputs"]["filename_prefix"] for n in examples()[name].values() if n["class_type"] == "SaveImage")
        saved = by_prefix.get(prefix if isinstance(prefix, str) else "hello_latentgraph")
        if saved is None:
            problems.append(f"{name}.json saved nothing")
            continue
        with Image.open(saved) as img:
            if img.size != size or not json.loads(img.text["prompt"]):  # the workflow rides along
                problems.append(f"{name}.json saved a {img.size} picture, expected {size}")
    assert not problems and proc.returncode == 0, "\n".join(problems) + "\n" + proc.stderr
    controlled = np.asarray(Image.open(by_prefix["controlnet"]))
    assert not np.array_equal(np.asarray(Image.open(by_prefix["plain"])), controlled)


def test_examples_straight_from_the_folder_find_their_pictures_and_name_missing_models(tmp_path):
    """On a fresh base directory: the pictures are copied into input/, and what fails is only the
    models, each error naming the folder to put the file in."""
    proc = run_cli(tmp_path, *sorted(EXAMPLES.glob("*.json")), timeout=300)
    assert proc.returncode == 1
    # hello_image needs no model, shapes_txt2img the built-in one
    assert f"2 of {len(OUTPUTS)} workflow(s) succeeded" in proc.stderr
    for picture in ("example_input.png", "controlnet_hint.png"):
        assert (tmp_path / "input" / picture).read_bytes() == (EXAMPLES / picture).read_bytes()
    assert "Invalid image file" not in proc.stderr
    models = tmp_path / "models"
    # the list holds the built-in model only; the hint names the folder to put the file in
    assert proc.stderr.count(f"ckpt_name: '{CHECKPOINT}' not in ['{BUILTIN}'] (files listed from "
                             f"{models / 'checkpoints'}") == 9
    assert proc.stderr.count(f"put it in {models / 'checkpoints'} and try again") == 10
    assert f"no files in the controlnet folder {models / 'controlnet'}" in proc.stderr
    assert f"no files in the upscale_models folder {models / 'upscale_models'}" in proc.stderr
    assert "Traceback" not in proc.stderr
