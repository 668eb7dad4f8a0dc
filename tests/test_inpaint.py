"""Image-to-image, inpainting and outpainting: the nodes through the registry on tiny random-weight
checkpoints, against hand-worked answers and ComfyUI's published widget declarations (the
shipped example workflows run in tests/test_examples.py)."""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusion import ksampler as K
from graph.context import NodeContext
from tests.conftest import make_runtime

REPO = Path(__file__).resolve().parent.parent
OBJECT_INFO = json.loads((REPO / "tests" / "data" / "object_info_core.json").read_text())
SD1_SCALE = 0.18215  # SD1.x latent scale factor (model space = VAE latent * 0.18215)
# Checkpoint file names the tests load, and the tiny family standing in for each.
CHECKPOINTS = {"v1-5-pruned-emaonly.safetensors": "sd15", "sd-v1-5-inpainting.safetensors": "sd15_inpaint"}


def place_checkpoints(base: Path, tiny_checkpoint) -> None:
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name, family in CHECKPOINTS.items():
        source, target = tiny_checkpoint(family), folder / name
        if not target.exists():
            try:
                os.link(source, target)  # 190 MB each: a hard link where the file system allows it
            except OSError:
                shutil.copy(source, target)


@pytest.fixture(scope="module")
def rt(tmp_path_factory, tiny_checkpoint):
    base = tmp_path_factory.mktemp("inpaint_base")
    place_checkpoints(base, tiny_checkpoint)
    return make_runtime(base, "--cpu")


def node(rt, name: str, **inputs):
    """Runs a registered node the way the executor does (instance + NodeContext)."""
    node_type = rt.registry.get(name)
    ctx = NodeContext("test", "1", name, rt.env, {}, {}, threading.Event(), lambda _event, _data: None)
    return node_type.call(node_type.instantiate(), ctx, inputs)


