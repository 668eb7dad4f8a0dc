"""Image nodes: EmptyImage, LoadImage, SaveImage, PreviewImage and PNG text chunks."""
import json
import re
import threading
from datetime import datetime

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.env import Environment
from app.folders import FolderPaths
from graph.context import NodeContext
from graph.errors import PromptError
from graph.executor import Executor
from graph.registry import NodeRegistry
from graph.validation import validate_prompt
from nodes import register_builtin_nodes
from graph.workflow_file import read_png_text
from nodes.image import EmptyImage, LoadImage, load_image_file, tensor_to_pil

WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}


def make_registry(base, **options):
    reg = NodeRegistry(Environment(FolderPaths(base), options))
    register_builtin_nodes(reg)
    return reg


@pytest.fixture
def registry(tmp_path):
    return make_registry(tmp_path)


@pytest.fixture
def folders(registry):
    return registry.env.folders


def run(registry, prompt, executor=None):
    executor = executor or Executor(registry)
    return executor.run(prompt, extra_data={"extra_pnginfo": {"workflow": WORKFLOW}})


def save_graph(prefix="ComfyUI", width=8, height=6, batch=1, color=0x123456, saver="SaveImage"):
    save_inputs = {"images": ["1", 0]}
    if saver == "SaveImage":
        save_inputs["filename_prefix"] = prefix
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height,
                                                     "batch_size": batch, "color": color}},
        "2": {"class_type": saver, "inputs": save_inputs},
    }


def load_graph(name):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
    }


def ctx_for(registry):
    return NodeContext("p", "1", "X", registry.env, {}, {}, threading.Event(), lambda e, d: None)


# -- EmptyImage ---------------------------------------------------------------------------------


def test_empty_image_has_the_shape_and_colour_asked_for(registry):
    (image,) = EmptyImage().run(ctx_for(registry), width=7, height=5, batch_size=3, color=0xFF8000)
    assert image.shape == (3, 5, 7, 3) and image.dtype == torch.float32
    assert torch.allclose(image[2, 4, 6], torch.tensor([1.0, 128 / 255, 0.0]))
    assert torch.equal(image[0], image[2])


def test_empty_image_colour_survives_a_save_exactly(registry, folders):
    result = run(registry, save_graph(color=0x123456))
    assert result.ok, result.error
    with Image.open(folders.output_dir / "ComfyUI_00001_.png") as png:
        assert png.size == (8, 6) and png.mode == "RGB"
        assert png.getpixel((7, 5)) == (0x12, 0x34, 0x56)
    info = registry.describe("EmptyImage")["EmptyImage"]["input"]["required"]
    assert info["color"][1]["display"] == "color" and info["color"][1]["max"] == 0xFFFFFF
    assert (info["width"][1]["default"], info["width"][1]["min"], info["width"][1]["max"]) == (512, 1, 16384)


# -- SaveImage ----------------------------------------------------------------------------------


def test_save_image_numbers_files_after_the_highest_existing_counter(registry, folders):
    for name in ("ComfyUI_00002_.png", "ComfyUI_00007_.png", "Other_00050_.png", "ComfyUI_00099.png"):
        (folders.output_dir / name).write_bytes(b"x")
    result = run(registry, save_graph(batch=2))
    assert result.ok, result.error
    assert result.outputs["2"] == {"images": [
        {"filename": "ComfyUI_00008_.png", "subfolder": "", "type": "output"},
        {"filename": "ComfyUI_00009_.png", "subfolder": "", "type": "output"},
    ]}
    for name in ("ComfyUI_00008_.png", "ComfyUI_00009_.png"):
        with Image.open(folders.output_dir / name) as png:
            assert png.format == "PNG" and png.size == (8, 6)


def test_save_image_counts_from_one_in_a_fresh_folder_and_continues_across_runs(registry, folders):
    executor = Executor(registry)
    assert run(registry, save_graph(color=1), executor).outputs["2"]["images"][0]["filename"] == "ComfyUI_00001_.png"
    assert run(registry, save_graph(color=2), executor).outputs["2"]["images"][0]["filename"] == "ComfyUI_00002_.png"


