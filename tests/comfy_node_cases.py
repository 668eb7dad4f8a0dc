"""Node calls whose outputs were computed by ComfyUI itself, for tests/test_comfy_node_parity.py.

Shared, unchanged, by the test (which runs our nodes) and by tests/data/comfy_nodes/make_reference.py
(which ran ComfyUI's nodes at commit a125cd84 under its own venv to write reference.safetensors).
It imports nothing but torch, so both interpreters load it; every input tensor is drawn here from a
seeded generator, and the reference file stores the inputs too so a change of torch's generator
shows up as an input mismatch rather than as a wrong node.

A case is (case id, node class name, inputs); an input may be `Call(node, inputs)`, the first output
of another node (a LATENT_OPERATION made by its node, say).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Call:
    node: str
    inputs: dict


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _image_with_flat_patches(seed: int) -> torch.Tensor:
    """Random pixels, some exactly on 8-bit levels (for ImageColorToMask's equality test)."""
    image = (_rand(seed, 2, 9, 11, 3) * 255).floor() / 255
    image[:, 2:5, 3:7] = torch.tensor([0x12, 0x34, 0x56]) / 255.0
    return image


IMG = _rand(1, 2, 13, 17, 3)           # a batch of two RGB images
IMG_SMALL = _rand(2, 1, 7, 10, 3)      # another size, to be resized
IMG_RGBA = _rand(3, 2, 13, 17, 4)
IMG_TALL = _rand(4, 1, 19, 8, 3)
MASK = _rand(5, 2, 13, 17)
MASK_SMALL = _rand(6, 1, 6, 9)
LAT = _randn(7, 1, 4, 8, 10)
LAT2 = _randn(8, 1, 4, 8, 10)
LAT_BATCH = _randn(9, 4, 4, 6, 6)      # batch 4 = channels 4: LatentInterpolate's broadcasting
LAT_OTHER = _randn(10, 2, 4, 5, 7)     # another size and batch, to be fitted


def image_cases() -> list[tuple[str, str, dict]]:
    cases = []
    for mode in ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]:
        cases.append((f"blend_{mode}", "ImageBlend",
                      dict(image1=IMG, image2=_rand(11, 2, 13, 17, 3), blend_factor=0.7, blend_mode=mode)))
    cases.append(("blend_resized", "ImageBlend", dict(image1=IMG, image2=IMG_SMALL, blend_factor=0.4,
                                                      blend_mode="overlay")))
    cases.append(("blend_rgba_source", "ImageBlend", dict(image1=IMG, image2=IMG_RGBA, blend_factor=0.5,
                                                          blend_mode="screen")))
    for dither in ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]:
        cases.append((f"quantize_{dither}", "ImageQuantize", dict(image=IMG, colors=5, dither=dither)))
    cases.append(("quantize_256", "ImageQuantize", dict(image=IMG_SMALL, colors=256, dither="none")))
    for op in ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]:
        cases.append((f"morphology_{op}", "Morphology", dict(image=IMG, operation=op, kernel_size=3)))
    cases.append(("morphology_dilate_5", "Morphology", dict(image=IMG, operation="dilate", kernel_size=5)))
    for method in ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]:
        cases.append((f"total_pixels_{method}", "ImageScaleToTotalPixels",
                      dict(image=IMG_SMALL, upscale_method=method, megapixels=0.01)))
    for method, size in [("area", 9), ("lanczos", 30), ("bicubic", 24), ("nearest-exact", 12)]:
        cases.append((f"max_dimension_{method}", "ImageScaleToMaxDimension",
                      dict(image=IMG, upscale_method=method, largest_size=size)))
    cases.append(("max_dimension_tall", "ImageScaleToMaxDimension",
                  dict(image=IMG_TALL, upscale_method="bilinear", largest_size=25)))
    for color, method, w, h in [("white", "area", 24, 20), ("black", "lanczos", 20, 30),
                                ("black", "bicubic", 31, 9), ("white", "nearest-exact", 17, 13)]:
        cases.append((f"resize_pad_{color}_{method}", "ResizeAndPadImage",
                      dict(image=IMG, target_width=w, target_height=h, padding_color=color, interpolation=method)))
    for flip in ["x-axis: vertically", "y-axis: horizontally"]:
        cases.append((f"flip_{flip[0]}", "ImageFlip", dict(image=IMG, flip_method=flip)))
    for rotation in ["none", "90 degrees", "180 degrees", "270 degrees"]:
        cases.append((f"rotate_{rotation.split()[0]}", "ImageRotate", dict(image=IMG, rotation=rotation)))
    for direction in ["right", "down", "left", "up"]:
        cases.append((f"stitch_{direction}_matched", "ImageStitch",
                      dict(image1=IMG, image2=IMG_SMALL, direction=direction, match_image_size=True,
                           spacing_width=4, spacing_color="red")))
        cases.append((f"stitch_{direction}_padded", "ImageStitch",
                      dict(image1=IMG_TALL, image2=IMG_RGBA, direction=direction, match_image_size=False,
                           spacing_width=3, spacing_color="white")))
    cases.append(("stitch_black_no_spacing", "ImageStitch",
                  dict(image1=IMG_SMALL, image2=IMG, direction="down", match_image_size=False, spacing_width=0,
                       spacing_color="black")))
    cases.append(("stitch_blue_rgba", "ImageStitch",
                  dict(image1=IMG_RGBA, image2=IMG, direction="right", match_image_size=True, spacing_width=2,
                       spacing_color="blue")))
    cases.append(("stitch_without_image2", "ImageStitch",
                  dict(image1=IMG, direction="right", match_image_size=True, spacing_width=2, spacing_color="blue")))
    cases.append(("add_noise", "ImageAddNoise", dict(image=IMG, seed=42, strength=0.3)))
    cases.append(("add_noise_big_seed", "ImageAddNoise", dict(image=IMG_SMALL, seed=2**64 - 5, strength=1.0)))
    cases.append(("image_size", "GetImageSize", dict(image=IMG_RGBA)))
    cases.append(("from_batch", "ImageFromBatch", dict(image=IMG, batch_index=1, length=5)))
    cases.append(("from_batch_clamped", "ImageFromBatch", dict(image=IMG, batch_index=9, length=1)))
    cases.append(("repeat_batch", "RepeatImageBatch", dict(image=IMG, amount=3)))
    cases.append(("color_to_mask", "ImageColorToMask", dict(image=_image_with_flat_patches(12), color=0x123456)))
    cases.append(("join_alpha", "JoinImageWithAlpha", dict(image=IMG_RGBA, alpha=MASK_SMALL)))
    cases.append(("split_alpha_rgba", "SplitImageWithAlpha", dict(image=IMG_RGBA)))
    cases.append(("split_alpha_rgb", "SplitImageWithAlpha", dict(image=IMG)))
    for mode in ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN",
                 "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]:
        cases.append((f"porter_duff_{mode}", "PorterDuffImageComposite",
                      dict(source=_rand(13, 2, 13, 17, 3), source_alpha=MASK, destination=IMG,
                           destination_alpha=_rand(14, 2, 13, 17), mode=mode)))
    cases.append(("porter_duff_resized", "PorterDuffImageComposite",
                  dict(source=IMG_SMALL, source_alpha=MASK_SMALL, destination=IMG, destination_alpha=MASK_SMALL,
                       mode="SRC_OVER")))
    return cases


