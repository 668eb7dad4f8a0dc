"""ControlNet: architecture against the released key list, numerics against diffusers' ControlNetModel,
the per-step control through the nodes and the sampler (the example workflow runs in
tests/test_examples.py)."""
import json
import shutil
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusion.checkpoint import CheckpointError, read_state_dict
from diffusion.controlnet import (CONTROL_PREFIX, ControlBase, ControlNetConfig, ControlNetModel, broadcast_image_to,
                                  load_controlnet, load_controlnet_state_dict)
from diffusion.unet import UNET_PREFIX, UNetConfig
from tests.node_helpers import checkpoint_session
from tests.models_tiny import SDXL_TIME_EMBED_DIM, diffusers_unet_config, randomize_, tiny_unet_config
from tests import paths

REPO = Path(__file__).resolve().parent.parent
SPEC = paths.SPEC_KEYS / "sd15_controlnet_v11.json"
CKPT_NAME = "v1-5-pruned-emaonly.safetensors"
CN_NAME = "control_v11p_sd15_canny.safetensors"
HINT_NAME = "controlnet_hint.png"
TOL = 1e-4  # float32, max abs difference of residuals of magnitude O(1)


# ---------------------------------------------------------------------------------------------
# (a) architecture


def test_full_sd15_controlnet_has_exactly_the_released_keys_and_shapes():
    rows = json.loads(SPEC.read_text())
    released = {key: tuple(shape) for key, shape, _ in rows}
    with torch.device("meta"):
        model = ControlNetModel(ControlNetConfig.sd15())
    ours = {CONTROL_PREFIX + k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(released) - set(ours)) == [] and sorted(set(ours) - set(released)) == []
    assert {k: s for k, s in ours.items() if released[k] != s} == {}
    assert len(ours) == 340


def test_config_is_detected_from_the_released_shapes():
    rows = json.loads(SPEC.read_text())
    sd = {key: torch.empty(shape, device="meta") for key, shape, _ in rows}
    config = ControlNetConfig.from_state_dict(sd, prefix=CONTROL_PREFIX)
    assert config.unet == UNetConfig.sd15() and config.hint_channels == 3
    del sd[CONTROL_PREFIX + "zero_convs.5.0.bias"]
    with pytest.raises(ValueError, match=r"control_model\.zero_convs\.5\.0\.bias"):
        ControlNetConfig.from_state_dict(sd, prefix=CONTROL_PREFIX)


# ---------------------------------------------------------------------------------------------
# (b) numerics against diffusers


def small_config(style: str) -> UNetConfig:
    """The tiny test UNets' traits; SDXL-style shrunk to two levels (the ControlNet is the whole
    encoder, so the full tiny SDXL one costs seconds to build and randomise)."""
    if style == "sdxl":
        return replace(tiny_unet_config("sdxl"), channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                       transformer_depth_middle=1, transformer_depth_output=None, context_dim=32)
    return tiny_unet_config(style)


def diffusers_controlnet(style: str, seed: int = 1):
    from diffusers import ControlNetModel as DiffusersControlNet

    kwargs = diffusers_unet_config(small_config(style))
    for key in ("sample_size", "out_channels", "up_block_types"):
        kwargs.pop(key)
    return randomize_(DiffusersControlNet(conditioning_channels=3, **kwargs), seed).eval()


def controlnet_inputs(config: UNetConfig, batch: int = 2, h: int = 8, w: int = 6):
    gen = torch.Generator().manual_seed(5)
    inputs = dict(x=torch.randn(batch, 4, h, w, generator=gen), hint=torch.rand(batch, 3, 8 * h, 8 * w, generator=gen),
                  timesteps=torch.tensor([15.0, 830.0])[:batch],
                  context=torch.randn(batch, 7, config.context_dim, generator=gen))
    extra = {}
    if config.adm_in_channels:
        text = torch.randn(batch, config.adm_in_channels - 3 * SDXL_TIME_EMBED_DIM, generator=gen)
        time_ids = torch.rand(batch, 3, generator=gen) * 512
        extra = {"added_cond_kwargs": {"text_embeds": text, "time_ids": time_ids}}
        from diffusion.model import timestep_embedding  # SDXL's adm: text embeds then sinusoids per id

        sinusoids = timestep_embedding(time_ids.flatten(), SDXL_TIME_EMBED_DIM).reshape(batch, -1)
        inputs["y"] = torch.cat([text, sinusoids], dim=1)
    return inputs, extra