def test_save_image_prefix_with_a_slash_makes_a_subfolder_with_its_own_counter(registry, folders):
    sub = folders.output_dir / "portraits" / "day1"
    sub.mkdir(parents=True)
    (sub / "face_00003_.png").write_bytes(b"x")
    (folders.output_dir / "face_00020_.png").write_bytes(b"x")  # another folder: must not count
    result = run(registry, save_graph(prefix="portraits/day1/face"))
    assert result.ok, result.error
    assert result.outputs["2"]["images"] == [{"filename": "face_00004_.png", "subfolder": "portraits/day1",
                                              "type": "output"}]
    assert (sub / "face_00004_.png").is_file()


def test_save_image_creates_a_missing_subfolder(registry, folders):
    result = run(registry, save_graph(prefix="new/dir/img"))
    assert result.ok, result.error
    assert (folders.output_dir / "new" / "dir" / "img_00001_.png").is_file()


@pytest.mark.parametrize("prefix", ["../escaped", "a/../../escaped", "/tmp/escaped", "..\\escaped"])
def test_save_image_refuses_a_prefix_that_leaves_the_output_folder(registry, tmp_path, prefix):
    result = run(registry, save_graph(prefix=prefix))
    assert result.status == "error"
    assert result.error["node_id"] == "2"
    assert "outside the output folder" in result.error["exception_message"]
    assert not list(tmp_path.glob("escaped*"))


def test_save_image_replaces_size_date_and_batch_tokens(registry, folders):
    result = run(registry, save_graph(prefix="img_%width%x%height%_%year%_b%batch_num%", batch=2, width=9, height=4))
    assert result.ok, result.error
    year = datetime.now().year
    assert [i["filename"] for i in result.outputs["2"]["images"]] == [
        f"img_9x4_{year}_b0_00001_.png", f"img_9x4_{year}_b1_00002_.png"]
    # The batch number varies per image, so existing files with any batch number count.
    again = run(registry, save_graph(prefix="img_%width%x%height%_%year%_b%batch_num%", batch=1, width=9,
                                     height=4, color=5))
    assert again.outputs["2"]["images"][0]["filename"] == f"img_9x4_{year}_b0_00003_.png"


def test_saved_png_carries_the_prompt_and_workflow_as_text_chunks(registry, folders):
    prompt = save_graph()
    result = run(registry, prompt)
    assert result.ok, result.error
    path = folders.output_dir / "ComfyUI_00001_.png"
    with Image.open(path) as png:
        png.load()
        assert set(png.text) == {"prompt", "workflow"}
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == WORKFLOW
    assert read_png_text(path) == {"prompt": json.dumps(prompt), "workflow": json.dumps(WORKFLOW)}


def test_each_extra_pnginfo_key_becomes_its_own_chunk(registry, folders):
    result = Executor(registry).run(save_graph(), extra_data={"extra_pnginfo": {"workflow": WORKFLOW,
                                                                                "note": "hi"}})
    assert result.ok, result.error
    text = read_png_text(folders.output_dir / "ComfyUI_00001_.png")
    assert json.loads(text["note"]) == "hi" and json.loads(text["workflow"]) == WORKFLOW


def test_disable_metadata_leaves_the_png_without_text(tmp_path):
    registry = make_registry(tmp_path, disable_metadata=True)
    result = run(registry, save_graph())
    assert result.ok, result.error
    path = registry.env.folders.output_dir / "ComfyUI_00001_.png"
    assert read_png_text(path) == {}
    with Image.open(path) as png:
        png.load()
        assert png.text == {}


def test_images_with_alpha_or_one_channel_convert_to_matching_png_modes():
    rgba = torch.rand(1, 3, 4, 4)
    grey = torch.rand(1, 3, 4, 1)
    for channels, image in (("RGBA", rgba), ("L", grey)):
        png = tensor_to_pil(image[0])
        assert png.mode == channels and png.size == (4, 3)
    expected = tuple(int(v) for v in (rgba[0, 2, 3] * 255).tolist())  # float32, truncated, as ComfyUI
    assert tensor_to_pil(rgba[0]).getpixel((3, 2)) == expected


# -- PreviewImage ------------------------------------------------------------------------------


