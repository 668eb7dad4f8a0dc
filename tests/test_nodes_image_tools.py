"""Image tools (invert, batch, crop, blur, sharpen, Canny) against hand-worked answers and scipy."""

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from graph.executor import Executor
from tests.node_helpers import builtin_registry, call_in_context as call

MAXRES = 16384


@pytest.fixture
def registry(tmp_path):
    return builtin_registry(tmp_path)


DECLARED = {
    "ImageInvert": [("image", "IMAGE", None)],
    "ImageBatch": [("image1", "IMAGE", None), ("image2", "IMAGE", None)],
    "ImageCrop": [("image", "IMAGE", None), ("width", "INT", (512, 1, MAXRES, 1)),
                  ("height", "INT", (512, 1, MAXRES, 1)), ("x", "INT", (0, 0, MAXRES, 1)),
                  ("y", "INT", (0, 0, MAXRES, 1))],
    "ImageBlur": [("image", "IMAGE", None), ("blur_radius", "INT", (1, 1, 31, 1)),
                  ("sigma", "FLOAT", (1.0, 0.1, 10.0, 0.1))],
    "ImageSharpen": [("image", "IMAGE", None), ("sharpen_radius", "INT", (1, 1, 31, 1)),
                     ("sigma", "FLOAT", (1.0, 0.1, 10.0, 0.01)), ("alpha", "FLOAT", (1.0, 0.0, 5.0, 0.01))],
    "Canny": [("image", "IMAGE", None), ("low_threshold", "FLOAT", (0.4, 0.01, 0.99, 0.01)),
              ("high_threshold", "FLOAT", (0.8, 0.01, 0.99, 0.01))],
}


MENU = {  # display name and category in ComfyUI's classic nodes (the V3 ones have no display name)
    "ImageInvert": ("Invert Image", "image"), "ImageBatch": ("Batch Images", "image"),
    "ImageCrop": ("Image Crop", "image/transform"), "ImageBlur": ("Image Blur", "image/postprocessing"),
    "ImageSharpen": ("Image Sharpen", "image/postprocessing"), "Canny": ("Canny", "image/preprocessors"),
}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_declarations_match_comfyui(registry, name):
    info = registry.describe(name)[name]
    assert info["category"] == MENU[name][1]
    assert info["output"] == ["IMAGE"]
    assert info["input_order"]["required"] == [entry[0] for entry in DECLARED[name]]
    for input_name, kind, numbers in DECLARED[name]:
        entry = info["input"]["required"][input_name]
        assert entry[0] == kind
        if numbers:
            options = entry[1]
            assert (options["default"], options["min"], options["max"], options["step"]) == numbers, input_name


# -- ImageInvert, ImageCrop ---------------------------------------------------------------------


def test_invert_flips_colour_and_keeps_alpha(registry):
    rgb = torch.tensor([[[[0.0, 0.25, 1.0]]]])
    (out,) = call(registry, "ImageInvert", image=rgb)
    assert torch.equal(out, torch.tensor([[[[1.0, 0.75, 0.0]]]]))
    rgba = torch.tensor([[[[0.0, 0.25, 1.0, 0.3]]]])
    (out,) = call(registry, "ImageInvert", image=rgba)
    assert torch.allclose(out, torch.tensor([[[[1.0, 0.75, 0.0, 0.3]]]]))


def test_crop_takes_the_region_and_clips_at_the_edges(registry):
    image = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)
    (out,) = call(registry, "ImageCrop", image=image, width=2, height=3, x=1, y=1)
    assert torch.equal(out, image[:, 1:4, 1:3])
    (edge,) = call(registry, "ImageCrop", image=image, width=512, height=512, x=100, y=100)
    assert torch.equal(edge, image[:, 3:4, 4:5])  # the origin is pulled back onto the last pixel


# -- ImageBatch ---------------------------------------------------------------------------------