@pytest.fixture(scope="module")
def sd15(rt):
    model, clip, vae = node(rt, "CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    return model, clip, vae


@pytest.fixture(scope="module")
def sd15_inpaint(rt):
    model, clip, vae = node(rt, "CheckpointLoaderSimple", ckpt_name="sd-v1-5-inpainting.safetensors")
    return model, clip, vae


class UNetInputs:
    """Records the UNet's (input, timesteps) per call through a forward pre-hook."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(lambda _m, args: self.calls.append(
            (args[0].detach().clone(), args[1].detach().clone())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def picture(b=1, h=16, w=16, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def encode_by_hand(vae, pixels_bhwc):
    """The VAE's own encoder on RGB in -1..1: the reference the nodes are compared with."""
    with torch.inference_mode():
        return vae.first_stage_model.encode(pixels_bhwc[..., :3].movedim(-1, 1) * 2.0 - 1.0).float()


def ksample(rt, model, clip, latent, steps, cfg, denoise, seed=1, sampler="euler", positive=None, negative=None):
    (pos,) = node(rt, "CLIPTextEncode", text="a red barn", clip=clip) if positive is None else (positive,)
    (neg,) = node(rt, "CLIPTextEncode", text="blurry", clip=clip) if negative is None else (negative,)
    (out,) = node(rt, "KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                  scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=denoise)
    return out


# ---------------------------------------------------------------------------------------------
# declarations


def test_widgets_defaults_and_outputs_are_comfyuis(rt):
    for name in ("VAEEncode", "VAEEncodeForInpaint", "SetLatentNoiseMask"):
        info = rt.registry.get(name).describe()
        expected = OBJECT_INFO[name]
        assert json.loads(json.dumps(info["input"]["required"])) == expected["input"]["required"], name
        assert info["input_order"]["required"] == expected["input_order"]["required"], name
        for key in ("output", "output_name", "display_name", "category"):
            assert json.loads(json.dumps(info[key])) == expected[key], (name, key)
    imc = rt.registry.get("InpaintModelConditioning").describe()
    assert imc["input_order"]["required"] == ["positive", "negative", "vae", "pixels", "mask", "noise_mask"]
    assert imc["input"]["required"]["noise_mask"][1]["default"] is True
    assert imc["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    assert imc["output_name"] == ["positive", "negative", "latent"]
    assert imc["category"] == "conditioning/inpaint"
    pad = rt.registry.get("ImagePadForOutpaint").describe()
    assert pad["display_name"] == "Pad Image for Outpainting" and pad["output"] == ["IMAGE", "MASK"]
    req = pad["input"]["required"]
    for side in ("left", "top", "right", "bottom"):
        assert list(req[side]) == ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}]
    assert {k: req["feathering"][1][k] for k in ("default", "min", "max", "step")} == {
        "default": 40, "min": 0, "max": 16384, "step": 1}


# ---------------------------------------------------------------------------------------------
# image to image


def test_vae_encode_centre_crops_to_multiples_of_8_and_keeps_batches(rt, sd15):
    _, _, vae = sd15
    image = picture(b=2, h=21, w=27, c=4, seed=3)  # RGBA: the alpha channel is not encoded
    (latent,) = node(rt, "VAEEncode", pixels=image, vae=vae)
    # 21 -> 16 rows from (21 % 8) // 2 = 2; 27 -> 24 columns from (27 % 8) // 2 = 1.
    expected = encode_by_hand(vae, image[:, 2:18, 1:25])
    assert latent["samples"].shape == expected.shape
    assert torch.allclose(latent["samples"], expected, atol=1e-5)
    (single,) = node(rt, "VAEEncode", pixels=image[1:], vae=vae)
    assert torch.allclose(single["samples"][0], latent["samples"][1], atol=1e-5)
    with pytest.raises(ValueError, match="too small to encode"):
        node(rt, "VAEEncode", pixels=picture(h=7, w=16), vae=vae)


def test_img2img_at_half_denoise_samples_the_schedule_tail_from_image_plus_noise(rt, sd15):
    model, clip, vae = sd15
    # 32x32 pixels -> a 4x4 latent (8 pixels per cell), which the UNet's one downsample halves to 2x2.
    (latent,) = node(rt, "VAEEncode", pixels=picture(h=32, w=32, seed=5), vae=vae)
    assert latent["samples"].shape == (1, 4, 4, 4)
    seed, steps = 17, 4
    with UNetInputs(model.model.diffusion_model) as rec:
        ksample(rt, model, clip, latent, steps=steps, cfg=1.0, denoise=0.5, seed=seed)
    sigmas = K.ksampler_sigmas(model, steps, "euler", "normal", 0.5)
    # By hand: denoise 0.5 keeps the last 4 + 1 of the int(4 / 0.5) = 8-step "normal" schedule,
    # sigma(t) for t = linspace(999, 0, 8) then 0, i.e. t = 999 * (3, 2, 1, 0) / 7; the UNet is
    # given the nearest table index of each sigma.
    by_hand = [round(999 * k / 7) for k in (3, 2, 1, 0)]
    assert by_hand == [428, 285, 143, 0]
    assert len(rec.calls) == steps and len(sigmas) == steps + 1 and float(sigmas[-1]) == 0.0
    assert [float(t[0]) for _, t in rec.calls] == by_hand
    ms = model.model.model_sampling
    assert torch.allclose(sigmas[:-1], ms.sigma(torch.tensor([999 * k / 7 for k in (3, 2, 1, 0)])), rtol=1e-5)
    # First step: the model-space latent plus seeded unit noise times sigmas[0] (not the
    # sqrt(1 + sigma^2) used from the top of the schedule), VP-scaled by 1 / sqrt(sigma^2 + 1).
    s0 = float(sigmas[0])
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(seed))
    expected = (latent["samples"] * SD1_SCALE + noise * s0) / math.sqrt(s0 * s0 + 1.0)
    assert torch.allclose(rec.calls[0][0], expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# noise masks


def test_set_latent_noise_mask_keeps_the_source_outside_the_mask(rt, sd15):
    model, clip, vae = sd15
    # 64x64 pixels -> an 8x8 latent; the hole is latent cells 3..4 (pixels 24..39) in both directions.
    image = picture(h=64, w=64, seed=0)
    (latent,) = node(rt, "VAEEncode", pixels=image, vae=vae)
    mask = torch.zeros(1, 64, 64)
    mask[:, 24:40, 24:40] = 1.0
    (masked,) = node(rt, "SetLatentNoiseMask", samples=latent, mask=mask)
    assert masked["noise_mask"].shape == (1, 1, 64, 64) and "noise_mask" not in latent
    out = ksample(rt, model, clip, masked, steps=3, cfg=7.0, denoise=1.0)["samples"]
    inside = F.interpolate(mask[:, None], size=out.shape[-2:], mode="bilinear")[:, 0] > 0.5
    expected_inside = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected_inside[:, 3:5, 3:5] = True
    assert torch.equal(inside, expected_inside)
    delta = (out - latent["samples"]).abs().amax(dim=1)
    # Latents: outside the mask the result is the source up to float rounding; inside, new.
    assert float(delta[~inside].max()) < 1e-5 and float(delta[inside].mean()) > 1.0
    (round_trip,) = node(rt, "VAEDecode", samples=latent, vae=vae)
    (decoded,) = node(rt, "VAEDecode", samples={"samples": out}, vae=vae)
    outside = mask[0] == 0
    # Pixels: the decoder's GroupNorm statistics and mid-block attention see the whole latent, so
    # new content inside shifts every decoded pixel a little. Tolerance: the round trip's own mean
    # error against the input over the same pixels (for the random tiny 8x VAE about 0.32; measured
    # drift 0.20).
    drift = (decoded - round_trip).abs()[0][outside].mean()
    round_trip_error = (round_trip - image).abs()[0][outside].mean()
    assert float(drift) < float(round_trip_error)
    # With the 8x VAE each latent cell reaches far into the picture, so sampling without the mask
    # also stays under that bound (measured 0.24): what tells the two apart is the region at least
    # two latent cells (16 pixels) from the hole, where masked sampling drifts about 0.14 and
    # unmasked sampling about 0.21. Bound: 0.8 x the unmasked drift there.
    free = ksample(rt, model, clip, latent, steps=3, cfg=7.0, denoise=1.0)["samples"]
    (decoded_free,) = node(rt, "VAEDecode", samples={"samples": free}, vae=vae)
    far = torch.ones(64, 64, dtype=torch.bool)
    far[8:56, 8:56] = False
    far_drift = (decoded - round_trip).abs()[0][far].mean()
    free_far_drift = (decoded_free - round_trip).abs()[0][far].mean()
    assert float(far_drift) < 0.8 * float(free_far_drift)


def test_vae_encode_for_inpaint_greys_the_mask_and_grows_it_like_comfyui(rt, sd15):
    _, _, vae = sd15
    image = picture(h=18, w=16, seed=2)  # 18 rows -> 16 from row (18 % 8) // 2 = 1
    mask = torch.zeros(1, 18, 16)
    mask[0, 5, 4] = 1.0  # one pixel; at (4, 4) after the crop
    (grown,) = node(rt, "VAEEncodeForInpaint", pixels=image, vae=vae, mask=mask, grow_mask_by=6)
    # An even 6x6 box (padding ceil(5 / 2) = 3) covers rows/columns p-2 .. p+3.
    expected = torch.zeros(1, 1, 16, 16)
    expected[0, 0, 2:8, 2:8] = 1.0
    assert torch.equal(grown["noise_mask"], expected)
    (odd,) = node(rt, "VAEEncodeForInpaint", pixels=image, vae=vae, mask=mask, grow_mask_by=3)
    expected = torch.zeros(1, 1, 16, 16)
    expected[0, 0, 3:6, 3:6] = 1.0  # an odd box grows symmetrically
    assert torch.equal(odd["noise_mask"], expected)
    (none,) = node(rt, "VAEEncodeForInpaint", pixels=image, vae=vae, mask=mask, grow_mask_by=0)
    assert torch.equal(none["noise_mask"], mask[:, None, 1:17])
    # Only the ungrown pixel is greyed before encoding.
    greyed = image[:, 1:17].clone()
    greyed[0, 4, 4, :] = 0.5
    assert torch.allclose(grown["samples"], encode_by_hand(vae, greyed), atol=1e-5)


def test_mask_is_resized_to_the_image_and_bad_inputs_are_named(rt, sd15):
    _, _, vae = sd15
    image = picture(h=16, w=16)
    small = torch.zeros(8, 8)
    small[:4] = 1.0  # top half; bilinear x2 gives rows 0..6 = 1, row 7 = 0.75, row 8 = 0.25, then 0
    (latent,) = node(rt, "VAEEncodeForInpaint", pixels=image, vae=vae, mask=small, grow_mask_by=0)
    assert torch.equal(latent["noise_mask"][0, 0], torch.cat([torch.ones(8, 16), torch.zeros(8, 16)]))
    with pytest.raises(ValueError, match="mask batch 3 does not match the image batch 2"):
        node(rt, "VAEEncodeForInpaint", pixels=picture(b=2), vae=vae, mask=torch.zeros(3, 16, 16), grow_mask_by=6)
    with pytest.raises(ValueError, match=r"pixels must be an IMAGE tensor \[B, H, W, C\]"):
        node(rt, "VAEEncodeForInpaint", pixels=torch.zeros(16, 16, 3), vae=vae, mask=small, grow_mask_by=6)
    with pytest.raises(ValueError, match="grow_mask_by must be in 0..64"):
        node(rt, "VAEEncodeForInpaint", pixels=image, vae=vae, mask=small, grow_mask_by=-1)
    with pytest.raises(ValueError, match="mask must be a MASK tensor"):
        node(rt, "SetLatentNoiseMask", samples={"samples": torch.zeros(1, 4, 8, 8)}, mask=torch.zeros(5))


def test_ddim_renoises_the_kept_region_with_seed_plus_one(rt, sd15):
    # ComfyUI's ddim is euler with inpaint noise drawn from manual_seed(seed + 1); seed 0 -> 1.
    model, clip, vae = sd15
    (latent,) = node(rt, "VAEEncode", pixels=picture(h=32, w=32, seed=4), vae=vae)  # a 4x4 latent
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1.0  # pixel columns 0..15 = latent columns 0..1 exactly
    (masked,) = node(rt, "SetLatentNoiseMask", samples=latent, mask=mask)
    with UNetInputs(model.model.diffusion_model) as rec:
        ksample(rt, model, clip, masked, steps=2, cfg=1.0, denoise=0.5, seed=0, sampler="ddim")
    s0 = float(K.ksampler_sigmas(model, 2, "ddim", "normal", 0.5)[0])
    renoise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(1))
    expected = (latent["samples"] * SD1_SCALE + renoise * s0) / math.sqrt(s0 * s0 + 1.0)
    keep = slice(2, None)  # latent columns 2.. are outside the mask (the tiny VAE downsamples by 8)
    assert torch.allclose(rec.calls[0][0][..., keep], expected[..., keep], atol=1e-4)


