"""The saving nodes: what each writes (keys, values, metadata, file names), compared with the layout
the tiny checkpoints were built in (the released layouts, tests.models_tiny) and with ComfyUI's
rules; every file loads back through our loaders to the same model. That ComfyUI's loaders read
these files too is checked by tests/data/model_files/check_in_comfyui.py (its record:
tests/data/model_files/comfyui_load_check.json, asserted below).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.model_files import encode, place, session

UNET = "model.diffusion_model."
CHECK = Path(__file__).parent / "data" / "model_files" / "comfyui_load_check.json"


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


@pytest.fixture(scope="module")
def s(tiny_checkpoint, tmp_path_factory):
    from tests.models_tiny import write_tiny_full_checkpoint

    base = tmp_path_factory.mktemp("saving")
    for family in ("sd15", "sd21_v", "sdxl", "sd21_unclip_h"):
        place(base, "checkpoints", f"{family}.safetensors", source=tiny_checkpoint(family))
    write_tiny_full_checkpoint(base / "models" / "checkpoints" / "sd15_other.safetensors", "sd15", seed=1)
    return session(base)


def out(s, *parts) -> Path:
    return s.base.joinpath("output", *parts)


PROMPT = {"1": {"class_type": "CheckpointSave", "inputs": {"filename_prefix": "checkpoints/ComfyUI"}}}
WORKFLOW = {"workflow": {"nodes": [], "links": []}}


@pytest.mark.parametrize("family", ["sd15", "sd21_v", "sdxl"])
def test_checkpoint_save_writes_the_released_layout_and_comfyuis_metadata(s, family, tiny_checkpoint):
    model, clip, vae = s.node("CheckpointLoaderSimple", ckpt_name=f"{family}.safetensors")
    s.node("CheckpointSave", model=model, clip=clip, vae=vae, filename_prefix=f"checkpoints/{family}",
           prompt=PROMPT, extra_pnginfo=WORKFLOW)
    sd, metadata = read(out(s, "checkpoints", f"{family}_00001_.safetensors"))
    original = load_file(str(tiny_checkpoint(family)))
    expected = set(original)
    if family == "sd15":  # ComfyUI's SD1 saver writes no position_ids (its CLIP has none)
        expected.discard("cond_stage_model.transformer.text_model.embeddings.position_ids")
    assert set(sd) == expected
    for key in expected:
        assert torch.equal(sd[key], original[key].to(sd[key].dtype)), key
    assert metadata["prompt"] == json.dumps(PROMPT) and metadata["workflow"] == json.dumps(WORKFLOW["workflow"])
    assert metadata["modelspec.predict_key"] == ("v" if family == "sd21_v" else "epsilon")
    if family == "sdxl":
        assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
        assert metadata["modelspec.title"] == "sdxl 1"
        assert metadata["modelspec.sai_model_spec"] == "1.0.0" and metadata["modelspec.implementation"] == "sgm"
    else:
        assert not any(k.startswith("modelspec.") and k != "modelspec.predict_key" for k in metadata)


def test_saved_checkpoints_count_up_and_load_back_to_the_same_images(s):
    model, clip, vae = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    for _ in range(2):
        s.node("CheckpointSave", model=model, clip=clip, vae=vae, filename_prefix="checkpoints/again")
    names = sorted(p.name for p in out(s, "checkpoints").glob("again_*"))
    assert names == ["again_00001_.safetensors", "again_00002_.safetensors"]
    assert "again_00002_.safetensors" in s.runtime.env.folders.filenames("checkpoints")  # output/ is listed
    back_model, back_clip, back_vae = s.node("CheckpointLoaderSimple", ckpt_name="again_00002_.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(encode(clip), encode(back_clip)))
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vae.decode(latent), back_vae.decode(latent))
    assert _same_weights(model, back_model)


def _same_weights(a, b) -> bool:
    sa, sb = a.model.diffusion_model.state_dict(), b.model.diffusion_model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_lora_patched_model_is_saved_with_the_lora_in_its_weights(s):
    from diffusion.model_management import load_models_gpu

    model, clip, vae = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    key = "diffusion_model.input_blocks.1.1.proj_in.weight"
    patched = model.clone()
    delta = torch.full_like(model.model_state_dict()[key], 0.25)
    patched.add_patches({key: (delta,)}, 1.0)
    s.node("CheckpointSave", model=patched, clip=clip, vae=vae, filename_prefix="checkpoints/patched")
    sd, _ = read(out(s, "checkpoints", "patched_00001_.safetensors"))
    load_models_gpu([model])  # the unpatched model back on its weights
    original = model.model.diffusion_model.state_dict()["input_blocks.1.1.proj_in.weight"]
    torch.testing.assert_close(sd[UNET + "input_blocks.1.1.proj_in.weight"], original + 0.25)


def test_disable_metadata_leaves_the_prompt_out(tmp_path, tiny_checkpoint):
    from tests.conftest import make_runtime
    from tests.node_helpers import node_context

    place(tmp_path, "checkpoints", "sd15.safetensors", source=tiny_checkpoint("sd15"))
    runtime = make_runtime(tmp_path, "--disable-metadata")
    node = lambda name, **kw: runtime.registry.get(name).cls().run(node_context(runtime.registry, name), **kw)
    model, _clip, vae = node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    node("VAESave", vae=vae, filename_prefix="vae/quiet", prompt=PROMPT)
    node("ModelSave", model=model, filename_prefix="diffusion_models/quiet", prompt=PROMPT)
    _, metadata = read(tmp_path / "output" / "vae" / "quiet_00001_.safetensors")
    assert metadata == {}
    _, metadata = read(tmp_path / "output" / "diffusion_models" / "quiet_00001_.safetensors")
    assert metadata == {"modelspec.predict_key": "epsilon"}


def test_model_save_writes_the_unet_alone_and_unetloader_reads_it(s, tiny_checkpoint):
    model, _, _ = s.node("CheckpointLoaderSimple", ckpt_name="sd21_v.safetensors")
    s.node("ModelSave", model=model, filename_prefix="diffusion_models/v")
    sd, metadata = read(out(s, "diffusion_models", "v_00001_.safetensors"))
    original = load_file(str(tiny_checkpoint("sd21_v")))
    assert set(sd) == {k for k in original if k.startswith(UNET)} | {"v_pred"}
    assert metadata["modelspec.predict_key"] == "v"
    (back,) = s.node("UNETLoader", unet_name="v_00001_.safetensors", weight_dtype="default")
    assert back.get_model_object("model_sampling").prediction == "v_prediction"
    assert _same_weights(model, back)


def test_clip_save_writes_one_file_per_text_encoder_that_the_clip_loaders_read(s):
    _, clip, _ = s.node("CheckpointLoaderSimple", ckpt_name="sdxl.safetensors")
    s.node("CLIPSave", clip=clip, filename_prefix="clip/xl", prompt=PROMPT)
    l_sd, metadata = read(out(s, "clip", "xl_clip_l_00001_.safetensors"))
    g_sd, _ = read(out(s, "clip", "xl_clip_g_00001_.safetensors"))
    assert metadata["format"] == "pt" and metadata["prompt"] == json.dumps(PROMPT)
    assert all(k.startswith("text_model.") for k in l_sd)
    assert {k for k in g_sd if not k.startswith("text_model.")} == {"text_projection.weight", "logit_scale"}
    (back,) = s.node("DualCLIPLoader", clip_name1="xl_clip_g_00001_.safetensors",
                     clip_name2="xl_clip_l_00001_.safetensors", type="sdxl")
    assert all(torch.equal(a, b) for a, b in zip(encode(clip), encode(back)))
    _, sd1_clip, _ = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    s.node("CLIPSave", clip=sd1_clip, filename_prefix="clip/one")
    (back,) = s.node("CLIPLoader", clip_name="one_clip_l_00001_.safetensors", type="stable_diffusion")
    assert all(torch.equal(a, b) for a, b in zip(encode(sd1_clip), encode(back)))


def test_vae_save_round_trips(s):
    _, _, vae = s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors")
    s.node("VAESave", vae=vae, filename_prefix="vae/tiny")
    sd, metadata = read(out(s, "vae", "tiny_00001_.safetensors"))
    assert set(sd) == set(vae.get_sd()) and metadata["prompt"] == ""
    (back,) = s.node("VAELoader", vae_name="tiny_00001_.safetensors")
    latent = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(vae.decode(latent), back.decode(latent))


def test_image_only_checkpoint_save_keeps_the_vision_tower_under_its_prefix(s):
    model, _, vae, vision = s.node("unCLIPCheckpointLoader", ckpt_name="sd21_unclip_h.safetensors")
    s.node("ImageOnlyCheckpointSave", model=model, clip_vision=vision, vae=vae, filename_prefix="checkpoints/img")
    sd, _ = read(out(s, "checkpoints", "img_00001_.safetensors"))
    tower = {k for k in sd if k.startswith("embedder.model.visual.")}
    assert tower == {"embedder.model.visual." + k for k in vision.get_sd()}
    assert not any(k.startswith("cond_stage_model.") for k in sd)  # no CLIP given, none written
    back_model, back_vision, _ = s.node("ImageOnlyCheckpointLoader", ckpt_name="img_00001_.safetensors")
    image = torch.rand(1, 30, 30, 3, generator=torch.Generator().manual_seed(2))
    # same values; the original tower's q/k/v are views into OpenCLIP's fused matrix (other alignment)
    torch.testing.assert_close(vision.encode_image(image).image_embeds, back_vision.encode_image(image).image_embeds,
                               atol=1e-6, rtol=1e-6)
    assert type(back_model.model).__name__ == "SD21UNCLIP"


def _subtract(a, b):
    """ModelMergeSubtract's result: a's weights minus b's, as weight patches on a clone of a."""
    m = a.clone()
    for key, patches in b.get_key_patches("diffusion_model.").items():
        m.add_patches({key: patches}, -1.0, 1.0)
    return m