def test_preview_image_goes_to_temp_with_type_temp(registry, folders):
    result = run(registry, save_graph(saver="PreviewImage", batch=2))
    assert result.ok, result.error
    images = result.outputs["2"]["images"]
    assert [i["type"] for i in images] == ["temp", "temp"] and images[0]["subfolder"] == ""
    first = re.fullmatch(r"ComfyUI_temp_([a-z]{5})_00001_\.png", images[0]["filename"])
    assert first and images[1]["filename"] == f"ComfyUI_temp_{first.group(1)}_00002_.png"
    assert (folders.temp_dir / images[0]["filename"]).is_file()
    assert not list(folders.output_dir.glob("*.png"))
    assert json.loads(read_png_text(folders.temp_dir / images[0]["filename"])["workflow"]) == WORKFLOW


# -- LoadImage ---------------------------------------------------------------------------------


def test_load_image_of_an_rgba_png_gives_the_inverted_alpha_as_mask(registry, folders):
    img = Image.new("RGBA", (3, 2), (10, 20, 30, 255))
    img.putpixel((0, 0), (200, 100, 50, 0))
    img.putpixel((2, 1), (1, 2, 3, 51))
    img.save(folders.input_dir / "rgba.png")
    image, mask = load_image_file(folders.input_dir / "rgba.png")
    assert image.shape == (1, 2, 3, 3) and mask.shape == (1, 2, 3)
    assert image.dtype == torch.float32 and mask.dtype == torch.float32
    assert torch.allclose(image[0, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    assert torch.allclose(image[0, 1, 1], torch.tensor([10, 20, 30]) / 255.0)
    assert mask[0, 0, 0] == 1.0 and mask[0, 1, 1] == 0.0
    assert torch.isclose(mask[0, 1, 2], torch.tensor(1 - 51 / 255))


def test_load_image_of_an_rgb_png_gives_a_64x64_zero_mask(registry, folders):
    Image.new("RGB", (5, 4), (255, 0, 0)).save(folders.input_dir / "rgb.png")
    image, mask = LoadImage().run(ctx_for(registry), image="rgb.png")
    assert image.shape == (1, 4, 5, 3) and torch.all(image[..., 0] == 1.0) and torch.all(image[..., 1:] == 0)
    assert mask.shape == (1, 64, 64) and not mask.any()


def test_load_image_treats_a_palette_transparency_key_as_alpha(folders):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.save(folders.input_dir / "pal.png", transparency=1)
    _, mask = load_image_file(folders.input_dir / "pal.png")
    assert mask.tolist() == [[[0.0, 1.0]]]


def test_a_two_frame_gif_loads_as_a_batch_of_two(folders):
    frames = [Image.new("RGB", (4, 3), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folders.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    image, mask = load_image_file(folders.input_dir / "anim.gif")
    assert image.shape == (2, 3, 4, 3) and mask.shape[0] == 2
    assert image[0, 0, 0, 0] > 0.9 and image[1, 0, 0, 2] > 0.9 and image[1, 0, 0, 0] < 0.1


def test_a_multipage_tiff_loads_as_a_batch_and_drops_pages_of_another_size(folders):
    pages = [Image.new("RGB", (6, 5), (0, 255, 0)), Image.new("RGB", (6, 5), (9, 9, 9)), Image.new("RGB", (2, 2))]
    pages[0].save(folders.input_dir / "pages.tiff", save_all=True, append_images=pages[1:])
    image, mask = load_image_file(folders.input_dir / "pages.tiff")
    assert image.shape == (2, 5, 6, 3) and mask.shape == (2, 64, 64)
    assert torch.allclose(image[1, 0, 0], torch.full((3,), 9 / 255))


def test_a_16_bit_greyscale_png_keeps_its_range(folders):
    img = Image.new("I;16", (2, 1))
    img.putpixel((0, 0), 65535)
    img.putpixel((1, 0), 32768)
    img.save(folders.input_dir / "deep.png")
    image, mask = load_image_file(folders.input_dir / "deep.png")
    assert image.shape == (1, 1, 2, 3) and mask.shape == (1, 64, 64)
    assert torch.allclose(image[0, 0, 0], torch.ones(3))
    assert torch.allclose(image[0, 0, 1], torch.full((3,), 32768 / 65535))


def test_load_image_applies_the_exif_orientation(folders):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(folders.input_dir / "turned.jpg", exif=exif, quality=100)
    image, _ = load_image_file(folders.input_dir / "turned.jpg")
    assert image.shape == (1, 4, 2, 3)  # width and height swapped
    assert image[0, 0, 1].mean() > 0.7  # the white corner moved to the top right


def test_load_image_through_the_engine_and_its_file_list(registry, folders):
    Image.new("RGB", (3, 3), (0, 255, 0)).save(folders.input_dir / "b.png")
    Image.new("RGB", (3, 3), (0, 0, 0)).save(folders.input_dir / "a.jpg")
    (folders.input_dir / "notes.txt").write_text("not an image")
    combo = registry.describe("LoadImage")["LoadImage"]["input"]["required"]["image"]
    assert list(combo) == [["a.jpg", "b.png"], {"image_upload": True}]
    result = run(registry, load_graph("b.png"))
    assert result.ok, result.error
    with Image.open(folders.output_dir / "loaded_00001_.png") as png:
        assert png.getpixel((1, 1)) == (0, 255, 0)


def test_load_image_accepts_an_annotated_name_from_another_folder(registry, folders):
    Image.new("RGB", (2, 2), (0, 0, 255)).save(folders.output_dir / "earlier.png")
    result = run(registry, load_graph("earlier.png [output]"))
    assert result.ok, result.error
    with Image.open(folders.output_dir / "loaded_00001_.png") as png:
        assert png.getpixel((0, 0)) == (0, 0, 255)


def test_fingerprint_follows_the_file_bytes(registry, folders):
    path = folders.input_dir / "pic.png"
    Image.new("RGB", (2, 2), (1, 2, 3)).save(path)
    env = registry.env
    first = LoadImage.fingerprint(env, image="pic.png")
    assert LoadImage.fingerprint(env, image="pic.png") == first
    path.write_bytes(path.read_bytes())  # rewritten (new mtime), same bytes
    assert LoadImage.fingerprint(env, image="pic.png") == first
    Image.new("RGB", (2, 2), (1, 2, 4)).save(path)
    assert LoadImage.fingerprint(env, image="pic.png") != first


def test_changed_file_bytes_rerun_load_image_and_same_bytes_hit_the_cache(registry, folders):
    path = folders.input_dir / "pic.png"
    Image.new("RGB", (2, 2), (1, 2, 3)).save(path)
    executor = Executor(registry)
    assert run(registry, load_graph("pic.png"), executor).executed == ["1", "2"]
    path.write_bytes(path.read_bytes())
    assert run(registry, load_graph("pic.png"), executor).executed == []
    Image.new("RGB", (2, 2), (9, 9, 9)).save(path)
    assert run(registry, load_graph("pic.png"), executor).executed == ["1", "2"]


@pytest.mark.parametrize("name", ["missing.png", "../outside.png"])
def test_a_missing_image_fails_validation_naming_the_file(registry, name):
    checked = validate_prompt(load_graph(name), registry)
    assert not checked.ok
    errors = checked.node_errors["1"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert name in errors[0]["details"]
    with pytest.raises(PromptError):
        Executor(registry).run(load_graph(name))


# -- read_png_text -----------------------------------------------------------------------------


def test_read_png_text_reads_compressed_and_international_chunks(tmp_path):
    info = PngInfo()
    info.add_text("plain", "a")
    info.add_text("squeezed", "b" * 500, zip=True)
    info.add_itxt("intl", "ünïcødé ✓", zip=False)
    info.add_itxt("intl_z", "ζ" * 300, zip=True)
    Image.new("RGB", (1, 1)).save(tmp_path / "t.png", pnginfo=info)
    assert read_png_text(tmp_path / "t.png") == {"plain": "a", "squeezed": "b" * 500, "intl": "ünïcødé ✓",
                                                 "intl_z": "ζ" * 300}


def test_read_png_text_refuses_a_file_that_is_not_a_png(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "t.jpg")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png_text(tmp_path / "t.jpg")