def latent_cases() -> list[tuple[str, str, dict]]:
    lat = {"samples": LAT}
    cases = [
        ("latent_add", "LatentAdd", dict(samples1=lat, samples2={"samples": LAT2})),
        ("latent_add_fitted", "LatentAdd", dict(samples1={"samples": LAT_BATCH}, samples2={"samples": LAT_OTHER})),
        ("latent_subtract", "LatentSubtract", dict(samples1=lat, samples2={"samples": LAT_OTHER})),
        ("latent_multiply", "LatentMultiply", dict(samples=lat, multiplier=-2.5)),
        ("latent_interpolate", "LatentInterpolate", dict(samples1=lat, samples2={"samples": LAT2}, ratio=0.3)),
        ("latent_interpolate_fitted", "LatentInterpolate",
         dict(samples1=lat, samples2={"samples": LAT_OTHER}, ratio=0.8)),
        ("latent_interpolate_batch4", "LatentInterpolate",
         dict(samples1={"samples": LAT_BATCH}, samples2={"samples": _randn(15, 4, 4, 6, 6)}, ratio=0.6)),
        ("latent_cut_x", "LatentCut", dict(samples=lat, dim="x", index=3, amount=4)),
        ("latent_cut_y_clamped", "LatentCut", dict(samples=lat, dim="y", index=6, amount=10)),
        ("latent_cut_negative", "LatentCut", dict(samples=lat, dim="x", index=-3, amount=5)),
        ("latent_cut_t", "LatentCut", dict(samples=lat, dim="t", index=-20, amount=2)),
        ("latent_seed_fixed", "LatentBatchSeedBehavior",
         dict(samples={"samples": LAT_BATCH, "batch_index": [5, 6, 7, 8]}, seed_behavior="fixed")),
        ("latent_seed_fixed_plain", "LatentBatchSeedBehavior",
         dict(samples={"samples": LAT_BATCH}, seed_behavior="fixed")),
        ("latent_seed_random", "LatentBatchSeedBehavior",
         dict(samples={"samples": LAT_BATCH, "batch_index": [5, 6, 7, 8]}, seed_behavior="random")),
        ("latent_sharpen", "LatentApplyOperation",
         dict(samples={"samples": _randn(16, 2, 4, 12, 14)},
              operation=Call("LatentOperationSharpen", dict(sharpen_radius=3, sigma=1.5, alpha=0.4)))),
        ("latent_tonemap", "LatentApplyOperation",
         dict(samples={"samples": _randn(17, 2, 4, 12, 14) * 3},
              operation=Call("LatentOperationTonemapReinhard", dict(multiplier=0.7)))),
    ]
    for dim in ["x", "-x", "y", "-y", "t", "-t"]:
        cases.append((f"latent_concat_{dim}", "LatentConcat",
                      dict(samples1={"samples": LAT_BATCH}, samples2={"samples": _randn(18, 3, 4, 6, 6)}, dim=dim)))
    return cases


