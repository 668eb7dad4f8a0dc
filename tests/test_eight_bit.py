"""Every IMAGE becomes 8-bit as in ComfyUI: uint8(clip(255 * x, 0, 255)), truncating. Saved
images, previews in the temp folder, masks and live sampling previews all match ComfyUI's bytes
(rounding would differ by one grey level in about half the pixels)."""
import torch
from PIL import Image

from graph.context import LatentPreview
from nodes.image import tensor_to_pil
from server.preview import Previewer
from tests.node_helpers import register_constant

# value -> ComfyUI's byte: 255 * 0.25 = 63.75 -> 63 and 255 * 0.5 = 127.5 -> 127 (rounding: 64, 128)
CASES = [(0.0, 0), (0.25, 63), (0.5, 127), (0.999, 254), (1.0, 255), (1.5, 255), (-0.5, 0), (float("nan"), 0)]


def pixels(values, channels=3):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, len(values), 1).expand(-1, -1, -1, channels)


def test_conversion_truncates_and_clips_like_comfyui():
    image = tensor_to_pil(pixels([v for v, _ in CASES])[0])
    assert [image.getpixel((x, 0)) for x in range(len(CASES))] == [(b, b, b) for _, b in CASES]
    mask = tensor_to_pil(torch.tensor([[0.25, 0.5]]))  # a 2-D mask: greyscale
    assert mask.mode == "L" and [mask.getpixel((x, 0)) for x in range(2)] == [63, 127]


def test_save_image_preview_image_and_masks_write_comfyuis_bytes(runtime):
    values = [v for v, _ in CASES]
    register_constant(runtime.registry, "LGFixedPixels", ("IMAGE", "MASK"), (pixels(values), pixels(values, 1)[..., 0]))
    prompt = {"1": {"class_type": "LGFixedPixels", "inputs": {}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bytes"}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
              "4": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
              "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "mask"}}}
    result = runtime.executor.run(prompt)
    assert result.ok, result.error
    folders = runtime.env.folders
    for node in ("2", "3", "5"):
        saved = result.outputs[node]["images"][0]
        with Image.open(folders.typed_dir(saved["type"]) / saved["subfolder"] / saved["filename"]) as png:
            assert [png.getpixel((x, 0)) for x in range(len(CASES))] == [(b, b, b) for _, b in CASES], node


def test_live_previews_are_truncated_too():
    # a zero latent projects to 0.5 grey: 127, where rounding gives 128
    previewer = Previewer("latent2rgb", [])
    image = previewer.latent_image(LatentPreview(torch.zeros(1, 4, 2, 2), "sd1"))
    assert image.getpixel((0, 0)) == (127, 127, 127)
