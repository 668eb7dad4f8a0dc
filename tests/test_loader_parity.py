"""Our CLIP vision towers, style model, GLIGEN, hypernetworks, unCLIP adm, LoRA extraction, union
ControlNet and image-conditioning nodes against ComfyUI's own code on the same weights and inputs
(tests/loader_cases.py; the reference values were written by tests/data/loaders/make_reference.py,
which says how).

Tolerances: 1e-5 absolute (plus the same relative) for float32 paths through the same operations
in another implementation (attention kernels and summation order differ); exact for pure data
movement (key conversion, conditioning entries); LoRA factors 1e-4 (an SVD on another code path
of the same LAPACK can differ in the last bits).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests import loader_cases as cases

pytestmark = pytest.mark.usefixtures("recorded_threads")  # compares bit for bit with ComfyUI's recorded numbers

REFERENCE = load_file(str(Path(__file__).parent / "data" / "loaders" / "comfyui_reference.safetensors"))


def close(ours: torch.Tensor, name: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    ref = REFERENCE[name]
    assert tuple(ours.shape) == tuple(ref.shape), (name, tuple(ours.shape), tuple(ref.shape))
    torch.testing.assert_close(ours.float(), ref, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# CLIP vision


@pytest.fixture(scope="module")
def vision():
    from diffusion.clip_vision import load_clip_vision_state_dict

    return load_clip_vision_state_dict(cases.clip_vision_state_dict())


@pytest.mark.parametrize("image", sorted(cases.CLIP_VISION_IMAGES))
@pytest.mark.parametrize("crop", ["center", "none"])
def test_clip_vision_encode_matches_comfyui(vision, image, crop):
    out = vision.encode_image(cases.CLIP_VISION_IMAGES[image], crop=crop == "center")
    for field in ("last_hidden_state", "penultimate_hidden_states", "image_embeds"):
        close(out[field], f"clip_vision/{image}/{crop}/{field}")
    assert out.mm_projected is None


@pytest.mark.parametrize("image", sorted(cases.CLIP_VISION_IMAGES))
@pytest.mark.parametrize("crop", ["center", "none"])
def test_clip_preprocess_is_comfyuis(image, crop):
    from diffusion.clip_vision import clip_preprocess

    close(clip_preprocess(cases.CLIP_VISION_IMAGES[image], 28, crop=crop == "center"),
          f"clip_preprocess/{image}/{crop}", atol=0, rtol=0)


def test_openclip_layout_converts_as_comfyui_converts_it():
    from diffusion.clip_vision import to_transformers_layout, transformers_to_openclip

    openclip = {"visual." + k: v for k, v in transformers_to_openclip(cases.clip_vision_state_dict()).items()}
    ours = to_transformers_layout(openclip, "visual.")
    theirs = {k[len("clip_vision_openclip/"):] for k in REFERENCE if k.startswith("clip_vision_openclip/")}
    assert set(ours) == theirs
    for key, value in ours.items():
        close(value, f"clip_vision_openclip/{key}", atol=0, rtol=0)
    # and back: the round trip is the identity on the transformers layout
    original = cases.clip_vision_state_dict()
    assert all(torch.equal(ours[k], original[k]) for k in original)


# ---------------------------------------------------------------------------------------------
# style model


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    from safetensors.torch import save_file

    from diffusion.style_model import load_style_model

    path = tmp_path_factory.mktemp("style") / "tiny_style.safetensors"
    save_file(cases.style_model_state_dict(), str(path))
    return load_style_model(path)


def test_style_model_tokens_match_comfyui(vision, style):
    encoded = vision.encode_image(cases.CLIP_VISION_IMAGES["wide"], crop=True)
    close(style.get_cond(encoded), "style/get_cond")


@pytest.mark.parametrize("strength_type,strength", [("multiply", 0.6), ("attn_bias", 0.5), ("attn_bias", 1.0)])
def test_style_model_apply_matches_comfyui(vision, style, strength_type, strength):
    from nodes.style_model import StyleModelApply

    encoded = vision.encode_image(cases.CLIP_VISION_IMAGES["wide"], crop=True)
    conditioning = [[cases.STYLE_PROMPT, {"pooled_output": torch.zeros(1, 768)}]]
    (out,) = StyleModelApply().run(None, conditioning, style, encoded, strength, strength_type)
    tag = f"style/apply/{strength_type}/{strength}"
    close(out[0][0], f"{tag}/cond")
    if f"{tag}/attention_mask" in REFERENCE:
        close(out[0][1]["attention_mask"], f"{tag}/attention_mask", atol=0, rtol=0)
    else:
        assert "attention_mask" not in out[0][1]
    assert out[0][0].shape[1] == 77 + cases.STYLE["tokens"] * 2  # two images, four tokens each


# ---------------------------------------------------------------------------------------------
# GLIGEN and hypernetworks inside the UNet


@pytest.fixture(scope="module")
def unet():
    from diffusion.unet import UNetConfig, UNetModel

    sd = cases.sd15_unet_state_dict()
    weights = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    model = UNetModel(UNetConfig.from_state_dict(weights, prefix=""))
    model.load_state_dict(weights)
    return SimpleNamespace(model=model.eval(), sd=sd)


def run_unet(unet, patches=None):
    with torch.no_grad():
        return unet.model(cases.UNET_X, cases.UNET_T, context=cases.UNET_CONTEXT,
                          transformer_options={"patches": patches} if patches else {})


def test_unet_itself_matches_comfyuis(unet):
    close(run_unet(unet), "unet/plain", atol=0, rtol=0)   # fp32 on the CPU: ComfyUI's sums exactly


def test_gligen_boxes_steer_the_unet_as_in_comfyui(unet, tmp_path):
    from safetensors.torch import save_file

    from diffusion.gligen import load_gligen

    path = tmp_path / "gligen.safetensors"
    save_file(cases.gligen_state_dict(unet.sd), str(path))
    gligen = load_gligen(path).model
    assert len(gligen.module_list) == sum(1 for k in unet.sd if k.endswith("transformer_blocks.0.attn1.to_q.weight"))
    positioned = run_unet(unet, {"middle_patch": [gligen.set_position(cases.UNET_X.shape, cases.GLIGEN_BOXES, "cpu")]})
    close(positioned, "unet/gligen_position", atol=0, rtol=0)
    empty = run_unet(unet, {"middle_patch": [gligen.set_empty(cases.UNET_X.shape, "cpu")]})
    close(empty, "unet/gligen_empty", atol=0, rtol=0)
    assert (positioned - run_unet(unet)).abs().max() > 1e-2  # the gates are open: boxes matter


def test_hypernetwork_patches_the_unet_as_in_comfyui(unet, tmp_path):
    from diffusion.hypernetwork import load_hypernetwork

    path = tmp_path / "tiny.pt"
    torch.save(cases.hypernetwork_object(unet.sd), path)
    patch = load_hypernetwork(path, cases.HYPERNETWORK_STRENGTH)
    out = run_unet(unet, {"attn1_patch": [patch], "attn2_patch": [patch]})
    close(out, "unet/hypernetwork", atol=0, rtol=0)
    assert (out - run_unet(unet)).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# unCLIP


@pytest.mark.parametrize("name", sorted(cases.UNCLIP_CASES))
def test_unclip_adm_matches_comfyui(name):
    from diffusion.clip_vision import ClipVisionOutput
    from diffusion.unclip import UnclipAdm, sdxl_pooled

    dim, entries = cases.UNCLIP_CASES[name]
    conditioning = [{"clip_vision_output": ClipVisionOutput(image_embeds=e), "strength": s, "noise_augmentation": n}
                    for e, s, n in entries]
    entry = {"unclip_conditioning": conditioning, "device": torch.device("cpu"), "seed": cases.UNCLIP_SEED}
    ours = sdxl_pooled(entry) if dim == 1280 else UnclipAdm(2 * dim)(entry)
    close(ours, f"unclip/{name}")


def test_unclip_adm_without_image_is_zeros():
    from diffusion.unclip import UnclipAdm

    assert torch.equal(UnclipAdm(2048)({"device": torch.device("cpu")}), torch.zeros(1, 2048))


# ---------------------------------------------------------------------------------------------
# LoRA extraction


@pytest.mark.parametrize("name", sorted(cases.LORA_DIFFS))
def test_lora_extraction_matches_comfyui(name):
    from diffusion.checkpoint_save import extract_lora

    up, down = extract_lora(cases.LORA_DIFFS[name], cases.LORA_RANK)
    close(up, f"lora/{name}/up", atol=1e-4, rtol=1e-4)
    close(down, f"lora/{name}/down", atol=1e-4, rtol=1e-4)


def test_a_rank_r_difference_is_recovered_by_its_rank_r_lora():
    from diffusion.checkpoint_save import extract_lora

    diff = cases.LORA_DIFFS["low_rank"]
    up, down = extract_lora(diff, 3)
    # the 0.99-quantile clamp cuts the largest 1% of entries; the rest reproduces the difference
    assert (up @ down - diff).abs().mean() < 0.05 * diff.abs().mean()


# ---------------------------------------------------------------------------------------------
# union ControlNet


@pytest.mark.parametrize("name", sorted(cases.UNION_TYPES))
def test_union_controlnet_matches_comfyui(name):
    from diffusion.controlnet import ControlNetModel

    net = ControlNetModel(cases.union_controlnet_config())
    net.load_state_dict(cases.union_controlnet_state_dict())
    with torch.no_grad():
        out = net.eval()(cases.UNION_X, cases.UNION_HINT, cases.UNION_T, cases.UNION_CONTEXT, y=cases.UNION_Y,
                         control_type=cases.UNION_TYPES[name])
    close(out["middle"][0], f"union/{name}/middle", atol=1e-4)
    for i, r in enumerate(out["output"]):
        close(r, f"union/{name}/output/{i}", atol=1e-4)


def test_union_types_beyond_the_file_are_refused_by_name():
    from diffusion.controlnet import ControlNetConfig, ControlNetModel

    config = cases.union_controlnet_config()
    six = ControlNetConfig(config.unet, config.hint_channels, union_types=6)
    net = ControlNetModel(six)
    with pytest.raises(ValueError, match=r"repaint \(7\) is beyond the 6 types"):
        net(cases.UNION_X, cases.UNION_HINT, cases.UNION_T, cases.UNION_CONTEXT, y=cases.UNION_Y, control_type=[7])


# ---------------------------------------------------------------------------------------------
# image conditioning


def test_instruct_pix2pix_conditioning_matches_comfyui(tiny_checkpoint, tmp_path):
    from tests.node_helpers import checkpoint_session

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "sd15.safetensors").symlink_to(tiny_checkpoint("sd15"))
    session = checkpoint_session(tmp_path, "sd15.safetensors")
    _, _, vae = session.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    cond = [[torch.zeros(1, 77, 768), {}]]
    pos, neg, latent = session.node("InstructPixToPixConditioning", positive=cond, negative=cond, vae=vae,
                                    pixels=cases.IP2P_PIXELS)
    close(pos[0][1]["concat_latent_image"], "ip2p/concat_latent_image", atol=1e-4)
    assert neg[0][1]["concat_latent_image"] is pos[0][1]["concat_latent_image"]
    close(latent["samples"], "ip2p/latent", atol=0, rtol=0)


def test_instruct_pix2pix_model_inputs_match_comfyui():
    from diffusion.model_variants import IP2P

    holder = IP2P()
    close(holder.concat_cond(noise=cases.IP2P_NOISE, device=torch.device("cpu"),
                             concat_latent_image=cases.IP2P_LATENT), "ip2p/concat_cond")
    close(holder.concat_cond(noise=cases.IP2P_NOISE, device=torch.device("cpu")), "ip2p/concat_cond_empty",
          atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(cases.UPSCALE_CASES))
def test_sd_4x_upscale_conditioning_matches_comfyui(name):
    from nodes.image_conditioning import SD_4XUpscale_Conditioning

    ratio, noise = cases.UPSCALE_CASES[name]
    cond = [[torch.zeros(1, 77, 768), {}]]
    pos, neg, latent = SD_4XUpscale_Conditioning().run(None, cases.UPSCALE_IMAGES, cond, cond, ratio, noise)
    close(pos[0][1]["concat_image"], f"sd4x/{name}/concat_image", atol=1e-6)
    assert neg[0][1]["noise_augmentation"] == pos[0][1]["noise_augmentation"] == noise
    close(latent["samples"], f"sd4x/{name}/latent", atol=0, rtol=0)