TEXT = "  Hello World, hello regex!\nSecond line: 42 apples and 7 pears.  "


def string_cases() -> list[tuple[str, str, dict]]:
    cases = []
    for mode in ["UPPERCASE", "lowercase", "Capitalize", "Title Case"]:
        cases.append((f"case_{mode}", "CaseConverter", dict(string=TEXT, mode=mode)))
    for mode in ["Both", "Left", "Right"]:
        cases.append((f"trim_{mode}", "StringTrim", dict(string=TEXT, mode=mode)))
    cases += [
        ("substring", "StringSubstring", dict(string=TEXT, start=2, end=-5)),
        ("length", "StringLength", dict(string=TEXT)),
        ("replace", "StringReplace", dict(string=TEXT, find="l", replace="L")),
        ("contains_case", "StringContains", dict(string=TEXT, substring="hello world", case_sensitive=True)),
        ("contains_nocase", "StringContains", dict(string=TEXT, substring="hello world", case_sensitive=False)),
    ]
    for mode in ["Starts With", "Ends With", "Equal"]:
        for sensitive in (True, False):
            cases.append((f"compare_{mode}_{sensitive}", "StringCompare",
                          dict(string_a="Prefix and Suffix", string_b="prefix" if mode != "Ends With" else "SUFFIX",
                               mode=mode, case_sensitive=sensitive)))
    pattern = r"(\d+) (\w+)"
    for mode in ["First Match", "All Matches", "First Group", "All Groups"]:
        for group in (0, 1, 2, 3):
            cases.append((f"extract_{mode}_{group}", "RegexExtract",
                          dict(string=TEXT, regex_pattern=pattern, mode=mode, case_insensitive=True, multiline=False,
                               dotall=False, group_index=group)))
    cases += [
        ("extract_multiline", "RegexExtract",
         dict(string=TEXT, regex_pattern=r"^\s*(\w+)", mode="All Groups", case_insensitive=False, multiline=True,
              dotall=False, group_index=1)),
        ("extract_dotall", "RegexExtract",
         dict(string=TEXT, regex_pattern=r"regex.(.)", mode="First Group", case_insensitive=False, multiline=False,
              dotall=True, group_index=1)),
        ("extract_bad_pattern", "RegexExtract",
         dict(string=TEXT, regex_pattern="(", mode="First Match", case_insensitive=True, multiline=False,
              dotall=False, group_index=1)),
        ("match_yes", "RegexMatch", dict(string=TEXT, regex_pattern=r"APPLES", case_insensitive=True,
                                         multiline=False, dotall=False)),
        ("match_case", "RegexMatch", dict(string=TEXT, regex_pattern=r"APPLES", case_insensitive=False,
                                          multiline=False, dotall=False)),
        ("match_bad_pattern", "RegexMatch", dict(string=TEXT, regex_pattern="[", case_insensitive=True,
                                                 multiline=False, dotall=False)),
        ("regex_replace", "RegexReplace", dict(string=TEXT, regex_pattern=r"(\d+)", replace=r"<\1>")),
        ("regex_replace_count", "RegexReplace",
         dict(string=TEXT, regex_pattern=r"L", replace="_", case_insensitive=True, multiline=False, dotall=False,
              count=2)),
        ("regex_replace_anchor", "RegexReplace",
         dict(string=TEXT, regex_pattern=r"^\s*s", replace="S", case_insensitive=True, multiline=True)),
    ]
    return cases