def test_batch_of_same_size_images_concatenates(registry):
    a, b = torch.rand(2, 3, 4, 3), torch.rand(1, 3, 4, 3)
    (out,) = call(registry, "ImageBatch", image1=a, image2=b)
    assert torch.equal(out, torch.cat([a, b]))


def test_batch_resizes_the_second_image_with_a_centre_crop(registry):
    a = torch.zeros(1, 2, 2, 3)
    wide = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(1, 2, 4, 3)
    (out,) = call(registry, "ImageBatch", image1=a, image2=wide)
    # 2x4 into 2x2: the centre crop keeps columns 1..2, which are already the target size
    assert out.shape == (2, 2, 2, 3) and torch.equal(out[1], wide[0, :, 1:3])
    dot = torch.tensor([0.1, 0.5, 0.9]).reshape(1, 1, 1, 3)
    (out,) = call(registry, "ImageBatch", image1=torch.zeros(1, 3, 3, 3), image2=dot)
    assert torch.allclose(out[1], dot[0].expand(3, 3, 3))


def test_batch_gives_the_rgb_image_an_opaque_alpha(registry):
    rgba, rgb = torch.rand(1, 2, 2, 4), torch.rand(1, 2, 2, 3)
    (out,) = call(registry, "ImageBatch", image1=rgb, image2=rgba)
    assert out.shape == (2, 2, 2, 4)
    assert torch.equal(out[0, ..., :3], rgb[0]) and torch.equal(out[0, ..., 3], torch.ones(2, 2))
    with pytest.raises(ValueError, match="1 and 3 channels"):
        call(registry, "ImageBatch", image1=torch.rand(1, 2, 2, 1), image2=rgb)


# -- ImageBlur, ImageSharpen: scipy's mirrored correlation as the reference -----------------------


def reference_gaussian(radius, sigma):
    """ComfyUI's kernel written independently: grid -1..1 over 2r+1 taps, normalised."""
    size = 2 * radius + 1
    grid = np.array([-1.0 + 2.0 * i / (size - 1) for i in range(size)])
    weights = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma * sigma))
    return weights / weights.sum()


def reference_filter(image, kernel):
    """torch's 'reflect' padding is scipy's 'mirror' (the edge pixel is not repeated)."""
    out = np.empty_like(image)
    for b in range(image.shape[0]):
        for c in range(image.shape[-1]):
            out[b, ..., c] = scipy.ndimage.correlate(image[b, ..., c], kernel, mode="mirror")
    return out


@pytest.mark.parametrize("radius,sigma", [(1, 1.0), (2, 0.5), (3, 2.5)])
def test_blur_matches_scipy(registry, radius, sigma):
    image = torch.rand(2, 9, 11, 4, generator=torch.Generator().manual_seed(radius))
    (out,) = call(registry, "ImageBlur", image=image, blur_radius=radius, sigma=sigma)
    expected = reference_filter(image.double().numpy(), reference_gaussian(radius, sigma))
    assert out.shape == image.shape
    assert np.allclose(out.double().numpy(), expected, atol=1e-5)


def test_blur_of_a_flat_image_is_flat_and_tiny_images_are_refused(registry):
    (out,) = call(registry, "ImageBlur", image=torch.full((1, 5, 5, 3), 0.7), blur_radius=2, sigma=3.0)
    assert torch.allclose(out, torch.full((1, 5, 5, 3), 0.7), atol=1e-6)
    with pytest.raises(ValueError, match="radius 3"):
        call(registry, "ImageBlur", image=torch.rand(1, 3, 8, 3), blur_radius=3, sigma=1.0)


