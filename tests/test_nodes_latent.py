"""Latent and image resizing nodes against worked examples and independent references."""
import torch
from PIL import Image

from diffusion.upscale import bislerp, upscale
from nodes.image_transform import ImageScale, ImageScaleBy
from nodes.latent import EmptyLatentImage, LatentUpscale, LatentUpscaleBy


def test_empty_latent_is_zeros_of_one_eighth_size():
    (latent,) = EmptyLatentImage().run(None, width=512, height=768, batch_size=2)
    assert latent["samples"].shape == (2, 4, 96, 64) and latent["samples"].abs().sum() == 0
    (odd,) = EmptyLatentImage().run(None, width=520, height=100, batch_size=1)
    assert odd["samples"].shape == (1, 4, 12, 65)


def test_latent_upscale_keeps_aspect_when_one_side_is_zero_and_keeps_the_mask():
    mask = torch.ones(1, 64, 64)
    latent = {"samples": torch.randn(1, 4, 64, 32), "noise_mask": mask}
    (out,) = LatentUpscale().run(None, samples=latent, upscale_method="nearest-exact", width=0, height=1024,
                                 crop="disabled")
    assert out["samples"].shape == (1, 4, 128, 64) and out["noise_mask"] is mask
    (tiny,) = LatentUpscale().run(None, samples=latent, upscale_method="bilinear", width=8, height=8,
                                  crop="disabled")
    assert tiny["samples"].shape == (1, 4, 8, 8)  # both sides clamped up to 64 pixels
    (same,) = LatentUpscale().run(None, samples=latent, upscale_method="area", width=0, height=0,
                                  crop="disabled")
    assert same is latent


def test_center_crop_takes_the_middle_before_resizing():
    x = torch.arange(32.0).reshape(1, 1, 4, 8)  # aspect 2:1 cropped to 1:1 keeps columns 2..5
    out = upscale(x, 4, 4, "nearest-exact", "center")
    assert torch.equal(out, x[..., 2:6])
    tall = torch.arange(32.0).reshape(1, 1, 8, 4)
    assert torch.equal(upscale(tall, 4, 4, "nearest-exact", "center"), tall[..., 2:6, :])


def test_latent_upscale_by_rounds_sizes():
    latent = {"samples": torch.randn(2, 4, 10, 7)}
    (out,) = LatentUpscaleBy().run(None, samples=latent, upscale_method="bicubic", scale_by=1.5)
    assert out["samples"].shape == (2, 4, 15, 10)  # round(10.5) = 10 (banker's rounding, as Python does)


def _left_taps(old: int, new: int) -> torch.Tensor:
    """Source index left of each new pixel centre (align_corners=False mapping), by hand."""
    pos = [min(max((i + 0.5) * old / new - 0.5, 0.0), old - 1) for i in range(new)]
    return torch.tensor([int(p) for p in pos])


def test_bislerp_takes_the_left_tap_where_neighbours_are_parallel():
    # ComfyUI's bislerp treats (nearly) parallel neighbours as equal and keeps the left one,
    # so a field with one shared direction is resized by picking left taps along each axis.
    direction = torch.tensor([0.2, -0.5, 0.7, 0.1]).reshape(1, 4, 1, 1)
    field = direction * (torch.rand(2, 1, 5, 6) + 0.5)
    expected = field[:, :, _left_taps(5, 9)][:, :, :, _left_taps(6, 13)]
    assert torch.allclose(bislerp(field, 13, 9), expected, atol=1e-6)


def test_bislerp_keeps_vector_length_between_orthogonal_neighbours():
    a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    b = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    field = torch.cat([a, b], dim=3)  # 1x2 image: two unit vectors at right angles
    out = bislerp(field, 4, 1)
    assert torch.allclose(out.norm(dim=1), torch.ones(1, 1, 4), atol=1e-5)  # lerp would shrink the middle


def test_lanczos_matches_pillow():
    img = torch.rand(1, 9, 12, 3)
    (ours,) = ImageScale().run(None, image=img, upscale_method="lanczos", width=20, height=15, crop="disabled")
    pil = Image.fromarray((img[0] * 255).to(torch.uint8).numpy()).resize((20, 15), Image.LANCZOS)  # 8-bit by truncation, as ComfyUI
    reference = torch.from_numpy(__import__("numpy").array(pil)).float() / 255
    assert torch.allclose(ours[0], reference, atol=1e-6)


def test_image_scale_zero_side_keeps_aspect_and_scale_by_rounds():
    img = torch.rand(2, 10, 20, 3)
    (out,) = ImageScale().run(None, image=img, upscale_method="bilinear", width=0, height=5, crop="disabled")
    assert out.shape == (2, 5, 10, 3)
    (out,) = ImageScaleBy().run(None, image=img, upscale_method="area", scale_by=0.25)
    assert out.shape == (2, 2, 5, 3)  # round(2.5) = 2, round(5.0) = 5
    (out,) = ImageScale().run(None, image=img, upscale_method="nearest-exact", width=0, height=0, crop="center")
    assert out is img
