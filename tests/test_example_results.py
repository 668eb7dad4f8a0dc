"""examples/render_results.py: the examples' pictures on the built-in model. It runs the chosen
examples through the command line's code into a folder, draws their input pictures (with the
mask where one is needed), scales sizes with the same function as tests/test_examples.py, and
keeps examples/README.md's Results table and examples/results/ in step with its plans.

What the pictures look like is not checked: the built-in model is being retrained."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from examples import render_results, scaling
from tests import test_examples
from tests.paths import REPO

pytestmark = pytest.mark.usefixtures("builtin_models")
EXAMPLES = REPO / "examples"


def test_render_writes_each_result_and_its_drawn_input(tmp_path):
    err = io.StringIO()
    written = render_results.render(["inpaint", "outpaint", "custom_sampling"], tmp_path, err=err)
    assert written == {name: tmp_path / f"{name}.png" for name in ("inpaint", "outpaint", "custom_sampling")}
    sizes = {p.name: Image.open(p).size for p in tmp_path.iterdir()}
    # outpaint: 256 pixels added to a 512 picture -> 32 added to the drawn 64; custom_sampling: 256 -> 64
    assert sizes == {"inpaint.png": (64, 64), "inpaint_input.png": (64, 64), "outpaint.png": (96, 64),
                     "outpaint_input.png": (64, 64), "custom_sampling.png": (64, 64)}
    # the inpaint input is transparent exactly over the shape's box and a margin (Load Image's MASK)
    scene = render_results.PLANS["inpaint"].input
    alpha = np.asarray(Image.open(tmp_path / "inpaint_input.png"))[..., 3]
    cx, cy, side = scene.box()
    half = side / 2 + render_results.MASK_MARGIN
    ys, xs = np.nonzero(alpha == 0)
    assert set(np.unique(alpha)) == {0, 255}
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (cx - half, cx + half, cy - half, cy + half)
    assert Image.open(tmp_path / "outpaint_input.png").mode == "RGB"  # no mask: ImagePadForOutpaint makes it
    log = err.getvalue()
    assert "node 3 ImagePadForOutpaint.right: 256 -> 32" in log
    assert "node 4 EmptyLatentImage.width: 256 -> 64" in log
    assert "node 1 CheckpointLoaderSimple.ckpt_name: 'v1-5-pruned-emaonly-fp16.safetensors' -> " \
           f"'{render_results.BUILTIN}'" in log
    assert log.count("Prompt executed in") == 3


def test_an_example_without_a_counterpart_is_refused(tmp_path):
    with pytest.raises(ValueError, match="controlnet: no picture on the built-in model: a ControlNet"):
        render_results.render(["controlnet"], tmp_path)


def test_the_script_and_the_example_tests_scale_with_one_function():
    assert render_results.scale_pixels is scaling.scale_pixels is test_examples.scale_pixels
    assert test_examples.SCALE == scaling.SCALE
    for name, plan in render_results.PLANS.items():
        if plan.no_picture or plan.factor == 1:
            continue
        shipped = json.loads((EXAMPLES / f"{name}.json").read_text())
        adapted = render_results.adapt(name, shipped, plan)
        scaled = scaling.scale_pixels(shipped, plan.factor)
        for node_id, node in scaled.items():
            for key in scaling.PIXEL_INPUTS & set(node["inputs"]):
                assert adapted[node_id]["inputs"][key] == node["inputs"][key], (name, node_id, key)
        if name not in test_examples.UNSCALED and plan.factor == scaling.SCALE:
            tested = test_examples.scaled_copy(name, shipped)
            assert all(tested[i]["inputs"].get(k) == n["inputs"][k] for i, n in scaled.items()
                       for k in scaling.PIXEL_INPUTS & set(n["inputs"])), name


def test_scale_pixels_divides_sizes_and_keeps_the_smallest_tile():
    prompt = {"1": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["2", 0], "tile_size": 256, "overlap": 64,
                                                               "temporal_size": 64}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 384, "batch_size": 4}}}
    scaled = scaling.scale_pixels(prompt, 8)
    assert scaled["1"]["inputs"] == {"samples": ["2", 0], "tile_size": 64, "overlap": 8, "temporal_size": 64}
    assert scaled["2"]["inputs"] == {"width": 64, "height": 48, "batch_size": 4}
    assert prompt["2"]["inputs"]["width"] == 512  # a copy


def test_every_example_has_a_plan_and_the_readme_and_results_folder_match_them():
    assert set(render_results.PLANS) == {p.stem for p in EXAMPLES.glob("*.json")}
    readme = (EXAMPLES / "README.md").read_text()
    assert render_results.results_table() in readme, "run python examples/render_results.py"
    assert "meant for a real SD1.5 checkpoint" in readme
    results = EXAMPLES / "results"
    expected = set()
    for name, plan in render_results.PLANS.items():
        if not plan.no_picture:
            expected |= {f"{name}.png"} | ({f"{name}_input.png"} if plan.input else set())
    assert {p.name for p in results.iterdir()} == expected
    assert sum(p.stat().st_size for p in results.iterdir()) < 300_000