def all_cases() -> list[tuple[str, str, dict]]:
    return image_cases() + latent_cases() + string_cases()


# ---------------------------------------------------------------------------------------------
# Tiling: comfy.utils.tiled_scale over a function whose output depends on where a tile lies, so
# every offset, ramp and weight shows in the result.

def tile_function(scale: float, out_channels: int):
    """A fixed 3x3 convolution (zero-padded, so tile borders change it), resized by `scale`."""
    weight = _randn(20, out_channels, 3, 3, 3) / 5

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv2d(x, weight.to(x), padding=1)
        size = [round(s * scale) for s in x.shape[2:]]
        return torch.nn.functional.interpolate(y, size=size, mode="nearest-exact") + x.mean()

    return fn


# (case id, input, tile (height, width), overlap, scale, out channels)
TILING_CASES = [
    ("up4", _rand(21, 1, 3, 29, 41), (16, 20), 6, 4, 3),
    ("same", _rand(22, 1, 3, 30, 30), (12, 12), 4, 1, 2),
    ("down8", _rand(23, 1, 3, 96, 136), (48, 64), 16, 1 / 8, 4),
    ("single_tile", _rand(24, 1, 3, 10, 12), (16, 20), 6, 2, 3),
    ("ramps_meet", _rand(25, 1, 3, 20, 9), (8, 9), 5, 1, 3),
]

# Tiled VAE: the tiny test VAE (tests/models_tiny.py's layout and seeding), through ComfyUI's
# VAE.decode_tiled_/encode_tiled_ and the VAEDecodeTiled/VAEEncodeTiled nodes.
VAE_SEED = 1
VAE_LATENT = _randn(26, 1, 4, 12, 10)
VAE_PIXELS = _rand(27, 1, 100, 84, 3)  # not a multiple of 8: the encoder crops to 96 x 80
# (node, tile_size, overlap)
VAE_NODE_CASES = [("VAEDecodeTiled", 64, 32), ("VAEDecodeTiled", 64, 0), ("VAEDecodeTiled", 128, 64),
                  ("VAEEncodeTiled", 64, 16), ("VAEEncodeTiled", 128, 32)]