def assert_matches_diffusers(ours: ControlNetModel, ref, inputs: dict, extra: dict):
    with torch.no_grad():
        down, mid = ref(inputs["x"], inputs["timesteps"], inputs["context"], inputs["hint"], return_dict=False, **extra)
        got = ours(**inputs)
    assert len(got["output"]) == len(down) and len(got["middle"]) == 1
    for i, (a, b) in enumerate(zip(got["output"], down)):
        assert a.shape == b.shape and (a - b).abs().max().item() < TOL, f"residual {i}"
    assert (got["middle"][0] - mid).abs().max().item() < TOL
    assert mid.abs().mean() > 0.1  # the residuals are not trivially zero


@pytest.mark.parametrize("style", ["sd15", "sdxl"])
def test_matches_diffusers_in_both_layouts(style, tmp_path):
    ref = diffusers_controlnet(style)
    inputs, extra = controlnet_inputs(small_config(style))
    # diffusers layout, read by our converter
    from_diffusers = load_controlnet_state_dict({k: v.clone() for k, v in ref.state_dict().items()})
    assert from_diffusers.model.config.unet == small_config(style)
    assert_matches_diffusers(from_diffusers.model, ref, inputs, extra)
    # original layout: the same weights written under control_model. and loaded from the file
    path = tmp_path / f"{style}_controlnet.safetensors"
    save_file({CONTROL_PREFIX + k: v.contiguous() for k, v in from_diffusers.model.state_dict().items()}, str(path))
    from_file = load_controlnet(path)
    assert_matches_diffusers(from_file.model, ref, inputs, extra)


