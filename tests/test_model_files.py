"""The loader nodes on files in the real layouts: bare and diffusers UNets (against diffusers'
UNet2DConditionModel on the same weights), fp8 weight storage, text encoder files (against the
checkpoint's own CLIP), the old config loader, diffusers folders (against diffusers and
transformers), checkpoints with and without a CLIP vision tower, refusals by name, and the
conditioning nodes through sampling (unCLIP, GLIGEN, hypernetworks, union ControlNet type,
ControlNet-only prompts). Numerical agreement with ComfyUI's own code is tests/test_loader_parity.py.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.checkpoint import CheckpointError
from tests.model_files import component, encode, place, session
from tests.models_tiny import randomize_

UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def files(tiny_checkpoint, tmp_path_factory):
    """A base folder with the tiny checkpoints and files cut from them."""
    base = tmp_path_factory.mktemp("model_files")
    for family in ("sd15", "sd21_v", "sdxl", "sd21_unclip_h", "sd15_ip2p"):
        place(base, "checkpoints", f"{family}.safetensors", source=tiny_checkpoint(family))
    sd15 = tiny_checkpoint("sd15")
    place(base, "diffusion_models", "sd15_bare.safetensors", component(sd15, UNET))
    place(base, "text_encoders", "clip_l.safetensors", component(sd15, "cond_stage_model.transformer."))
    place(base, "text_encoders", "clip_h_openclip.safetensors", component(tiny_checkpoint("sd21_v"),
                                                                           "cond_stage_model.model."))
    sdxl = tiny_checkpoint("sdxl")
    place(base, "text_encoders", "sdxl_clip_l.safetensors", component(sdxl, "conditioner.embedders.0.transformer."))
    place(base, "text_encoders", "sdxl_clip_g.safetensors", component(sdxl, "conditioner.embedders.1.model."))
    return base


@pytest.fixture(scope="module")
def s(files):
    return session(files)


# ---------------------------------------------------------------------------------------------
# UNETLoader


def _unet_sd(model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}


def test_unet_loader_reads_bare_files_and_checkpoints_alike(s, tiny_checkpoint):
    (bare,) = s.node("UNETLoader", unet_name="sd15_bare.safetensors", weight_dtype="default")
    original = component(tiny_checkpoint("sd15"), UNET)
    ours = _unet_sd(bare)
    assert set(ours) == set(original)
    assert all(torch.equal(ours[k], original[k]) for k in original)
    assert bare.model.checkpoint_family == "sd1" or bare.model.family == "sd1"


def test_unet_loader_reads_diffusers_unets_as_diffusers_computes_them(s, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from diffusion.unet import UNetConfig
    from tests.models_tiny import diffusers_unet_config

    config = UNetConfig.from_state_dict(component(s.base / "models" / "checkpoints" / "sd15.safetensors", UNET),
                                        prefix="")
    dcfg = diffusers_unet_config(config)
    reference = randomize_(diffusers.UNet2DConditionModel(**dcfg), 5).eval()
    place(s.base, "diffusion_models", "diffusers_unet.safetensors", reference.state_dict())
    (model,) = s.node("UNETLoader", unet_name="diffusers_unet.safetensors", weight_dtype="default")
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 6, generator=gen), torch.randn(2, 5, 768, generator=gen)
    t = torch.tensor([900.0, 20.0])
    with torch.no_grad():
        ours = model.model.diffusion_model(x, t, context=ctx)
        theirs = reference(x, t, ctx).sample
    assert theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # and diffusers' own original->diffusers conversion inverts ours, for every family's layout
    for family in ("sd15", "sd21_v", "sdxl"):
        original = component(s.base / "models" / "checkpoints" / f"{family}.safetensors", UNET)
        original.pop("v_pred", None)
        cfg = UNetConfig.from_state_dict(original, prefix="")
        from diffusion.diffusers_layout import diffusers_unet_to_original

        dcfg = diffusers_unet_config(cfg) if not cfg.adm_in_channels else {
            **diffusers_unet_config(UNetConfig(**{**cfg.to_dict(), "adm_in_channels": None})),
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": cfg.adm_in_channels}
        back = diffusers_unet_to_original(convert_ldm_unet_checkpoint({UNET + k: v for k, v in original.items()},
                                                                      dcfg))
        assert set(back) == set(original), family
        assert all(torch.equal(back[k], original[k]) for k in original), family


def test_fp8_weights_are_stored_in_8_bits_and_compute_as_comfyui(s):
    (full,) = s.node("UNETLoader", unet_name="sd15_bare.safetensors", weight_dtype="default")
    (fp8,) = s.node("UNETLoader", unet_name="sd15_bare.safetensors", weight_dtype="fp8_e4m3fn")
    unet = fp8.model.diffusion_model
    stored = {p.dtype for p in unet.parameters()}
    assert stored == {torch.float8_e4m3fn}
    # ComfyUI's fp8 path: weights rounded to fp8 once, each layer computing with them upcast
    from diffusion.unet import UNetModel

    rounded = UNetModel(unet.config)
    rounded.load_state_dict({k: v.to(torch.float8_e4m3fn).float() for k, v in _unet_sd(full).items()})
    gen = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 768, generator=gen), torch.tensor([500.0])
    with torch.no_grad():
        got, want, exact = unet(x, t, context=ctx), rounded.eval()(x, t, context=ctx), full.model.diffusion_model(
            x, t, context=ctx)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - exact).abs().max() > 1e-4  # the rounding is real
    assert full.model.diffusion_model.time_embed[0].weight.dtype == torch.float32  # separate cache entries


def test_unet_loader_refuses_video_and_non_unet_files_by_name(s, tiny_checkpoint):
    sd = load_file(str(tiny_checkpoint("sd21_v")))
    sd[UNET + "input_blocks.1.0.time_stack.in_layers.0.weight"] = torch.zeros(4)
    place(s.base, "diffusion_models", "svd.safetensors", sd)
    with pytest.raises(CheckpointError, match="Stable Video Diffusion"):
        s.node("UNETLoader", unet_name="svd.safetensors", weight_dtype="default")
    place(s.base, "checkpoints", "svd.safetensors", source=s.base / "models" / "diffusion_models" / "svd.safetensors")
    with pytest.raises(CheckpointError, match="Stable Video Diffusion"):
        s.node("ImageOnlyCheckpointLoader", ckpt_name="svd.safetensors")
    with pytest.raises(ValueError, match="weight_dtype 'fp4' is not one of"):
        s.node("UNETLoader", unet_name="sd15_bare.safetensors", weight_dtype="fp4")


# ---------------------------------------------------------------------------------------------
# text encoders


def test_clip_loader_matches_the_checkpoints_own_text_encoder(s):
    for ckpt, clip_name in (("sd15.safetensors", "clip_l.safetensors"),
                            ("sd21_v.safetensors", "clip_h_openclip.safetensors")):
        _, reference, _ = s.node("CheckpointLoaderSimple", ckpt_name=ckpt)
        (clip,) = s.node("CLIPLoader", clip_name=clip_name, type="stable_diffusion")
        assert type(clip.cond_stage_model) is type(reference.cond_stage_model)
        for got, want in zip(encode(clip), encode(reference)):
            assert torch.equal(got, want), clip_name


def test_dual_clip_loader_builds_sdxls_encoder_in_either_order(s):
    _, reference, _ = s.node("CheckpointLoaderSimple", ckpt_name="sdxl.safetensors")
    want = encode(reference)
    for names in (("sdxl_clip_l.safetensors", "sdxl_clip_g.safetensors"),
                  ("sdxl_clip_g.safetensors", "sdxl_clip_l.safetensors")):
        (clip,) = s.node("DualCLIPLoader", clip_name1=names[0], clip_name2=names[1], type="sdxl")
        got = encode(clip)
        assert got[0].shape[-1] == 2048 and got[1].shape[-1] == 1280
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_text_encoder_types_and_files_we_do_not_run_are_refused_by_name(s):
    with pytest.raises(CheckpointError, match="sd3"):
        s.node("CLIPLoader", clip_name="clip_l.safetensors", type="sd3")
    with pytest.raises(CheckpointError, match="flux"):
        s.node("DualCLIPLoader", clip_name1="sdxl_clip_l.safetensors", clip_name2="sdxl_clip_g.safetensors",
               type="flux")
    place(s.base, "text_encoders", "t5.safetensors", {"encoder.block.0.layer.0.SelfAttention.k.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="T5"):
        s.node("CLIPLoader", clip_name="t5.safetensors", type="stable_diffusion")
    with pytest.raises(CheckpointError, match="no SD1.x/SD2.x/SDXL encoder"):
        s.node("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="sdxl_clip_l.safetensors", type="sdxl")


def test_clip_loader_device_cpu_keeps_the_encoder_on_the_cpu(s):
    (clip,) = s.node("CLIPLoader", clip_name="clip_l.safetensors", type="stable_diffusion", device="cpu")
    assert clip.patcher.load_device == torch.device("cpu")
    # stored in fp16 as ComfyUI's CLIPLoader does on the CPU, computed in fp32
    assert {p.dtype for p in clip.cond_stage_model.parameters()} == {torch.float16}
    assert clip.encode_from_tokens(clip.tokenize("a cat")).dtype == torch.float32


def test_tower_kinds_follow_comfyuis_layer_rule_then_width():
    from diffusion.text_encoder_files import tower_kind

    def clip(layers, width):
        return {f"text_model.encoder.layers.{i}.mlp.fc1.weight": torch.zeros(1) for i in range(layers)} | {
            "text_model.embeddings.token_embedding.weight": torch.zeros(1, width)}

    assert tower_kind(clip(32, 64)) == "g" and tower_kind(clip(24, 64)) == "h" and tower_kind(clip(12, 768)) == "l"
    assert tower_kind(clip(1, 1280)) == "g" and tower_kind(clip(1, 1024)) == "h" and tower_kind(clip(1, 768)) == "l"


# ---------------------------------------------------------------------------------------------
# CheckpointLoader (with a config) and DiffusersLoader


def test_checkpoint_loader_applies_the_configs_parameterization_and_layer(s):
    configs = s.base / "models" / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / "v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n    cond_stage_config:\n"
                                    "      params:\n        layer_idx: -2\n")
    plain_model, plain_clip, _ = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    model, clip, _vae = s.node("CheckpointLoader", config_name="v.yaml", ckpt_name="sd15.safetensors")
    assert model.get_model_object("model_sampling").prediction == "v_prediction"
    assert plain_model.get_model_object("model_sampling").prediction == "eps"  # the cached MODEL is untouched
    assert clip.layer_idx == -2 and plain_clip.layer_idx is None
    (configs / "broken.yaml").write_text("just: text\n")
    with pytest.raises(ValueError, match="not an LDM model config"):
        s.node("CheckpointLoader", config_name="broken.yaml", ckpt_name="sd15.safetensors")


def test_diffusers_folder_loads_as_diffusers_and_transformers_compute_it(s, tiny_checkpoint):
    diffusers = pytest.importorskip("diffusers")
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion.unet import UNetConfig
    from tests.models_tiny import diffusers_unet_config

    folder = s.base / "models" / "diffusers" / "tiny-sd"
    config = UNetConfig.from_state_dict(component(tiny_checkpoint("sd15"), UNET), prefix="")
    unet = randomize_(diffusers.UNet2DConditionModel(**diffusers_unet_config(config)), 6).eval()
    vae = randomize_(diffusers.AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, latent_channels=4,
                                             down_block_types=("DownEncoderBlock2D",) * 4,
                                             up_block_types=("UpDecoderBlock2D",) * 4), 7).eval()
    text = randomize_(CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
                                                   num_attention_heads=12, hidden_act="quick_gelu")), 8).eval()
    for sub, module, name in (("unet", unet, "diffusion_pytorch_model.safetensors"),
                              ("vae", vae, "diffusion_pytorch_model.safetensors"),
                              ("text_encoder", text, "model.safetensors")):
        (folder / sub).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / sub / name))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert "tiny-sd" in s.runtime.env.folders.filenames("diffusers")
    model, clip, our_vae = s.node("DiffusersLoader", model_path="tiny-sd")
    gen = torch.Generator().manual_seed(2)
    x, ctx, t = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 3, 768, generator=gen), torch.tensor([300.0])
    with torch.no_grad():
        torch.testing.assert_close(model.model.diffusion_model(x, t, context=ctx), unet(x, t, ctx).sample,
                                   atol=1e-4, rtol=1e-4)
        pixels = our_vae.decode(x)
        want = ((vae.decode(x).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
        torch.testing.assert_close(pixels, want, atol=1e-4, rtol=1e-4)
        tokens = clip.tokenize("a red bus")
        cond = clip.encode_from_tokens(tokens)
        ids = torch.tensor([[t[0] for t in tokens["l"][0]]])
        text.half().float()  # our CLIP stores its weights in fp16 on the CPU and computes in fp32
        torch.testing.assert_close(cond, text(ids).last_hidden_state, atol=1e-4, rtol=1e-4)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    s.models.forget_files("diffusers")
    with pytest.raises(CheckpointError, match="vae/"):
        s.node("DiffusersLoader", model_path="tiny-sd")


# ---------------------------------------------------------------------------------------------
# checkpoints with CLIP vision towers


def test_image_only_and_unclip_loaders_give_the_checkpoints_tower(s):
    model, vision, vae = s.node("ImageOnlyCheckpointLoader", ckpt_name="sd15.safetensors")
    assert vision is None and vae is not None  # as ComfyUI: SD1.5 files carry no vision tower
    model, _clip, vae, vision = s.node("unCLIPCheckpointLoader", ckpt_name="sd21_unclip_h.safetensors")
    assert type(model.model).__name__ == "SD21UNCLIP"
    assert vision.model.visual_projection.out_features == 1024
    _, vision2, _ = s.node("ImageOnlyCheckpointLoader", ckpt_name="sd21_unclip_h.safetensors")
    assert vision2 is vision  # one tower per file, through the file cache


def test_unclip_embedding_reaches_the_unet_as_its_adm_vector(s):
    from diffusion.unclip import UnclipAdm

    model, clip, _vae, vision = s.node("unCLIPCheckpointLoader", ckpt_name="sd21_unclip_h.safetensors")
    image = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(3))
    (encoded,) = s.node("CLIPVisionEncode", clip_vision=vision, image=image, crop="center")
    (positive,) = s.node("CLIPTextEncode", clip=clip, text="a cat")
    (conditioned,) = s.node("unCLIPConditioning", conditioning=positive, clip_vision_output=encoded, strength=0.8,
                            noise_augmentation=0.2)
    assert conditioned[0][1]["unclip_conditioning"][0]["strength"] == 0.8
    assert "unclip_conditioning" not in positive[0][1]
    (same,) = s.node("unCLIPConditioning", conditioning=positive, clip_vision_output=encoded, strength=0.0,
                     noise_augmentation=0.2)
    assert same is positive
    seen = []
    unet = model.model.diffusion_model
    hook = unet.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(kwargs.get("y")), with_kwargs=True)
    try:
        (latent,) = s.node("EmptyLatentImage", width=32, height=32, batch_size=1)
        s.node("KSampler", model=model, seed=42, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
               positive=conditioned, negative=positive, latent_image=latent, denoise=1.0)
    finally:
        hook.remove()
    entry = {"unclip_conditioning": conditioned[0][1]["unclip_conditioning"], "seed": 42, "device": torch.device("cpu")}
    torch.testing.assert_close(seen[0][0:1].float(), UnclipAdm(2048)(entry), atol=1e-5, rtol=1e-5)


def test_clip_vision_loader_reads_both_layouts_and_refuses_other_encoders(s):
    from diffusion.clip_vision import transformers_to_openclip
    from tests import loader_cases as cases

    sd = cases.clip_vision_state_dict()
    place(s.base, "clip_vision", "tiny_hf.safetensors", sd)
    place(s.base, "clip_vision", "tiny_openclip.safetensors",
          {"visual." + k: v for k, v in transformers_to_openclip(sd).items()})
    (a,) = s.node("CLIPVisionLoader", clip_name="tiny_hf.safetensors")
    (b,) = s.node("CLIPVisionLoader", clip_name="tiny_openclip.safetensors")
    image = cases.CLIP_VISION_IMAGES["wide"]
    (ea,), (eb,) = (s.node("CLIPVisionEncode", clip_vision=v, image=image, crop="none") for v in (a, b))
    assert torch.equal(ea.image_embeds, eb.image_embeds)
    place(s.base, "clip_vision", "dino.safetensors", {"encoder.layer.0.layer_scale1.lambda1": torch.zeros(4)})
    with pytest.raises(CheckpointError, match="DINOv2"):
        s.node("CLIPVisionLoader", clip_name="dino.safetensors")


# ---------------------------------------------------------------------------------------------
# conditioning through sampling


def _sample(s, model, positive, negative, seed=3):
    (latent,) = s.node("EmptyLatentImage", width=32, height=32, batch_size=1)
    (out,) = s.node("KSampler", model=model, seed=seed, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal",
                    positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    return out["samples"]


@pytest.fixture(scope="module")
def sd15(s):
    model, clip, _vae = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    (positive,) = s.node("CLIPTextEncode", clip=clip, text="a house by a lake")
    (negative,) = s.node("CLIPTextEncode", clip=clip, text="")
    return model, clip, positive, negative, _sample(s, model, positive, negative)


def test_gligen_boxes_change_the_image_and_chain(s, sd15):
    from tests import loader_cases as cases

    model, clip, positive, negative, plain = sd15
    place(s.base, "gligen", "tiny_gligen.safetensors", cases.gligen_state_dict(cases.sd15_unet_state_dict()))
    (gligen,) = s.node("GLIGENLoader", gligen_name="tiny_gligen.safetensors")
    (boxed,) = s.node("GLIGENTextBoxApply", conditioning_to=positive, clip=clip, gligen_textbox_model=gligen,
                      text="a red boat", width=16, height=24, x=8, y=0)
    (twice,) = s.node("GLIGENTextBoxApply", conditioning_to=boxed, clip=clip, gligen_textbox_model=gligen,
                      text="a tree", width=8, height=8, x=16, y=16)
    kind, patcher, boxes = twice[0][1]["gligen"]
    assert kind == "position" and patcher is gligen
    assert [b[1:] for b in boxes] == [(3, 2, 0, 1), (1, 1, 2, 2)]  # (h, w, y, x) in latent cells
    _, pooled = clip.encode_from_tokens(clip.tokenize("a red boat"), return_pooled="unprojected")
    assert torch.equal(boxes[0][0], pooled)
    assert "gligen" not in positive[0][1]
    assert (_sample(s, model, boxed, negative) - plain).abs().max() > 1e-3


def test_hypernetwork_loader_patches_a_clone(s, sd15):
    from tests import loader_cases as cases

    model, _, positive, negative, plain = sd15
    path = s.base / "models" / "hypernetworks" / "tiny.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cases.hypernetwork_object(cases.sd15_unet_state_dict()), path)
    (patched,) = s.node("HypernetworkLoader", model=model, hypernetwork_name="tiny.pt", strength=0.5)
    patches = patched.model_options["transformer_options"]["patches"]
    assert len(patches["attn1_patch"]) == len(patches["attn2_patch"]) == 1
    assert "patches" not in model.model_options["transformer_options"]
    assert (_sample(s, patched, positive, negative) - plain).abs().max() > 1e-3
    torch.save({"activation_func": "gelu-tanh", 768: [{}, {}]}, path.with_name("odd.pt"))
    with pytest.raises(CheckpointError, match="activation 'gelu-tanh'"):
        s.node("HypernetworkLoader", model=model, hypernetwork_name="odd.pt", strength=1.0)


def test_style_model_loader_reads_the_adapter_and_refuses_redux(s):
    from tests import loader_cases as cases

    place(s.base, "style_models", "tiny_style.safetensors", cases.style_model_state_dict())
    (style,) = s.node("StyleModelLoader", style_model_name="tiny_style.safetensors")
    assert style.model.num_token == cases.STYLE["tokens"]
    place(s.base, "style_models", "redux.safetensors", {"redux_down.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="Flux Redux"):
        s.node("StyleModelLoader", style_model_name="redux.safetensors")


def test_instruct_pix2pix_checkpoint_samples_with_the_image_channels(s):
    model, clip, vae = s.node("CheckpointLoaderSimple", ckpt_name="sd15_ip2p.safetensors")
    assert type(model.model).__name__ == "SD15_instructpix2pix"
    (cond,) = s.node("CLIPTextEncode", clip=clip, text="make it snowy")
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    positive, negative, _latent = s.node("InstructPixToPixConditioning", positive=cond, negative=cond, vae=vae,
                                        pixels=image)
    a = _sample(s, model, positive, negative)
    other, _, _ = s.node("InstructPixToPixConditioning", positive=cond, negative=cond, vae=vae, pixels=1 - image)
    assert (a - _sample(s, model, other, negative)).abs().max() > 1e-3  # the image is an input


def test_union_type_and_controlnet_prompt_reach_the_controlnet():
    from diffusion.controlnet import ControlNet, ControlNetModel
    from nodes.controlnet import SetUnionControlNetType
    from tests import loader_cases as cases

    net = ControlNet(ControlNetModel(cases.union_controlnet_config()))
    (typed,) = SetUnionControlNetType().run(None, net, "canny/lineart/anime_lineart/mlsd")
    (auto,) = SetUnionControlNetType().run(None, typed, "auto")
    assert typed.extra_args["control_type"] == [3] and auto.extra_args["control_type"] == []
    assert "control_type" not in net.extra_args and typed is not net


def test_alimama_apply_is_plain_apply_for_controlnets_without_a_mask_channel(s, sd15):
    from tests.test_controlnet import tiny_sd15_controlnet_sd

    model, clip, positive, negative, _ = sd15
    place(s.base, "controlnet", "tiny_cn.safetensors",
          tiny_sd15_controlnet_sd(s.base / "models" / "checkpoints" / "sd15.safetensors", 9))
    (net,) = s.node("ControlNetLoader", control_net_name="tiny_cn.safetensors")
    _, _, vae = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 32, 32)
    a = s.node("ControlNetInpaintingAliMamaApply", positive=positive, negative=negative, control_net=net, vae=vae,
               image=image, mask=mask, strength=0.7, start_percent=0.0, end_percent=0.8)
    b = s.node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=net, image=image,
               strength=0.7, start_percent=0.0, end_percent=0.8, vae=vae)
    for got, want in zip(a, b):
        ca, cb = got[0][1]["control"], want[0][1]["control"]
        assert torch.equal(ca.cond_hint_original, cb.cond_hint_original) and ca.strength == cb.strength
        assert ca.timestep_percent_range == cb.timestep_percent_range
    assert torch.equal(_sample(s, model, *a), _sample(s, model, *b))
    # and the ControlNet-only prompt is what the ControlNet reads
    (prompted,) = s.node("CLIPTextEncodeControlnet", clip=clip, conditioning=a[0], text="edges")
    cond, pooled = clip.encode_from_tokens(clip.tokenize("edges"), return_pooled=True)
    assert torch.equal(prompted[0][1]["cross_attn_controlnet"], cond)
    assert torch.equal(prompted[0][1]["pooled_output_controlnet"], pooled)
    conds = model.model.extra_conds(**prompted[0][1], noise=torch.zeros(1, 4, 4, 4), device=torch.device("cpu"))
    assert torch.equal(conds["crossattn_controlnet"].cond, cond)
    assert (_sample(s, model, prompted, a[1]) - _sample(s, model, *a)).abs().max() > 1e-4
