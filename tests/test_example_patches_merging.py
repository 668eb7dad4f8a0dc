"""The model-merging and FreeU + PAG example workflows, end to end through the command line on the
tiny SD1.5-layout checkpoint (and, for merging, a second checkpoint holding only a UNet of the
same shape with other weights), plus the merge they ask for checked on the loaded weights."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion.model_management import load_models_gpu
from tests.conftest import make_runtime
from tests.node_helpers import call_in_context
from tests.paths import REPO
from tests.test_custom_sampling_workflow import CHECKPOINT as FIRST
from tests.test_custom_sampling_workflow import place_checkpoint

EXAMPLES = REPO / "examples"
OUTPUTS = {"model_merging": "model_merging_00001_.png", "freeu_pag": "freeu_pag_00001_.png"}
SECOND = "other_sd15_model.safetensors"


def other_unet(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A UNet of the checkpoint's shape with other weights (a second model to merge with)."""
    gen = torch.Generator().manual_seed(21)
    with safe_open(str(checkpoint), "pt") as f:
        unet = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}  # noqa: SIM118
    return {k: (v + 0.5 * v.float().std().nan_to_num(0.1) * torch.randn(v.shape, generator=gen)).contiguous()
            for k, v in unet.items()}


def place_checkpoints(base: Path, tiny_checkpoint) -> None:
    place_checkpoint(base, tiny_checkpoint)  # the tiny SD1.5 file as FIRST
    folder = base / "models" / "checkpoints"
    save_file(other_unet(folder / FIRST), str(folder / SECOND))


def test_merging_and_freeu_pag_examples_run_from_the_command_line(tmp_path, tiny_checkpoint):
    place_checkpoints(tmp_path, tiny_checkpoint)
    files = [str(EXAMPLES / f"{name}.json") for name in OUTPUTS]
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(tmp_path), "--cpu",
                           *files], capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    assert [p.name for p in written] == list(OUTPUTS.values())
    for path, name in zip(written, OUTPUTS):
        with Image.open(path) as img:
            assert img.size == (256, 256)
            prompt = json.loads(img.text["prompt"])
        assert prompt == json.loads((EXAMPLES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def rt(tmp_path_factory, tiny_checkpoint):
    base = tmp_path_factory.mktemp("merging_example")
    place_checkpoints(base, tiny_checkpoint)
    return make_runtime(base, "--cpu")


def test_the_merge_example_loads_each_parts_weighted_sum(rt):
    example = json.loads((EXAMPLES / "model_merging.json").read_text())
    ratios = {k: example["3"]["inputs"][k] for k in ("input", "middle", "out")}
    a, _, _ = call_in_context(rt.registry, "CheckpointLoaderSimple", ckpt_name=FIRST)
    b, clip_b, vae_b = call_in_context(rt.registry, "CheckpointLoaderSimple", ckpt_name=SECOND)
    assert clip_b is None and vae_b is None  # a UNet-only file
    wa = {k: v.clone() for k, v in a.model.state_dict().items()}
    wb = {k: v.clone() for k, v in b.model.state_dict().items()}
    (merged,) = call_in_context(rt.registry, "ModelMergeBlocks", model1=a, model2=b, **ratios)
    load_models_gpu([merged])
    got = merged.model.state_dict()
    for key, ratio in (("diffusion_model.input_blocks.1.0.in_layers.2.weight", ratios["input"]),
                       ("diffusion_model.middle_block.1.proj_in.weight", ratios["middle"]),
                       ("diffusion_model.output_blocks.0.0.out_layers.3.weight", ratios["out"]),
                       ("diffusion_model.out.2.bias", ratios["out"]),
                       ("diffusion_model.time_embed.0.weight", ratios["input"])):
        assert torch.equal(got[key], wa[key] * ratio + (1.0 - ratio) * wb[key]), key
    load_models_gpu([a])
    assert all(torch.equal(v, wa[k]) for k, v in a.model.state_dict().items())
