"""Animated saves (APNG, WebP), mask previews and loading from the output folder, read back with
Pillow and a PNG chunk walker: frames, timing, 8-bit pixels (ComfyUI truncates: uint8(255 x)),
and where ComfyUI puts the prompt and workflow in each format."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from graph.executor import Executor
from tests.node_helpers import builtin_registry, call_in_context

WORKFLOW = {"nodes": [{"id": 1}], "links": []}


@pytest.fixture
def registry(tmp_path):
    return builtin_registry(tmp_path)


def frames(seed=0, count=3, height=6, width=5):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return np.clip(255.0 * images.numpy(), 0, 255).astype(np.uint8)


def png_chunks(path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_animated_png_holds_every_frame_and_comfyuis_comf_chunks(registry):
    images = frames()
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    result = call_in_context(registry, "SaveAnimatedPNG", images=images, fps=4.0, compress_level=9,
                       filename_prefix="anim/clip", prompt=prompt, extra_pnginfo={"workflow": WORKFLOW})
    assert result["ui"] == {"images": [{"filename": "clip_00001_.png", "subfolder": "anim", "type": "output"}],
                            "animated": (True,)}
    path = registry.env.folders.output_dir / "anim" / "clip_00001_.png"
    with Image.open(path) as png:
        assert png.n_frames == 3
        for index in range(3):
            png.seek(index)
            assert png.info["duration"] == 250
            assert np.array_equal(np.array(png.convert("RGB")), as_uint8(images[index]))
    kinds = [kind for kind, _ in png_chunks(path)]
    comf = [body for kind, body in png_chunks(path) if kind == b"comf"]
    assert kinds.index(b"comf") > max(i for i, k in enumerate(kinds) if k in (b"IDAT", b"fdAT"))
    assert [body.split(b"\0", 1)[0] for body in comf] == [b"prompt", b"workflow"]
    assert json.loads(comf[0].split(b"\0", 1)[1]) == prompt
    assert json.loads(comf[1].split(b"\0", 1)[1]) == WORKFLOW


def test_animated_webp_holds_every_frame_and_the_exif_text(registry):
    images = frames(1)
    prompt = {"7": {"class_type": "Y", "inputs": {}}}
    result = call_in_context(registry, "SaveAnimatedWEBP", images=images, fps=10.0, filename_prefix="w", lossless=True,
                       quality=80, method="fastest", prompt=prompt, extra_pnginfo={"workflow": WORKFLOW})
    assert result["ui"]["images"] == [{"filename": "w_00001_.webp", "subfolder": "", "type": "output"}]
    assert result["ui"]["animated"] == (True,)
    with Image.open(registry.env.folders.output_dir / "w_00001_.webp") as webp:
        assert webp.n_frames == 3
        exif = webp.getexif()
        assert exif[0x0110] == f"prompt:{json.dumps(prompt)}"
        assert exif[0x010F] == f"workflow:{json.dumps(WORKFLOW)}"
        for index in range(3):
            webp.seek(index)
            webp.load()
            assert webp.info["duration"] == 100
            # lossless WebP keeps 8-bit RGB exactly
            assert np.array_equal(np.array(webp.convert("RGB")), as_uint8(images[index]))


def test_a_single_frame_webp_is_not_animated(registry):
    result = call_in_context(registry, "SaveAnimatedWEBP", images=frames(count=1), fps=6.0, filename_prefix="one",
                       lossless=False, quality=50, method="default")
    assert result["ui"]["animated"] == (False,)


def test_mask_preview_shows_the_mask_as_grey_in_the_temp_folder(registry):
    mask = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(2))
    result = call_in_context(registry, "MaskPreview", mask=mask)
    entries = result["ui"]["images"]
    assert [e["type"] for e in entries] == ["temp", "temp"]
    for index, entry in enumerate(entries):
        with Image.open(registry.env.folders.temp_dir / entry["filename"]) as png:
            pixels = np.array(png.convert("RGB"))
        want = as_uint8(mask[index])
        assert all(np.array_equal(pixels[..., c], want) for c in range(3))


def test_load_image_output_reads_a_generated_image_through_a_prompt(registry):
    folders = registry.env.folders
    Image.new("RGB", (4, 3), (10, 200, 30)).save(folders.output_dir / "made.png")
    prompt = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": "made.png [output]"}},
              "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    result = Executor(registry).run(prompt)
    assert result.ok, result.error
    assert result.outputs["3"]["text"] == ["4"]


def test_load_image_output_declares_the_remote_list_as_comfyui(registry):
    entry = json.loads(json.dumps(registry.describe("LoadImageOutput")["LoadImageOutput"]))
    assert entry["input"]["required"]["image"] == ["COMBO", {
        "image_upload": True, "image_folder": "output",
        "remote": {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"}}]
    assert entry["experimental"] is True and entry["python_module"] == "nodes"