def _subtract_clip(a, b):
    m = a.clone()
    for key, patches in b.get_key_patches().items():
        if not key.endswith((".position_ids", ".logit_scale")):
            m.add_patches({key: patches}, -1.0, 1.0)
    return m


@pytest.fixture(scope="module")
def pair(s):
    return (s.node("CheckpointLoaderSimple", ckpt_name="sd15.safetensors"),
            s.node("CheckpointLoaderSimple", ckpt_name="sd15_other.safetensors"))


def test_lora_save_full_diff_turns_one_model_into_the_other(s, pair):
    (m1, c1, _), (m2, c2, _) = pair
    s.node("LoraSave", filename_prefix="loras/full", rank=8, lora_type="full_diff", bias_diff=True,
           model_diff=_subtract(m1, m2), text_encoder_diff=_subtract_clip(c1, c2))
    sd, metadata = read(out(s, "loras", "full_00001_.safetensors"))
    assert metadata == {} and all(v.dtype == torch.float16 for v in sd.values())
    assert "diffusion_model.input_blocks.0.0.diff" in sd and "diffusion_model.input_blocks.0.0.diff_b" in sd
    assert any(k.startswith("text_encoders.clip_l.transformer.text_model.") for k in sd)
    model, clip = s.node("LoraLoader", model=m2, clip=c2, lora_name="full_00001_.safetensors", strength_model=1.0,
                         strength_clip=1.0)
    from diffusion.model_management import load_models_gpu

    load_models_gpu([model])
    got = model.model.diffusion_model.state_dict()
    load_models_gpu([m1])
    want = m1.model.diffusion_model.state_dict()
    for key in want:  # the differences went through fp16
        torch.testing.assert_close(got[key], want[key], atol=2e-3, rtol=2e-3)
    # the text encoder moves to the other model's too
    torch.testing.assert_close(encode(clip)[0], encode(c1)[0], atol=2e-2, rtol=2e-2)