def test_denoise_mask_function_hook_replaces_the_mask(sd15):
    model, clip, _ = sd15
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("x"))
    seen = []

    def hook(sigma, mask, extra_options):
        seen.append((float(sigma[0]), extra_options["sigmas"].shape[0]))
        return torch.zeros_like(mask)  # nothing may change

    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = K.ksampler_sigmas(model, 3, "euler", "normal", 1.0)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    hooked = model.clone()
    hooked.set_model_denoise_mask_function(hook)
    out = K.sample(hooked, noise, cond, cond, 1.0, "cpu", K.ksampler_select("euler"), sigmas,
                   model_options=hooked.model_options, latent_image=latent, denoise_mask=torch.ones(1, 8, 8))
    assert len(seen) == 3 and seen[0] == (pytest.approx(float(sigmas[0])), 4)
    assert torch.allclose(out, latent, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# inpainting checkpoints (9 input channels)


def _hole_inputs():
    """A 64x64 picture and a mask on a block aligned to the VAE's 8-pixel cells, so the latent-size
    mask is exact: bilinear 8x downsampling reads each cell at its centre, between pixels 8i+3 and
    8i+4, both inside the cell."""
    image = picture(h=64, w=64, seed=9)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0
    greyed = image.clone()
    greyed[:, 16:48, 8:40, :] = 0.5
    latent_mask = torch.zeros(1, 8, 8)
    latent_mask[:, 2:6, 1:5] = 1.0  # the tiny VAE downsamples by 8
    return image, mask, greyed, latent_mask


def _check_unet_input(calls, latent_mask, masked_image_latent):
    """Diffusers' StableDiffusionInpaintPipeline feeds cat([latents, mask, masked_image_latents])."""
    assert calls, "the UNet was not called"
    for x, _t in calls:
        assert x.shape[1] == 9
        assert torch.equal(x[:, 4], latent_mask.expand(x.shape[0], -1, -1))
        assert torch.allclose(x[:, 5:9], masked_image_latent.expand(x.shape[0], -1, -1, -1), atol=1e-5)


def test_inpaint_model_conditioning_feeds_mask_then_masked_image_latent(rt, sd15_inpaint):
    model, clip, vae = sd15_inpaint
    image, mask, greyed, latent_mask = _hole_inputs()
    (pos,), (neg,) = node(rt, "CLIPTextEncode", text="a barn", clip=clip), node(rt, "CLIPTextEncode", text="", clip=clip)
    positive, negative, latent = node(rt, "InpaintModelConditioning", positive=pos, negative=neg, vae=vae,
                                      pixels=image, mask=mask, noise_mask=True)
    masked_latent = encode_by_hand(vae, greyed)
    assert torch.allclose(latent["samples"], encode_by_hand(vae, image), atol=1e-5)  # the untouched image
    assert torch.equal(latent["noise_mask"], mask[:, None])
    for conditioning in (positive, negative):
        assert torch.allclose(conditioning[0][1]["concat_latent_image"], masked_latent, atol=1e-5)
        assert torch.equal(conditioning[0][1]["concat_mask"], mask[:, None])
    assert "concat_mask" not in pos[0][1]  # the inputs are not modified
    with UNetInputs(model.model.diffusion_model) as rec:
        ksample(rt, model, clip, latent, steps=1, cfg=7.0, denoise=1.0, positive=positive, negative=negative)
    assert rec.calls[0][0].shape[0] == 2  # cond and uncond in one batch, both with the extra channels
    _check_unet_input(rec.calls, latent_mask, masked_latent * SD1_SCALE)
    (_, _, unmasked) = node(rt, "InpaintModelConditioning", positive=pos, negative=neg, vae=vae, pixels=image,
                            mask=mask, noise_mask=False)
    assert "noise_mask" not in unmasked


def test_inpaint_model_conditioning_crops_image_and_mask_alike(rt, sd15_inpaint):
    _, clip, vae = sd15_inpaint
    (pos,) = node(rt, "CLIPTextEncode", text="x", clip=clip)
    image = picture(h=20, w=19, seed=6)  # -> 16 x 16 from row 2, column 1
    mask = torch.zeros(1, 20, 19)
    mask[:, 2:10, 1:9] = 1.0
    positive, _, latent = node(rt, "InpaintModelConditioning", positive=pos, negative=pos, vae=vae,
                               pixels=image, mask=mask, noise_mask=True)
    expected_mask = torch.zeros(1, 1, 16, 16)
    expected_mask[..., :8, :8] = 1.0
    assert torch.equal(latent["noise_mask"], expected_mask)
    assert torch.allclose(latent["samples"], encode_by_hand(vae, image[:, 2:18, 1:17]), atol=1e-5)
    greyed = image[:, 2:18, 1:17].clone()
    greyed[:, :8, :8] = 0.5
    assert torch.allclose(positive[0][1]["concat_latent_image"], encode_by_hand(vae, greyed), atol=1e-5)


def test_vae_encode_for_inpaint_latent_reaches_an_inpainting_unet(rt, sd15_inpaint):
    model, clip, vae = sd15_inpaint
    image, mask, greyed, latent_mask = _hole_inputs()
    (latent,) = node(rt, "VAEEncodeForInpaint", pixels=image, vae=vae, mask=mask, grow_mask_by=0)
    with UNetInputs(model.model.diffusion_model) as rec:
        ksample(rt, model, clip, latent, steps=2, cfg=7.0, denoise=1.0)
    # Without concat extras the model takes the noise mask and the (greyed) latent being sampled.
    _check_unet_input(rec.calls, latent_mask, encode_by_hand(vae, greyed) * SD1_SCALE)


def test_concat_image_batch_is_resampled_as_comfyui_does(sd15_inpaint):
    model = sd15_inpaint[0]
    image = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 4, 3, 3)
    mask = torch.ones(2, 1, 3, 3)
    concat = model.model.concat_cond(noise=torch.zeros(4, 4, 3, 3), denoise_mask=mask, concat_latent_image=image)
    picked = concat[:, 1, 0, 0] / SD1_SCALE  # channel 0 is the mask, 1..4 the image
    assert picked.tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])  # nearest over the batch, not tiled