@pytest.mark.parametrize("radius,sigma,alpha", [(1, 1.0, 1.0), (2, 0.6, 0.3)])
def test_sharpen_matches_scipy_and_clamps(registry, radius, sigma, alpha):
    image = torch.rand(1, 8, 7, 3, generator=torch.Generator().manual_seed(7))
    (out,) = call(registry, "ImageSharpen", image=image, sharpen_radius=radius, sigma=sigma, alpha=alpha)
    kernel = -alpha * 10 * reference_gaussian(radius, sigma)
    kernel[radius, radius] += 1.0 - kernel.sum()  # taps sum to one: flat areas keep their value
    expected = np.clip(reference_filter(image.double().numpy(), kernel), 0.0, 1.0)
    assert np.allclose(out.double().numpy(), expected, atol=1e-5)
    assert out.min() >= 0.0 and out.max() <= 1.0 and (expected == 0.0).any() and (expected == 1.0).any()


def test_sharpen_with_zero_alpha_is_the_identity(registry):
    image = torch.rand(1, 5, 5, 3)
    (out,) = call(registry, "ImageSharpen", image=image, sharpen_radius=2, sigma=1.0, alpha=0.0)
    assert torch.allclose(out, image, atol=1e-6)


# -- Canny ------------------------------------------------------------------------------------------


def test_canny_marks_one_line_along_a_step_edge(registry):
    image = torch.zeros(1, 12, 12, 3)
    image[:, :, 6:] = 1.0  # a vertical step between columns 5 and 6
    (edges,) = call(registry, "Canny", image=image, low_threshold=0.2, high_threshold=0.5)
    assert edges.shape == (1, 12, 12, 3)
    assert torch.equal(edges[..., 0], edges[..., 1]) and torch.equal(edges[..., 0], edges[..., 2])
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    columns = edges[0, 2:10, :, 0].nonzero()[:, 1]  # rows away from the top and bottom borders
    assert len(columns) == 8 and len(set(columns.tolist())) == 1 and columns[0].item() in (5, 6)
    (flat,) = call(registry, "Canny", image=torch.full((1, 8, 8, 3), 0.5), low_threshold=0.1, high_threshold=0.2)
    assert flat.sum() == 0


def test_canny_sees_grey_level_and_ignores_alpha(registry):
    blue = torch.zeros(1, 12, 12, 4)
    blue[:, :, 6:, 2] = 1.0  # a blue step is a small grey step (weight 0.114)
    blue[:, :6, :, 3] = 1.0  # an alpha step that must not show
    (weak,) = call(registry, "Canny", image=blue, low_threshold=0.4, high_threshold=0.8)
    assert weak.sum() == 0
    white = blue.clone()
    white[:, :, 6:, :3] = 1.0
    (strong,) = call(registry, "Canny", image=white, low_threshold=0.4, high_threshold=0.8)
    assert strong[0, 2:10, :, 0].sum() == 8  # still one line, from the colour step only


def test_canny_rejects_a_low_threshold_above_the_high(registry):
    with pytest.raises(ValueError, match="low_threshold"):
        call(registry, "Canny", image=torch.rand(1, 8, 8, 3), low_threshold=0.9, high_threshold=0.5)


def test_tools_chain_through_the_executor(registry):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x204080}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 2, "sigma": 1.0}},
        "4": {"class_type": "ImageSharpen", "inputs": {"image": ["3", 0], "sharpen_radius": 1, "sigma": 1.0,
                                                       "alpha": 1.0}},
        "5": {"class_type": "ImageCrop", "inputs": {"image": ["4", 0], "width": 4, "height": 4, "x": 2, "y": 2}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["5", 0]}},
        "7": {"class_type": "Canny", "inputs": {"image": ["6", 0], "low_threshold": 0.4, "high_threshold": 0.8}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "tools"}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    result = Executor(registry).run(prompt)
    assert result.ok, result.error
    with Image.open(registry.env.folders.output_dir / "tools_00002_.png") as png:
        # invert of a flat colour stays flat through blur, sharpen and crop; 8-bit by truncation
        # as ComfyUI (1 - 64/255 is 0.74901956 in float32: 190.99998, saved as 190)
        assert png.size == (8, 8)
        assert all(abs(got - want) <= 1 for got, want in zip(png.getpixel((3, 3)), (0xDF, 0xBF, 0x7F)))