def test_lora_save_standard_extracts_rank_r_factors_of_every_matrix(s, pair):
    from diffusion.checkpoint_save import extract_lora
    from diffusion.model_management import load_models_gpu

    (m1, _c1, _), (m2, _, _) = pair
    load_models_gpu([m2])  # m2's own weights back in its network (a LoRA clone of it may have run)
    diff = _subtract(m1, m2)
    s.node("LoraSave", filename_prefix="loras/std", rank=4, lora_type="standard", bias_diff=False, model_diff=diff)
    sd, _ = read(out(s, "loras", "std_00001_.safetensors"))
    assert not any(k.endswith(".diff_b") for k in sd)
    key = "input_blocks.1.1.proj_in"
    load_models_gpu([m1])  # the diff shares m1's network: its own weights back first
    w1, w2 = (m.model.diffusion_model.state_dict()[key + ".weight"].clone() for m in (m1, m2))
    up, down = extract_lora(w1 - w2, 4)
    torch.testing.assert_close(sd[f"diffusion_model.{key}.lora_up.weight"], up.half())
    torch.testing.assert_close(sd[f"diffusion_model.{key}.lora_down.weight"], down.half())
    assert sd[f"diffusion_model.{key}.lora_down.weight"].shape[0] == 4
    (patched,) = s.node("LoraLoaderModelOnly", model=m2, lora_name="std_00001_.safetensors", strength_model=1.0)
    assert len(patched.patches) > len([k for k in sd if k.endswith(".diff")])  # every file key was understood
    s.node("LoraSave", filename_prefix="loras/none", rank=4, lora_type="standard", bias_diff=False)
    assert not out(s, "loras").joinpath("none_00001_.safetensors").exists()  # nothing to save: nothing written


def test_comfyui_loaded_our_saved_files():
    """The record of tests/data/model_files/check_in_comfyui.py: ComfyUI a125cd84's own loaders read
    every file our saving nodes wrote, detecting the model type and finding every key."""
    record = json.loads(CHECK.read_text())
    assert record["comfyui"] == "a125cd84"
    for name, result in record["files"].items():
        assert result["ok"], (name, result)
    assert {"CheckpointSave", "ModelSave", "CLIPSave", "VAESave", "ImageOnlyCheckpointSave", "LoraSave"} <= {
        r["node"] for r in record["files"].values()}