# ---------------------------------------------------------------------------------------------
# outpainting


def test_outpaint_padding_and_feathering_worked_example(rt):
    image = picture(b=2, h=5, w=6, seed=1)
    padded, mask = node(rt, "ImagePadForOutpaint", image=image, left=0, top=1, right=2, bottom=0, feathering=2)
    assert padded.shape == (2, 6, 8, 3) and mask.shape == (1, 6, 8)
    assert torch.equal(padded[:, 1:6, 0:6], image)
    assert torch.all(padded[:, 0] == 0.5) and torch.all(padded[:, :, 6:] == 0.5)
    # Inside the image, d = min(row from the padded top, 6 - column from the padded right) and
    # the mask is ((2 - d) / 2)^2 below d = 2: row 0 is 1, row 1 is 0.25, and the last column
    # (distance 6 - 5 = 1 from the right pad) 0.25; the pad itself is 1.
    q = 0.25
    expected = torch.tensor([
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [q, q, q, q, q, q, 1, 1],
        [0, 0, 0, 0, 0, q, 1, 1],
        [0, 0, 0, 0, 0, q, 1, 1],
        [0, 0, 0, 0, 0, q, 1, 1],
    ])
    assert torch.equal(mask[0], expected)


def test_outpaint_feathering_off_when_too_wide_and_thirds_from_a_left_pad(rt):
    image = picture(h=4, w=8)
    _, mask = node(rt, "ImagePadForOutpaint", image=image, left=8, top=0, right=0, bottom=0, feathering=2)
    assert torch.equal(mask[0, :, :8], torch.ones(4, 8)) and torch.equal(mask[0, :, 8:], torch.zeros(4, 8))
    _, mask = node(rt, "ImagePadForOutpaint", image=picture(h=8, w=8), left=8, top=0, right=0, bottom=0,
                   feathering=3)
    # Columns 0, 1, 2 from the left pad: v * v for v = (3 - d) / 3 in double, stored as float32.
    row = torch.tensor([((3 - d) / 3) * ((3 - d) / 3) for d in (0, 1, 2)] + [0.0] * 5, dtype=torch.float64).float()
    assert torch.equal(mask[0, 3, 8:], row)
    with pytest.raises(ValueError, match="left must not be negative"):
        node(rt, "ImagePadForOutpaint", image=image, left=-8, top=0, right=0, bottom=0, feathering=2)