def test_unknown_files_and_diffusers_variants_are_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match="not a ControlNet: expected key control_model.zero_convs"):
        load_controlnet_state_dict({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})
    sd = dict(diffusers_controlnet("sd15").state_dict())
    sd["controlnet_mode_embedder.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match="controlnet_mode_embedder.weight"):
        load_controlnet_state_dict(sd)


# ---------------------------------------------------------------------------------------------
# the per-step control object


def test_hint_batch_broadcast_and_residual_merge_rules():
    hint = torch.arange(3.0).reshape(3, 1, 1, 1)
    # 2 conditionings x 4 rows each: the 3-image hint is cycled to 4, then repeated per conditioning
    assert broadcast_image_to(hint, 8, 2).flatten().tolist() == [0, 1, 2, 0, 0, 1, 2, 0]
    assert broadcast_image_to(hint[:1], 8, 2).shape[0] == 1
    # ComfyUI's control_merge: own residuals times the strength, then the chained ones added.
    control = ControlBase()
    control.strength = 0.5
    a = {"middle": [torch.ones(1)], "output": [torch.ones(1), None]}
    b = {"middle": [torch.full((1,), 2.0)], "output": [None, torch.full((1,), 3.0), torch.full((1,), 4.0)]}
    merged = control.control_merge(a, b, None)
    assert [t.item() for t in merged["output"]] == [0.5, 3.0, 4.0] and merged["middle"][0].item() == 2.5
    assert control.control_merge(a, None, None)["middle"][0].item() == 0.5


# ---------------------------------------------------------------------------------------------
# a tiny SD1.5 model with a matching ControlNet, through the nodes and the sampler


def tiny_sd15_controlnet_sd(checkpoint: Path, seed: int) -> dict[str, torch.Tensor]:
    """Random ControlNet weights (zero convs not zero, so the control has an effect) for the tiny
    checkpoint's UNet, in the original layout with the control_model. prefix."""
    unet_config = UNetConfig.from_state_dict(read_state_dict(checkpoint), prefix=UNET_PREFIX)
    model = randomize_(ControlNetModel(ControlNetConfig(unet_config)), seed)
    return {CONTROL_PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def base(tiny_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("controlnet_base")
    ckpt = tiny_checkpoint("sd15")
    (base / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, base / "models" / "checkpoints" / CKPT_NAME)
    cn_dir = base / "models" / "controlnet"
    cn_dir.mkdir(parents=True)
    save_file(tiny_sd15_controlnet_sd(ckpt, seed=3), str(cn_dir / CN_NAME))
    save_file(tiny_sd15_controlnet_sd(ckpt, seed=4), str(cn_dir / "second.safetensors"))
    (base / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(base / "input" / HINT_NAME)
    return base


@pytest.fixture(scope="module")
def env(base):
    session = checkpoint_session(base, CKPT_NAME)
    (session.image, _) = session.node("LoadImage", image=HINT_NAME)
    return session


@pytest.fixture(scope="module")
def conds(env):
    (positive,) = env.node("CLIPTextEncode", text="a house", clip=env.clip)
    (negative,) = env.node("CLIPTextEncode", text="blurry", clip=env.clip)
    return positive, negative


def sample(env, positive, negative, steps=2, cfg=3.0):
    """A few euler steps on a 32x32 image (4x4 latent); cfg > 1 so the negative prompt runs too."""
    (latent,) = env.node("EmptyLatentImage", width=32, height=32, batch_size=1)
    (out,) = env.node("KSampler", model=env.model, seed=7, steps=steps, cfg=cfg, sampler_name="euler",
                      scheduler="normal", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    return out["samples"]


@pytest.fixture(scope="module")
def plain(env, conds):
    return sample(env, *conds)


@pytest.fixture(scope="module")
def net(env):
    return env.node("ControlNetLoader", control_net_name=CN_NAME)[0]


def apply(env, positive, negative, net, strength=1.0, start=0.0, end=1.0):
    return env.node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=net,
                    image=env.image, strength=strength, start_percent=start, end_percent=end)


def test_declarations_match_comfyui(env):
    info = json.loads((REPO / "tests" / "data" / "object_info_core.json").read_text())
    for name in ("ControlNetLoader", "ControlNetApplyAdvanced"):
        ours = env.runtime.registry.get(name).describe()
        want = info[name]
        non_empty = lambda sections: {k: v for k, v in sections.items() if v}  # noqa: E731
        assert non_empty(ours["input_order"]) == want["input_order"], name
        for field in ("output", "output_name", "category", "display_name"):
            assert ours[field] == want[field], (name, field)
        assert {k: list(v[1:]) for k, v in ours["input"]["required"].items()} == \
               {k: list(v[1:]) for k, v in want["input"]["required"].items()}
    old = env.runtime.registry.get("ControlNetApply").describe()
    assert old["deprecated"] is True and old["input"]["required"]["strength"][1] == \
           {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}
    diff = env.runtime.registry.get("DiffControlNetLoader").describe()
    assert diff["input_order"]["required"] == ["model", "control_net_name"]
    assert CN_NAME in diff["input"]["required"]["control_net_name"][0]


def test_control_changes_sampling_and_strength_zero_is_bit_identical(env, conds, plain, net):
    positive, negative = conds
    pos0, neg0 = apply(env, positive, negative, net, strength=0.0)
    assert pos0 is positive and neg0 is negative
    assert torch.equal(sample(env, pos0, neg0), plain)
    (old0,) = env.node("ControlNetApply", conditioning=positive, control_net=net, image=env.image, strength=0.0)
    assert old0 is positive
    pos, neg = apply(env, positive, negative, net, strength=1.0)
    assert pos[0][1]["control"] is neg[0][1]["control"]  # one control for both prompts, as ComfyUI
    assert "control" not in positive[0][1]  # the input conditioning is not modified
    controlled = sample(env, pos, neg)
    assert (controlled - plain).abs().max() > 1e-3
    # the strength scales the residuals: twice the strength is a different result
    assert (sample(env, *apply(env, positive, negative, net, strength=2.0)) - controlled).abs().max() > 1e-3


def test_step_range_is_respected(env, conds, net):
    from diffusion.ksampler import ksampler_sigmas

    positive, negative = conds
    ms = env.model.model.model_sampling
    steps = 3
    evaluated = ksampler_sigmas(env.model, steps, "euler", "normal")[:-1].tolist()
    # a window between two of the schedule's sigmas: the ControlNet never runs, nothing changes
    window = (0.6, 0.9)
    assert not any(ms.percent_to_sigma(window[1]) <= s <= ms.percent_to_sigma(window[0]) for s in evaluated)
    plain = sample(env, positive, negative, steps)
    assert torch.equal(sample(env, *apply(env, positive, negative, net, start=window[0], end=window[1]), steps),
                       plain)
    full = sample(env, *apply(env, positive, negative, net), steps)
    first = sample(env, *apply(env, positive, negative, net, start=0.0, end=0.5), steps)  # first step only
    assert (first - plain).abs().max() > 1e-3 and (first - full).abs().max() > 1e-3


def test_control_is_evaluated_only_inside_its_sigma_range(env, conds, net):
    positive, _ = conds
    (pos, _) = apply(env, positive, positive, net, start=0.2, end=0.6)
    control = pos[0][1]["control"]
    ms = env.model.model.model_sampling
    control.pre_run(env.model.model, ms.percent_to_sigma)
    x = torch.randn(1, 4, 6, 8)
    cond = {"c_crossattn": positive[0][0]}
    high, low = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.6)
    for sigma, active in ((high * 1.01, False), (high * 0.99, True), (low * 1.01, True), (low * 0.99, False)):
        with torch.inference_mode():
            out = control.get_control(x, torch.tensor([sigma]), cond, 1)
        assert (out is not None) == active, sigma
        if active:
            assert out["output"][0].shape[-2:] == (6, 8) and len(out["middle"]) == 1


def test_hint_is_centre_cropped_then_nearest_exact_resized(env, conds, net):
    positive, _ = conds
    gen = torch.Generator().manual_seed(2)
    small = torch.rand(1, 16, 16, 3, generator=gen)  # a 4x4 latent wants a 32x32 hint
    wide = torch.cat([torch.rand(1, 16, 5, 3, generator=gen), small, torch.rand(1, 16, 5, 3, generator=gen)], dim=2)
    exact = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # nearest-exact x2 by hand
    ms = env.model.model.model_sampling
    x = torch.randn(1, 4, 4, 4, generator=gen)
    cond = {"c_crossattn": positive[0][0]}

    def residuals(image):
        (pos,) = env.node("ControlNetApply", conditioning=positive, control_net=net, image=image, strength=1.0)
        control = pos[0][1]["control"]
        control.pre_run(env.model.model, ms.percent_to_sigma)
        with torch.inference_mode():
            return control.get_control(x, torch.tensor([3.0]), cond, 1)["output"]

    want = residuals(exact)
    for image in (small, wide):  # 16x26 is cropped to its middle 16x16, then both are doubled
        assert all(torch.equal(a, b) for a, b in zip(residuals(image), want))
    assert not torch.equal(residuals(small.flip(1))[0], want[0])


def test_two_chained_controlnets_sum_their_residuals(env, conds, net):
    positive, negative = conds
    (net_b,) = env.node("ControlNetLoader", control_net_name="second.safetensors")
    pos_a, neg_a = apply(env, positive, negative, net, strength=0.7)
    pos_ab, neg_ab = apply(env, pos_a, neg_a, net_b, strength=1.3)
    pos_b, neg_b = apply(env, positive, negative, net_b, strength=1.3)
    chained = pos_ab[0][1]["control"]
    assert chained.previous_controlnet is pos_a[0][1]["control"] and neg_ab[0][1]["control"] is chained
    ms = env.model.model.model_sampling
    x = torch.randn(2, 4, 4, 4)
    cond = {"c_crossattn": torch.cat([positive[0][0], negative[0][0]])}
    outs = {}
    with torch.inference_mode():
        for name, control in (("ab", chained), ("a", pos_a[0][1]["control"]), ("b", pos_b[0][1]["control"])):
            control.pre_run(env.model.model, ms.percent_to_sigma)
            outs[name] = control.get_control(x, torch.tensor([2.0, 2.0]), cond, 2)
    for key in ("middle", "output"):
        for ab, a, b in zip(outs["ab"][key], outs["a"][key], outs["b"][key]):
            assert (ab - (a + b)).abs().max() < 1e-5
    both = sample(env, pos_ab, neg_ab)
    assert (both - sample(env, pos_a, neg_a)).abs().max() > 1e-3
    assert (both - sample(env, pos_b, neg_b)).abs().max() > 1e-3


def test_old_apply_node_also_controls_the_negative_prompt(env, conds, net):
    positive, negative = conds
    (old,) = env.node("ControlNetApply", conditioning=positive, control_net=net, image=env.image, strength=0.9)
    assert old[0][1]["control_apply_to_uncond"] is True
    # ComfyUI hands the positive prompt's control to a negative prompt without one, which is what
    # the advanced node does explicitly: the two must sample identically.
    advanced = apply(env, positive, negative, net, strength=0.9)
    assert torch.equal(sample(env, old, negative), sample(env, *advanced))


def test_diff_controlnet_adds_the_model_weights(env, base):
    real = read_state_dict(base / "models" / "controlnet" / CN_NAME)
    unet = env.model.model.diffusion_model.state_dict()
    shared = [k for k in real if k[len(CONTROL_PREFIX):] in unet]
    assert len(shared) > 100  # the copied encoder
    diff = {k: (v - unet[k[len(CONTROL_PREFIX):]]).contiguous() if k in shared else v for k, v in real.items()}
    diff["difference"] = torch.tensor([])
    save_file(diff, str(base / "models" / "controlnet" / "diff_cn.safetensors"))
    (net,) = env.node("DiffControlNetLoader", model=env.model, control_net_name="diff_cn.safetensors")
    loaded = net.model.state_dict()
    for key, value in real.items():
        assert (loaded[key[len(CONTROL_PREFIX):]] - value).abs().max() < 1e-5, key
    (plain,) = env.node("ControlNetLoader", control_net_name="diff_cn.safetensors")  # warns, adds nothing
    key = "input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(plain.model.state_dict()[key], diff[CONTROL_PREFIX + key])


def test_bad_hint_and_missing_file_are_named(env, net):
    with pytest.raises(ValueError, match="3-channel hint images, got 1"):
        net.apply(torch.zeros(1, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        env.node("ControlNetLoader", control_net_name="missing.safetensors")


# ---------------------------------------------------------------------------------------------
# (d) the example workflow on the command line


# ---------------------------------------------------------------------------------------------
# SDXL-style: the adm vector reaches the ControlNet; shuffle files pool globally


def test_sdxl_style_control_uses_the_adm_vector_through_the_sampler():
    from diffusion import ksampler as ks
    from diffusion.controlnet import ControlNet
    from diffusion.model import DiffusionModel
    from diffusion.model_patcher import ModelPatcher
    from diffusion.model_sampling import ModelSamplingDiscrete
    from diffusion.unet import UNetModel

    config = small_config("sdxl")
    unet = randomize_(UNetModel(config), 0).eval()
    net = ControlNet(randomize_(ControlNetModel(ControlNetConfig(config)), 1).eval())
    ys = {"positive": torch.randn(1, config.adm_in_channels), "negative": torch.randn(1, config.adm_in_channels)}
    model = ModelPatcher(DiffusionModel(unet, ModelSamplingDiscrete(), family="sdxl",
                                        adm=lambda entry: ys[entry["prompt_type"]]), "cpu", "cpu")
    context = torch.randn(1, 5, config.context_dim, generator=torch.Generator().manual_seed(3))
    hint = torch.rand(1, 3, 32, 32)
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4))

    def run(control=None):
        extras = {} if control is None else {"control": control}
        with torch.inference_mode():
            return ks.sample(model, noise, [[context, dict(extras)]], [[-context, dict(extras)]], 2.0, "cpu",
                             ks.ksampler_select("euler"), ks.ksampler_sigmas(model, 2, "euler", "normal"),
                             model.model_options, latent_image=torch.zeros_like(noise))

    plain = run()
    controlled = run(net.apply(hint))
    assert (controlled - plain).abs().max() > 1e-3
    # the ControlNet's own residuals depend on the adm vector, and a missing one is named
    control = net.apply(hint)
    control.pre_run(model.model, model.model.model_sampling.percent_to_sigma)
    with torch.inference_mode():
        a = control.get_control(noise, torch.tensor([1.0]), {"c_crossattn": context, "y": ys["positive"]}, 1)
        b = control.get_control(noise, torch.tensor([1.0]), {"c_crossattn": context, "y": ys["negative"]}, 1)
        assert (a["middle"][0] - b["middle"][0]).abs().max() > 1e-4
        with pytest.raises(ValueError, match="adm vector y"):
            control.get_control(noise, torch.tensor([1.0]), {"c_crossattn": context}, 1)


def test_shuffle_controlnet_files_pool_residuals_globally(env, base):
    shutil.copy(base / "models" / "controlnet" / CN_NAME, base / "models" / "controlnet" / "cn_shuffle.safetensors")
    (net,) = env.node("ControlNetLoader", control_net_name="cn_shuffle.safetensors")
    (plain_net,) = env.node("ControlNetLoader", control_net_name=CN_NAME)
    assert net.global_average_pooling and not plain_net.global_average_pooling
    ms = env.model.model.model_sampling
    x = torch.randn(1, 4, 4, 4)
    context = torch.randn(1, 77, 768)
    outs = []
    for n in (net, plain_net):
        control = n.apply(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 0.5)
        control.pre_run(env.model.model, ms.percent_to_sigma)
        with torch.inference_mode():
            outs.append(control.get_control(x, torch.tensor([2.0]), {"c_crossattn": context}, 1))
    pooled, full = outs
    for p, f in zip(pooled["output"], full["output"]):
        assert torch.allclose(p, f.mean(dim=(2, 3), keepdim=True).expand_as(f), atol=1e-6)


def test_full_sdxl_controlnet_copies_the_sdxl_encoder_key_for_key():
    rows = json.loads((SPEC.parent / "sdxl_base_1.0_full.json").read_text())
    encoder = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")
    unet = {k[len(UNET_PREFIX):]: tuple(s) for k, s, _ in rows
            if k.startswith(UNET_PREFIX) and k[len(UNET_PREFIX):].startswith(encoder)}
    ours = ControlNetConfig.sdxl().expected_shapes()
    assert {k: s for k, s in ours.items() if k.startswith(encoder)} == unet
    assert len([k for k in ours if k.startswith("zero_convs.") and k.endswith(".weight")]) == 9
    assert ours["middle_block_out.0.weight"] == (1280, 1280, 1, 1)
