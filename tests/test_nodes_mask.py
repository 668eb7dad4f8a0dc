"""Mask nodes and masked compositing against hand-worked answers, through the node registry."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from graph.errors import PromptError
from graph.executor import Executor
from graph.validation import validate_prompt
from tests.node_helpers import builtin_registry, call_in_context as call

REPO = Path(__file__).resolve().parent.parent
MAXRES = 16384


@pytest.fixture
def registry(tmp_path):
    return builtin_registry(tmp_path)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# -- declarations ------------------------------------------------------------------------------

DECLARED = {
    # name: (required inputs as (name, type or choices, default, min, max, step), optional, outputs)
    "LoadImageMask": ([("image", None, None, None, None, None),
                       ("channel", ["alpha", "red", "green", "blue"], None, None, None, None)], [], ["MASK"]),
    "SolidMask": ([("value", "FLOAT", 1.0, 0.0, 1.0, 0.01), ("width", "INT", 512, 1, MAXRES, 1),
                   ("height", "INT", 512, 1, MAXRES, 1)], [], ["MASK"]),
    "InvertMask": ([("mask", "MASK", None, None, None, None)], [], ["MASK"]),
    "MaskComposite": ([("destination", "MASK", None, None, None, None), ("source", "MASK", None, None, None, None),
                       ("x", "INT", 0, 0, MAXRES, 1), ("y", "INT", 0, 0, MAXRES, 1),
                       ("operation", ["multiply", "add", "subtract", "and", "or", "xor"], None, None, None, None)],
                      [], ["MASK"]),
    "GrowMask": ([("mask", "MASK", None, None, None, None), ("expand", "INT", 0, -MAXRES, MAXRES, 1),
                  ("tapered_corners", "BOOLEAN", True, None, None, None)], [], ["MASK"]),
    "FeatherMask": ([("mask", "MASK", None, None, None, None)]
                    + [(side, "INT", 0, 0, MAXRES, 1) for side in ("left", "top", "right", "bottom")], [], ["MASK"]),
    "CropMask": ([("mask", "MASK", None, None, None, None), ("x", "INT", 0, 0, MAXRES, 1),
                  ("y", "INT", 0, 0, MAXRES, 1), ("width", "INT", 512, 1, MAXRES, 1),
                  ("height", "INT", 512, 1, MAXRES, 1)], [], ["MASK"]),
    "ThresholdMask": ([("mask", "MASK", None, None, None, None), ("value", "FLOAT", 0.5, 0.0, 1.0, 0.01)],
                      [], ["MASK"]),
    "MaskToImage": ([("mask", "MASK", None, None, None, None)], [], ["IMAGE"]),
    "ImageToMask": ([("image", "IMAGE", None, None, None, None),
                     ("channel", ["red", "green", "blue", "alpha"], None, None, None, None)], [], ["MASK"]),
    "ImageCompositeMasked": ([("destination", "IMAGE", None, None, None, None),
                              ("source", "IMAGE", None, None, None, None), ("x", "INT", 0, 0, MAXRES, 1),
                              ("y", "INT", 0, 0, MAXRES, 1), ("resize_source", "BOOLEAN", False, None, None, None)],
                             ["mask"], ["IMAGE"]),
    "LatentCompositeMasked": ([("destination", "LATENT", None, None, None, None),
                               ("source", "LATENT", None, None, None, None), ("x", "INT", 0, 0, MAXRES, 8),
                               ("y", "INT", 0, 0, MAXRES, 8),
                               ("resize_source", "BOOLEAN", False, None, None, None)], ["mask"], ["LATENT"]),
}


# ComfyUI's classic menus; only these three have display names of their own.
DISPLAY = {"LoadImageMask": "Load Image (as Mask)", "MaskToImage": "Convert Mask to Image",
           "ImageToMask": "Convert Image to Mask"}
CATEGORY = {"ImageCompositeMasked": "image", "LatentCompositeMasked": "latent"}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_declarations_match_comfyui(registry, name):
    required, optional, outputs = DECLARED[name]
    info = registry.describe(name)[name]
    assert info["display_name"] == DISPLAY.get(name, name)
    assert info["category"] == CATEGORY.get(name, "mask")
    assert info["output"] == outputs and info["input_order"]["required"] == [r[0] for r in required]
    assert list(info["input"].get("optional", {})) == optional
    for input_name, kind, default, low, high, step in required:
        entry = info["input"]["required"][input_name]
        if isinstance(kind, list):
            assert entry[0] == kind
        elif kind is not None:
            assert entry[0] == kind
            options = entry[1] if len(entry) > 1 else {}
            for key, want in (("default", default), ("min", low), ("max", high), ("step", step)):
                if want is not None:
                    assert options[key] == want, (input_name, key)


# -- SolidMask, InvertMask, ThresholdMask ------------------------------------------------------


def test_solid_mask_is_one_mask_of_the_value(registry):
    (mask,) = call(registry, "SolidMask", value=0.25, width=3, height=2)
    assert mask.shape == (1, 2, 3) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.full((1, 2, 3), 0.25))


def test_invert_mask_keeps_the_shape(registry):
    (out,) = call(registry, "InvertMask", mask=t([[0.0, 0.25], [1.0, 0.5]]))
    assert torch.equal(out, t([[1.0, 0.75], [0.0, 0.5]]))


def test_threshold_is_strictly_greater(registry):
    (out,) = call(registry, "ThresholdMask", mask=t([[[0.2, 0.5, 0.51, 1.0]]]), value=0.5)
    assert torch.equal(out, t([[[0.0, 0.0, 1.0, 1.0]]]))


# -- MaskComposite -----------------------------------------------------------------------------

REGION = [[0.25, 0.75], [0.5, 1.0]]  # destination values under the source
SOURCE = [[0.5, 0.6], [1.0, 0.4]]
COMBINED = {  # worked by hand; boolean ops round first (0.5 rounds to 0) and everything is clamped
    "multiply": [[0.125, 0.45], [0.5, 0.4]],
    "add": [[0.75, 1.0], [1.0, 1.0]],
    "subtract": [[0.0, 0.15], [0.0, 0.6]],
    "and": [[0.0, 1.0], [0.0, 0.0]],
    "or": [[0.0, 1.0], [1.0, 1.0]],
    "xor": [[0.0, 0.0], [1.0, 1.0]],
}


@pytest.mark.parametrize("operation", sorted(COMBINED))
def test_mask_composite_operations_at_an_offset(registry, operation):
    destination = torch.full((3, 4), 0.3)
    destination[1:3, 2:4] = t(REGION)
    (out,) = call(registry, "MaskComposite", destination=destination, source=t(SOURCE), x=2, y=1,
                  operation=operation)
    expected = torch.full((1, 3, 4), 0.3)
    expected[0, 1:3, 2:4] = t(COMBINED[operation])
    assert out.shape == (1, 3, 4)
    assert torch.allclose(out, expected, atol=1e-6)


def test_mask_composite_clips_the_source_at_the_edges(registry):
    source = t([[1, 2, 3], [4, 5, 6], [7, 8, 9]]) / 10
    (out,) = call(registry, "MaskComposite", destination=torch.zeros(1, 4, 4), source=source, x=2, y=3,
                  operation="add")
    expected = torch.zeros(1, 4, 4)
    expected[0, 3, 2:4] = t([0.1, 0.2])  # only the source's top-left 1x2 lands on the destination
    assert torch.allclose(out, expected)
    (off,) = call(registry, "MaskComposite", destination=torch.zeros(4, 4), source=source, x=4, y=0,
                  operation="add")
    assert torch.equal(off, torch.zeros(1, 4, 4))
    (far,) = call(registry, "MaskComposite", destination=torch.zeros(4, 4), source=source, x=9, y=9,
                  operation="or")
    assert torch.equal(far, torch.zeros(1, 4, 4))


def test_mask_composite_clamps_the_whole_result(registry):
    (out,) = call(registry, "MaskComposite", destination=t([[1.5, -0.5]]), source=t([[0.0]]), x=0, y=0,
                  operation="add")
    assert torch.equal(out, t([[[1.0, 0.0]]]))


def test_mask_composite_broadcasts_one_mask_over_a_batch(registry):
    destination = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    (out,) = call(registry, "MaskComposite", destination=destination, source=t([[0.5]]), x=1, y=0,
                  operation="add")
    assert torch.allclose(out, t([[[0, 0.5], [0, 0]], [[1, 1], [1, 1]]]))
    sources = torch.stack([torch.full((1, 1), v) for v in (0.1, 0.2, 0.3)])
    (out,) = call(registry, "MaskComposite", destination=torch.zeros(1, 1, 2), source=sources, x=0, y=0,
                  operation="add")
    assert torch.allclose(out, t([[[0.1, 0]], [[0.2, 0]], [[0.3, 0]]]))
    with pytest.raises(ValueError, match="batches must match"):
        call(registry, "MaskComposite", destination=torch.zeros(2, 2, 2), source=sources, x=0, y=0,
             operation="add")


# -- GrowMask ----------------------------------------------------------------------------------


def _dot(size=7, value=1.0):
    mask = torch.zeros(1, size, size)
    mask[0, size // 2, size // 2] = value
    return mask


def test_grow_mask_tapered_grows_a_diamond_and_square_grows_a_square(registry):
    (diamond,) = call(registry, "GrowMask", mask=_dot(value=0.5), expand=2, tapered_corners=True)
    ys, xs = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    l1 = (ys - 3).abs() + (xs - 3).abs()
    assert torch.equal(diamond[0], torch.where(l1 <= 2, 0.5, 0.0))
    (square,) = call(registry, "GrowMask", mask=_dot(), expand=2, tapered_corners=False)
    chebyshev = torch.maximum((ys - 3).abs(), (xs - 3).abs())
    assert torch.equal(square[0], (chebyshev <= 2).float())


def test_grow_mask_negative_expand_erodes_but_not_from_the_image_border(registry):
    block = torch.zeros(2, 5, 5)
    block[0, 1:4, 1:4] = 1.0
    block[1] = 1.0
    (out,) = call(registry, "GrowMask", mask=block, expand=-1, tapered_corners=True)
    assert torch.equal(out[0], _dot(5)[0])  # the 3x3 block shrinks to its centre
    assert torch.equal(out[1], torch.ones(5, 5))  # the border counts as a mirror, not as zeros
    (same,) = call(registry, "GrowMask", mask=block[0], expand=0, tapered_corners=False)
    assert same.shape == (1, 5, 5) and torch.equal(same[0], block[0])


# -- FeatherMask -------------------------------------------------------------------------------


def test_feather_mask_ramps_each_edge(registry):
    (out,) = call(registry, "FeatherMask", mask=torch.ones(4, 6), left=2, top=1, right=3, bottom=4)
    columns = t([1 / 2, 1, 1, 1, 2 / 3, 1 / 3])  # left ramp 1/2, 1; right ramp ends at 1/3
    rows = t([1, 3 / 4, 2 / 4, 1 / 4])  # top=1 leaves row 0 alone; bottom=4 spans all rows
    assert out.shape == (1, 4, 6)
    assert torch.allclose(out[0], rows[:, None] * columns[None, :], atol=1e-6)


def test_feather_wider_than_the_mask_is_limited_to_its_width(registry):
    mask = torch.stack([torch.ones(1, 3), torch.full((1, 3), 0.5)])
    (out,) = call(registry, "FeatherMask", mask=mask, left=100, top=0, right=0, bottom=0)
    assert torch.allclose(out, t([[[1 / 3, 2 / 3, 1]], [[1 / 6, 1 / 3, 0.5]]]), atol=1e-6)


# -- CropMask, MaskToImage, ImageToMask --------------------------------------------------------


def test_crop_mask_clips_at_the_edge_and_rejects_an_outside_origin(registry):
    mask = torch.arange(20.0).reshape(4, 5)
    (out,) = call(registry, "CropMask", mask=mask, x=3, y=1, width=512, height=2)
    assert torch.equal(out, t([[[8, 9], [13, 14]]]))
    with pytest.raises(ValueError, match="outside"):
        call(registry, "CropMask", mask=mask, x=5, y=0, width=1, height=1)


def test_mask_to_image_and_back(registry):
    masks = torch.rand(2, 3, 4)
    (image,) = call(registry, "MaskToImage", mask=masks)
    assert image.shape == (2, 3, 4, 3)
    assert all(torch.equal(image[..., c], masks) for c in range(3))
    (single,) = call(registry, "MaskToImage", mask=masks[0])
    assert single.shape == (1, 3, 4, 3)
    rgba = torch.rand(2, 3, 4, 4)
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        (mask,) = call(registry, "ImageToMask", image=rgba, channel=channel)
        assert torch.equal(mask, rgba[..., index])
    with pytest.raises(ValueError, match="only 3 channels"):
        call(registry, "ImageToMask", image=rgba[..., :3], channel="alpha")


# -- ImageCompositeMasked / LatentCompositeMasked -----------------------------------------------


def test_image_composite_pastes_and_clips(registry):
    (out,) = call(registry, "ImageCompositeMasked", destination=torch.zeros(1, 4, 4, 3),
                  source=torch.ones(1, 2, 2, 3), x=3, y=2, resize_source=False)
    expected = torch.zeros(1, 4, 4, 3)
    expected[0, 2:4, 3] = 1.0
    assert torch.equal(out, expected)


def test_image_composite_mask_is_stretched_to_the_source(registry):
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1.0  # bilinear 4 -> 2 averages column pairs: left 1, right 0
    source = torch.ones(1, 2, 2, 3)
    (out,) = call(registry, "ImageCompositeMasked", destination=torch.zeros(1, 3, 3, 3), source=source,
                  x=1, y=1, resize_source=False, mask=mask)
    expected = torch.zeros(1, 3, 3, 3)
    expected[0, 1:3, 1] = 1.0
    assert torch.allclose(out, expected)
    (half,) = call(registry, "ImageCompositeMasked", destination=torch.zeros(1, 2, 2, 3), source=source,
                   x=0, y=0, resize_source=False, mask=torch.full((1, 2, 2), 0.25))
    assert torch.allclose(half, torch.full((1, 2, 2, 3), 0.25))


def test_image_composite_resizes_source_repeats_batches_and_fixes_alpha(registry):
    destination = torch.zeros(2, 4, 4, 4)
    source = torch.tensor([0.2, 0.4, 0.6]).expand(1, 1, 1, 3)
    (out,) = call(registry, "ImageCompositeMasked", destination=destination, source=source, x=0, y=0,
                  resize_source=True)
    assert out.shape == (2, 4, 4, 4)  # one source pixel stretched over the whole destination, twice
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.6, 1.0]).expand(2, 4, 4, 4))
    assert torch.equal(destination, torch.zeros(2, 4, 4, 4))  # the input is not written to


def test_latent_composite_places_at_pixels_over_eight(registry):
    mask = torch.ones(1, 2)
    destination = {"samples": torch.zeros(1, 4, 4, 4), "noise_mask": mask}
    source = {"samples": torch.ones(1, 4, 2, 2)}
    (out,) = call(registry, "LatentCompositeMasked", destination=destination, source=source, x=16, y=8,
                  resize_source=False)
    expected = torch.zeros(1, 4, 4, 4)
    expected[:, :, 1:3, 2:4] = 1.0
    assert torch.equal(out["samples"], expected) and out["noise_mask"] is mask
    assert torch.equal(destination["samples"], torch.zeros(1, 4, 4, 4))
    (edge,) = call(registry, "LatentCompositeMasked", destination=destination, source=source, x=30, y=0,
                   resize_source=False, mask=torch.full((2, 2), 0.5))
    expected = torch.zeros(1, 4, 4, 4)
    expected[:, :, 0:2, 3] = 0.5  # x=30 is latent column 3: one column visible, half weight
    assert torch.allclose(edge["samples"], expected)
    with pytest.raises(ValueError, match="16 channels and destination 4"):
        call(registry, "LatentCompositeMasked", destination=destination, source={"samples": torch.ones(1, 16, 2, 2)},
             x=0, y=0, resize_source=False)


# -- LoadImageMask -----------------------------------------------------------------------------


def _write_rgba(path, size=(3, 2)):
    img = Image.new("RGBA", size)
    img.putdata([(10 * i, 20 * i, 30 * i, 255 - 40 * i) for i in range(size[0] * size[1])])
    img.save(path)


def test_load_image_mask_channels(registry):
    _write_rgba(registry.env.folders.input_dir / "m.png")
    index = torch.arange(6.0).reshape(1, 2, 3)
    (alpha,) = call(registry, "LoadImageMask", image="m.png", channel="alpha")
    assert alpha.shape == (1, 2, 3)
    assert torch.allclose(alpha, 1 - (255 - 40 * index) / 255, atol=1e-6)  # inverted, as ComfyUI does
    for channel, scale in (("red", 10), ("green", 20), ("blue", 30)):
        (mask,) = call(registry, "LoadImageMask", image="m.png", channel=channel)
        assert torch.allclose(mask, scale * index / 255, atol=1e-6), channel


def test_load_image_mask_without_alpha_is_comfyuis_empty_mask(registry):
    Image.new("RGB", (5, 4), (255, 0, 0)).save(registry.env.folders.input_dir / "rgb.png")
    (alpha,) = call(registry, "LoadImageMask", image="rgb.png", channel="alpha")
    assert torch.equal(alpha, torch.zeros(1, 64, 64))
    (red,) = call(registry, "LoadImageMask", image="rgb.png", channel="red")
    assert torch.equal(red, torch.ones(1, 4, 5))


def _mask_graph(name, channel="alpha"):
    return {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": channel}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def test_load_image_mask_reruns_when_the_file_content_changes(registry):
    path = registry.env.folders.input_dir / "m.png"
    _write_rgba(path)
    executor = Executor(registry)
    assert executor.run(_mask_graph("m.png")).executed == ["1", "2", "3"]
    path.write_bytes(path.read_bytes())  # touched, same bytes
    assert executor.run(_mask_graph("m.png")).executed == []
    Image.new("RGBA", (2, 2), (1, 2, 3, 4)).save(path)
    assert executor.run(_mask_graph("m.png")).executed == ["1", "2", "3"]


def test_load_image_mask_missing_file_fails_validation(registry):
    checked = validate_prompt(_mask_graph("nope.png"), registry)
    errors = checked.node_errors["1"]["errors"]
    assert not checked.ok and errors[0]["type"] == "custom_validation_failed"
    assert "nope.png" in errors[0]["details"]
    _write_rgba(registry.env.folders.input_dir / "m.png")
    bad_channel = validate_prompt(_mask_graph("m.png", channel="purple"), registry)
    assert not bad_channel.ok and "1" in bad_channel.node_errors
    with pytest.raises(PromptError):
        Executor(registry).run(_mask_graph("nope.png"))


# -- the command line --------------------------------------------------------------------------


def test_cli_loads_combines_and_saves_a_mask(tmp_path):
    (tmp_path / "input").mkdir()
    img = Image.new("RGBA", (4, 2), (0, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # transparent -> mask 1
    img.save(tmp_path / "input" / "cut.png")
    prompt = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "cut.png", "channel": "alpha"}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 2, "height": 1}},
        "3": {"class_type": "MaskComposite", "inputs": {"destination": ["1", 0], "source": ["2", 0],
                                                        "x": 3, "y": 1, "operation": "or"}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "mask"}},
    }
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(prompt))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(tmp_path),
                           str(workflow)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.splitlines()]
    assert [p.name for p in written] == ["mask_00001_.png"]
    with Image.open(written[0]) as png:
        pixels = [png.getpixel((x, y))[0] for y in range(2) for x in range(4)]
    # (0, 0) from the alpha channel; (3, 1) from the solid mask, clipped to one pixel at the edge
    assert pixels == [255, 0, 0, 0, 0, 0, 0, 255]
