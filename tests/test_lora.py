"""LoRA: key names of real kohya files and of diffusers' layout against our modules, the patch maths
against independent references (float64 products; convolution/linear compositions), patches applied
once per patch set and the originals restored bit for bit, stacking, reporting of unusable keys,
and one CLI run."""
import collections
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from diffusion import model_patcher as MP
from diffusion.lora import (diffusers_unet_key_map, load_lora_for_models, model_lora_keys_clip, model_lora_keys_unet,
                            read_lora, text_key_map, unet_key_map)
from diffusion.model import DiffusionModel
from diffusion.model_management import load_models_gpu
from diffusion.patches import LoRAAdapter, patch_fits
from diffusion.text_encoders import SD1TextEncoder
from diffusion.unet import UNetConfig, UNetModel
from tests.node_helpers import checkpoint_session
from tests.models_tiny import diffusers_unet_config, tiny_unet, tiny_unet_state_dict
from tests import paths

REPO = Path(__file__).resolve().parent.parent
KEYS = paths.SPEC_KEYS
CKPT = "tiny_sd15.safetensors"
RTOL = 1e-6  # float32 patch vs float64 reference, relative to the weight's magnitude
RANK = 4

# diffusers module path -> (kind) for the tiny SD1.5 checkpoint's UNet (2 levels, conv proj_in/out).
SD15_UNET_TARGETS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "linear",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k": "linear",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v": "linear",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": "linear",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "linear",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": "linear",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2": "linear",
    "up_blocks.0.attentions.1.proj_in": "conv1x1",          # 4-D LoRA on a 1x1 conv
    "down_blocks.0.attentions.0.proj_out": "linear_on_conv",  # 2-D LoRA on a 1x1 conv (reshaped)
    "down_blocks.1.resnets.0.conv1": "locon",               # 3x3 conv, LoCon
}
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


# ---------------------------------------------------------------------------------------------
# LoRA files


Written = collections.namedtuple("Written", ["up", "down", "alpha"])


def lora_pair(shape, kind, gen, rank=RANK):
    """(up, down) for a weight of `shape`: 2-D for linear kinds, 4-D for conv kinds."""
    out_f, in_f = shape[0], shape[1]
    if kind == "locon":
        return torch.randn(out_f, rank, 1, 1, generator=gen), torch.randn(rank, in_f, *shape[2:], generator=gen)
    if kind == "conv1x1":
        return torch.randn(out_f, rank, 1, 1, generator=gen), torch.randn(rank, in_f, 1, 1, generator=gen)
    return torch.randn(out_f, rank, generator=gen), torch.randn(rank, in_f, generator=gen)


def kohya_name(diffusers_module: str, prefix="lora_unet_") -> str:
    return prefix + diffusers_module.replace(".", "_")


def write_lora(path: Path, modules: dict, layout: str, seed: int, with_alpha=True, extra=None) -> dict:
    """modules: {(kohya name, peft name): (shape, kind)}; returns {kohya name: Written} as written."""
    gen = torch.Generator().manual_seed(seed)
    sd, written = {}, {}
    for (kohya, peft), (shape, kind) in modules.items():
        up, down = lora_pair(shape, kind, gen)
        up, down = up * 0.1, down * 0.1
        alpha = float(torch.randint(1, 9, (1,), generator=gen)) if with_alpha else None
        if layout == "kohya":
            sd[f"{kohya}.lora_up.weight"], sd[f"{kohya}.lora_down.weight"] = up, down
            if alpha is not None:
                sd[f"{kohya}.alpha"] = torch.tensor(alpha)
        else:
            sd[f"{peft}.lora_B.weight"], sd[f"{peft}.lora_A.weight"] = up, down
            if alpha is not None:
                sd[f"{peft}.alpha"] = torch.tensor(alpha)
        written[kohya] = Written(up, down, alpha)
    sd.update(extra or {})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return written


def unet_of(env):
    return env.model.model.diffusion_model


def sd15_modules(env) -> dict:
    unet_map = unet_key_map(unet_of(env))
    text_map = text_key_map(env.clip.cond_stage_model)
    mods = {}
    for d, kind in SD15_UNET_TARGETS.items():
        mods[(kohya_name(d), "unet." + d)] = (unet_map[kohya_name(d)].shape, kind)
    for m in TEXT_TARGETS:
        kohya = f"lora_te_text_model_encoder_layers_0_{m.replace('.', '_')}"
        mods[(kohya, f"text_encoder.text_model.encoder.layers.0.{m}")] = (text_map[kohya].shape, "linear")
    return mods


def patch_keys(env) -> dict:
    """LoRA module name -> the ModelPatcher key of the weight it patches (MODEL or CLIP)."""
    return {**model_lora_keys_unet(env.model.model), **model_lora_keys_clip(env.clip.cond_stage_model)}


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def base(tiny_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("lora_base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "loras").mkdir(parents=True)
    shutil.copy(tiny_checkpoint("sd15"), base / "models" / "checkpoints" / CKPT)
    return base


@pytest.fixture(scope="module")
def env(base):
    session = checkpoint_session(base, CKPT)
    session.loras = base / "models" / "loras"
    return session


def weights_as_loaded(patcher) -> dict:
    """The network's tensors while `patcher` is the one loaded (its patches applied), copied."""
    load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def plain_weights(env) -> tuple[dict, dict]:
    return weights_as_loaded(env.model), weights_as_loaded(env.clip.patcher)


def expected(weight, adapters_strengths):
    """W + sum strength * alpha / rank * up @ down, in float64 (independent of the code's float32 path)."""
    out = weight.detach().double().clone()
    for adapter, strength in adapters_strengths:
        scale = 1.0 if adapter.alpha is None else adapter.alpha / adapter.down.shape[0]
        prod = torch.einsum("or,ri->oi", adapter.up.double().flatten(1), adapter.down.double().flatten(1))
        out += strength * scale * prod.reshape(weight.shape)
    return out


def assert_close_rel(actual, reference, what):
    """Within RTOL of the largest value; a half-precision weight (the CPU's text encoder storage)
    within one rounding of the exact value (relative 2 ** -11 per element)."""
    err = (actual.double() - reference).abs()
    if actual.dtype == torch.float16:
        assert (err <= 2 ** -11 * reference.abs() + 1e-7).all(), f"{what}: max error {err.max().item()}"
    else:
        assert err.max().item() <= RTOL * reference.abs().max().item() + 1e-12, f"{what}: max error {err.max()}"


def sample(env, model, clip, seed=3):
    (pos,) = env.node("CLIPTextEncode", text="a red house", clip=clip)
    (neg,) = env.node("CLIPTextEncode", text="blurry", clip=clip)
    (latent,) = env.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = env.node("KSampler", model=model, seed=seed, steps=2, cfg=5.0, sampler_name="euler",
                      scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return out["samples"]


def load(env, name, strength_model=1.0, strength_clip=1.0, model=None, clip=None):
    out = env.node("LoraLoader", model=model or env.model, clip=clip or env.clip, lora_name=name,
                   strength_model=strength_model, strength_clip=strength_clip)
    return out["result"] if isinstance(out, dict) else out


# ---------------------------------------------------------------------------------------------
# key names


def test_every_key_of_a_full_kohya_sd15_file_maps_to_a_module_of_matching_shape():
    rows = json.loads((KEYS / "sd15_lora_kohya_full.json").read_text())
    example = json.loads((KEYS / "sd15_lora_kohya_example.json").read_text())
    with torch.device("meta"):
        model, text = DiffusionModel(UNetModel(UNetConfig.sd15())), SD1TextEncoder()
    lora = {key: torch.zeros(shape) for key, shape, _ in rows}  # alpha must be readable: not meta
    key_map = {**model_lora_keys_unet(model), **model_lora_keys_clip(text)}
    patches, unloaded = read_lora(lora, key_map)
    assert unloaded == []
    shapes = {**{k: tuple(v.shape) for k, v in model.state_dict().items()},
              **{k: tuple(v.shape) for k, v in text.state_dict().items()}}
    assert all(patch_fits(v, shapes[k]) for k, v in patches.items())
    counts = (sum(k.startswith("diffusion_model.") for k in patches), sum(k.startswith("clip_l.") for k in patches))
    assert counts == (192, 72) == tuple(example["module_count"].values())
    for module, checkpoint_key in example["module_to_checkpoint_weight"].items():
        key = key_map[module]
        if checkpoint_key.startswith("model.diffusion_model."):
            assert "model." + key == checkpoint_key
        else:
            # ComfyUI's own CLIP key for it: clip_l.transformer.text_model.encoder.layers...
            tail = checkpoint_key[checkpoint_key.index("encoder.layers."):]
            assert key == "clip_l.transformer.text_model." + tail


@pytest.mark.parametrize("style", ["sd15", "sdxl"])
def test_diffusers_names_agree_with_diffusers_own_converter(style):
    """Every diffusers UNet parameter diffusers' LDM converter produces is named by our map, and
    holds the very tensor our map points at (random weights: equal tensors identify the key)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = tiny_unet(style)
    sd = ours.state_dict()
    theirs = convert_ldm_unet_checkpoint(tiny_unet_state_dict(style), diffusers_unet_config(ours.config))
    mapping = diffusers_unet_key_map(ours.config, sd)
    assert sorted(set(theirs) - set(mapping)) == []
    aliases = {k for k in mapping if k.startswith("class_embedding.")}  # ComfyUI's second name for label_emb
    wrong = [k for k in set(mapping) - aliases if not torch.equal(theirs[k], sd[mapping[k]])]
    assert wrong == []
    assert set(mapping.values()) == set(sd)


# ---------------------------------------------------------------------------------------------
# the patch maths


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_patched_weights_follow_the_formula_and_nothing_else_moves(env, layout):
    mods = sd15_modules(env)
    written = write_lora(env.loras / f"{layout}.safetensors", mods, layout, seed=11)
    plain_unet, plain_text = plain_weights(env)
    model, clip = load(env, f"{layout}.safetensors", strength_model=0.7, strength_clip=-1.3)
    keys = patch_keys(env)
    by_key = {keys[k]: a for k, a in written.items()}
    assert len(model.patches) == len(SD15_UNET_TARGETS) and len(clip.patcher.patches) == len(TEXT_TARGETS)
    for patcher, plain, strength in ((model, plain_unet, 0.7), (clip.patcher, plain_text, -1.3)):
        for key, p in weights_as_loaded(patcher).items():
            if key in by_key:
                assert_close_rel(p, expected(plain[key], [(by_key[key], strength)]), key)
                assert p.dtype == plain[key].dtype and not torch.equal(p, plain[key])
            else:
                assert torch.equal(p, plain[key]), f"{key} is not targeted but changed"
    # the plain MODEL and CLIP again: the original tensors, bit for bit
    again_unet, again_text = plain_weights(env)
    assert all(torch.equal(again_unet[k], v) for k, v in plain_unet.items())
    assert all(torch.equal(again_text[k], v) for k, v in plain_text.items())


def test_conv_and_linear_patches_act_as_the_low_rank_branch(env):
    """Independent of the reshape rules: the patched layer's output minus the original equals
    strength * alpha / r * up(down(x)) run as layers (3x3 then 1x1 conv for LoCon)."""
    mods = sd15_modules(env)
    written = write_lora(env.loras / "functional.safetensors", mods, "kohya", seed=5)
    model, _ = load(env, "functional.safetensors", strength_model=0.5, strength_clip=0.0)
    targets = unet_key_map(unet_of(env))
    gen = torch.Generator().manual_seed(0)
    for d, kind in SD15_UNET_TARGETS.items():
        adapter = written[kohya_name(d)]
        layer = unet_of(env).get_submodule(targets[kohya_name(d)].key[:-len(".weight")])
        scale = 0.5 * adapter.alpha / RANK
        if kind == "linear":
            x = torch.randn(3, layer.in_features, generator=gen)
            branch = F.linear(F.linear(x, adapter.down), adapter.up)
        else:
            x = torch.randn(1, layer.in_channels, 6, 6, generator=gen)
            down = adapter.down if adapter.down.ndim == 4 else adapter.down[:, :, None, None]
            up = adapter.up if adapter.up.ndim == 4 else adapter.up[:, :, None, None]
            branch = F.conv2d(F.conv2d(x, down, padding=layer.padding), up)
        with torch.no_grad():
            load_models_gpu([env.model])
            before = layer(x)
            load_models_gpu([model])
            after = layer(x)
        torch.testing.assert_close(after - before, scale * branch, rtol=1e-4, atol=1e-5)
    load_models_gpu([env.model])


def test_tucker_mid_kernel_is_the_composition_of_its_three_convolutions():
    gen = torch.Generator().manual_seed(2)
    up, down, mid = (torch.randn(6, 3, 1, 1, generator=gen), torch.randn(3, 5, 1, 1, generator=gen),
                     torch.randn(3, 3, 3, 3, generator=gen))
    adapter = LoRAAdapter(set(), (up, down, 1.5, mid, None, None))
    weight = adapter.calculate_weight(torch.zeros(6, 5, 3, 3), "w", 2.0, 1.0, None, lambda a: a)
    x = torch.randn(2, 5, 7, 7, generator=gen)
    reference = 2.0 * 0.5 * F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, weight, padding=1), reference, rtol=1e-4, atol=1e-5)


def test_missing_alpha_means_scale_one_and_half_precision_weights_are_summed_in_float32():
    gen = torch.Generator().manual_seed(4)
    up, down = torch.randn(8, 2, generator=gen), torch.randn(2, 8, generator=gen)
    layer = torch.nn.Linear(8, 8, bias=False).to(torch.bfloat16).requires_grad_(False)
    patcher = MP.ModelPatcher(layer, "cpu", "cpu")
    adapter = LoRAAdapter(set(), (up, down, None, None, None, None))
    patcher.add_patches({"weight": adapter}, 0.25)
    patcher.add_patches({"weight": adapter}, 0.25)
    original = layer.weight.detach().clone()
    load_models_gpu([patcher])
    reference = (original.float() + 0.25 * (up @ down) + 0.25 * (up @ down)).to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, reference)
    patcher.detach()
    assert torch.equal(layer.weight, original)
    assert not patch_fits(LoRAAdapter(set(), (up, down, None, None, None, None)), (8, 4))


# ---------------------------------------------------------------------------------------------
# MODEL / CLIP clones, sampling and stacking


def test_strength_zero_and_the_unpatched_model_give_bit_identical_samples(env):
    write_lora(env.loras / "sampling.safetensors", sd15_modules(env), "kohya", seed=21)
    plain_unet, plain_text = plain_weights(env)
    plain = sample(env, env.model, env.clip)
    model, clip = load(env, "sampling.safetensors")
    patched = sample(env, model, clip)
    assert (patched - plain).abs().max() > 1e-3
    assert torch.equal(sample(env, env.model, env.clip), plain)  # the base MODEL and CLIP again
    again_unet, again_text = plain_weights(env)
    assert all(torch.equal(again_unet[k], v) for k, v in plain_unet.items())
    assert all(torch.equal(again_text[k], v) for k, v in plain_text.items())
    # zero strength on both: ComfyUI hands back the very inputs
    same_model, same_clip = load(env, "sampling.safetensors", 0.0, 0.0)
    assert same_model is env.model and same_clip is env.clip
    # zero on one side only: a clone whose patches change nothing
    zero_model, lora_clip = load(env, "sampling.safetensors", 0.0, 1.0)
    assert zero_model is not env.model and len(zero_model.patches) == len(SD15_UNET_TARGETS)
    assert torch.equal(sample(env, zero_model, env.clip), plain)
    (with_lora_text,) = env.node("CLIPTextEncode", text="a red house", clip=lora_clip)
    (plain_text_cond,) = env.node("CLIPTextEncode", text="a red house", clip=env.clip)
    assert not torch.equal(with_lora_text[0][0], plain_text_cond[0][0])
    assert torch.equal(env.node("CLIPTextEncode", text="a red house", clip=env.clip)[0][0][0], plain_text_cond[0][0])


def test_two_loras_stack_additively_in_order(env):
    mods = sd15_modules(env)
    first = write_lora(env.loras / "first.safetensors", mods, "kohya", seed=31)
    second = write_lora(env.loras / "second.safetensors", mods, "peft", seed=32, with_alpha=False)
    plain_unet, plain_text = plain_weights(env)
    m1, c1 = load(env, "first.safetensors", 0.8, 0.6)
    m2, c2 = load(env, "second.safetensors", -0.5, 1.5, model=m1, clip=c1)
    assert all(m2.patches[k][:len(v)] == v for k, v in m1.patches.items())
    keys = patch_keys(env)
    for patcher, plain, strengths in ((m2, plain_unet, (0.8, -0.5)), (c2.patcher, plain_text, (0.6, 1.5))):
        params = weights_as_loaded(patcher)
        for name in first:
            key = keys[name]
            if key in params:
                ref = expected(plain[key], [(first[name], strengths[0]), (second[name], strengths[1])])
                assert_close_rel(params[key], ref, key)
    # the first LoRA's MODEL and CLIP are unchanged by the second
    assert all(len(v) == 1 for v in m1.patches.values()) and len(c1.patcher.patches) == len(TEXT_TARGETS)
    plain_weights(env)


def test_patches_apply_once_per_patch_set_and_switching_restores_the_originals(env, monkeypatch):
    """ComfyUI's rule: a model remembers the patch set it holds; loading the same MODEL again does
    no patch work, another set first puts the original tensors back (bit for bit)."""
    write_lora(env.loras / "once.safetensors", sd15_modules(env), "kohya", seed=41)
    plain_unet, _ = plain_weights(env)
    m1, _ = load(env, "once.safetensors")
    m2, _ = load(env, "once.safetensors", 0.3, 0.3)
    calls = []
    real = MP.calculate_weight

    def counting(patches, weight, key, *args, **kwargs):
        calls.append(key)
        return real(patches, weight, key, *args, **kwargs)

    monkeypatch.setattr(MP, "calculate_weight", counting)
    import sys
    if "comfy.lora" in sys.modules:
        monkeypatch.setattr(sys.modules["comfy.lora"], "calculate_weight", counting)
    first = weights_as_loaded(m1)
    assert len(calls) == len(SD15_UNET_TARGETS)
    calls.clear()
    assert all(torch.equal(v, first[k]) for k, v in weights_as_loaded(m1).items())
    assert calls == []  # the same MODEL again: nothing recomputed
    second = weights_as_loaded(m2)
    assert len(calls) == len(SD15_UNET_TARGETS)  # another set: patched once, from the originals
    for key in m1.patches:  # 0.3 of the first set's change, not on top of it
        plain = plain_unet[key].double()
        assert_close_rel(second[key], plain + 0.3 * (first[key].double() - plain), key)
    back = weights_as_loaded(env.model)
    assert all(torch.equal(back[k], v) for k, v in plain_unet.items())


# ---------------------------------------------------------------------------------------------
# reporting


def test_keys_that_match_nothing_are_reported_not_dropped(env, caplog):
    mods = sd15_modules(env)
    shape = mods[(kohya_name("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
                  "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")][0]
    extra = {"lora_unet_no_such_block.lora_up.weight": torch.zeros(4, 2),
             "lora_unet_no_such_block.lora_down.weight": torch.zeros(2, 4),
             "lora_unet_no_such_block.alpha": torch.tensor(2.0),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w2_a": torch.zeros(2, 2),
             "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q.lora_up.weight":
                 torch.zeros(shape[0] + 1, 2),
             "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q.lora_down.weight":
                 torch.zeros(2, shape[1])}
    write_lora(env.loras / "odd.safetensors", mods, "kohya", seed=51, extra=extra)
    with caplog.at_level(logging.WARNING, logger="diffusion.lora"):
        out = env.node("LoraLoader", model=env.model, clip=env.clip, lora_name="odd.safetensors",
                       strength_model=1.0, strength_clip=1.0)
    (message,) = out["ui"]["text"]
    assert "4 key(s) matched no module" in message and "1 module(s) have shapes that do not fit" in message
    logged = caplog.text
    for key in ("lora_unet_no_such_block.lora_up.weight", "lora_unet_no_such_block.alpha",
                "attn1_to_q.hada_w2_a", "up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q"):
        assert key in logged
    model, clip = out["result"]
    assert len(model.patches) == len(SD15_UNET_TARGETS) and len(clip.patcher.patches) == len(TEXT_TARGETS)
    # a clean file reports nothing in the UI
    assert isinstance(load(env, "odd.safetensors", 0.0, 0.0), tuple)


def test_model_only_loader_leaves_the_text_encoder_and_counts_its_keys(env):
    write_lora(env.loras / "model_only.safetensors", sd15_modules(env), "kohya", seed=61)
    out = env.node("LoraLoaderModelOnly", model=env.model, lora_name="model_only.safetensors", strength_model=1.0)
    (model,) = out if isinstance(out, tuple) else out["result"]
    assert len(model.patches) == len(SD15_UNET_TARGETS)
    clean = env.node("LoraLoader", model=env.model, clip=env.clip, lora_name="model_only.safetensors",
                     strength_model=1.0, strength_clip=1.0)
    assert isinstance(clean, tuple)  # every key used: nothing to surface
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load(env, "missing.safetensors")


@pytest.mark.parametrize("storage", [torch.float32, torch.float16])
def test_sdxl_te1_te2_and_unet_keys_reach_clip_l_bigg_and_the_unet(tmp_path, storage):
    """SDXL layout on a tiny SDXL UNet and a narrow CLIP-L + bigG pair (the key names do not
    depend on widths), through load_lora_for_models, the function the loader nodes call. With
    the text encoder stored in fp16 (the CPU default) the patch is computed in fp32 and stored in
    fp16, and unpatching restores the fp16 weights bit for bit."""
    from diffusion import text_encoders as te
    from diffusion.handles import CLIP
    from diffusion.checkpoint import read_state_dict
    from tests.models_tiny import randomize_

    model = MP.ModelPatcher(DiffusionModel(tiny_unet("sdxl"), family="sdxl"), "cpu", "cpu")
    encoder = randomize_(te.SDXLTextEncoder({"l": te.text_config(64, 2, positions=8),
                                             "g": te.text_config(64, 2, act="gelu", positions=8)}), 3).to(storage)
    clip = CLIP(encoder)
    unet_map, text_map = unet_key_map(model.model.diffusion_model), text_key_map(encoder)
    d = "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k"
    mods = {(kohya_name(d), "unet." + d): (unet_map[kohya_name(d)].shape, "linear")}
    towers = (("l", "lora_te1_", "text_encoder."), ("g", "lora_te2_", "text_encoder_2."))
    for tower, kohya_prefix, peft_prefix in towers:
        for m in ("self_attn.q_proj", "mlp.fc2"):
            kohya = f"{kohya_prefix}text_model_encoder_layers_1_{m.replace('.', '_')}"
            assert text_map[kohya].key.startswith(f"clip_{tower}.transformer.text_model.")
            assert text_map[f"{peft_prefix}text_model.encoder.layers.1.{m}"] == text_map[kohya]
            mods[(kohya, f"{peft_prefix}text_model.encoder.layers.1.{m}")] = (text_map[kohya].shape, "linear")
    assert unet_map[kohya_name(d)].key == "input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight"
    written = write_lora(tmp_path / "xl.safetensors", mods, "peft", seed=71)
    base = {k: v.clone() for k, v in encoder.state_dict().items()}
    model2, clip2, report = load_lora_for_models(model, clip, read_state_dict(tmp_path / "xl.safetensors"), 1.0, 2.0,
                                                 "xl")
    assert (report.model_modules, report.clip_modules, report.problems) == (1, 4, 0)
    params = weights_as_loaded(clip2.patcher)
    for name, adapter in written.items():
        if name.startswith("lora_te"):
            key = text_map[name].key
            assert params[key].dtype == storage
            assert_close_rel(params[key], expected(base[key], [(adapter, 2.0)]), key)
    window = [(49406, 1.0), (320, 1.0), (2368, 1.0), (49407, 1.0)]  # start, "a", "cat", end: 4 of 8 positions
    cond, pooled = clip2.encode_from_tokens({"l": [window], "g": [window]}, return_pooled=True)
    assert cond.dtype == pooled.dtype == torch.float32 and cond.shape == (1, 4, 128) and cond.isfinite().all()
    clip2.patcher.detach()
    assert all(v.dtype == storage and torch.equal(v, base[k]) for k, v in encoder.state_dict().items())
    assert list(model2.patches) == ["diffusion_model." + unet_map[kohya_name(d)].key]


# ---------------------------------------------------------------------------------------------
# declarations and the command line


def test_declarations_match_comfyui(env):
    reg = env.runtime.registry
    write_lora(env.loras / "listed.safetensors", {}, "kohya", seed=0)
    info = reg.get("LoraLoader").describe()
    req = info["input"]["required"]
    assert list(req) == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    for name in ("strength_model", "strength_clip"):
        opts = req[name][1]
        assert req[name][0] == "FLOAT" and (opts["default"], opts["min"], opts["max"], opts["step"]) == (
            1.0, -100.0, 100.0, 0.01)
    assert "listed.safetensors" in req["lora_name"][0]  # the combo is the loras folder, read on each call
    assert info["output"] == ["MODEL", "CLIP"] and info["display_name"] == "Load LoRA"
    assert info["category"] == "loaders"
    only = reg.get("LoraLoaderModelOnly").describe()
    assert list(only["input"]["required"]) == ["model", "lora_name", "strength_model"]
    assert only["output"] == ["MODEL"]


def test_workflow_with_a_lora_runs_on_the_cli(base, env, tmp_path):
    write_lora(env.loras / "cli.safetensors", sd15_modules(env), "kohya", seed=81)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "cli.safetensors",
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house", "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 5, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "lora"}},
    }
    workflow = tmp_path / "lora_workflow.json"
    workflow.write_text(json.dumps(prompt))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(base), str(workflow)],
                          capture_output=True, text=True, timeout=240, cwd=base)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [p.name for p in written] == ["lora_00001_.png"]
    pixels = np.asarray(Image.open(written[0]))
    assert pixels.shape == (64, 64, 3)  # the 8x8 latent of a 64x64 request, decoded 8x
    # the same graph in this process reproduces the file; without the LoRA it differs
    assert env.runtime.executor.run(prompt).ok
    assert np.array_equal(np.asarray(Image.open(base / "output" / "lora_00002_.png")), pixels)
    prompt["2"]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    assert env.runtime.executor.run(prompt).ok
    assert not np.array_equal(np.asarray(Image.open(base / "output" / "lora_00003_.png")), pixels)
