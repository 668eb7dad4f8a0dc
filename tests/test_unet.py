"""The latent-diffusion UNet: real checkpoint layouts, config detection, numerics against diffusers."""
import json
from pathlib import Path

import pytest
import torch

from diffusion.unet import UNET_PREFIX, UNetConfig, UNetModel
from diffusion.unet_blocks import timestep_embedding
from tests import paths
from tests.models_tiny import (SDXL_NUM_TIME_IDS, SDXL_TEXT_EMBED_DIM, SDXL_TIME_EMBED_DIM, TINY_UNET_STYLES,
                               diffusers_unet_config, tiny_unet, tiny_unet_config, tiny_unet_state_dict)

SPEC = paths.SPEC_KEYS
REAL = {  # config classmethod -> key file of the released checkpoint
    "sd15": "sd15_full.json",
    "sd15_inpaint": "sd15_inpainting_full.json",
    "sd21": "sd21_768_full.json",
    "sdxl_base": "sdxl_base_1.0_full.json",
}


class Shape:
    """A stand-in for a tensor when only its shape matters (as in a safetensors header)."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def spec_unet_shapes(name: str) -> dict[str, tuple]:
    path = SPEC / REAL[name]
    rows = json.loads(path.read_text())
    return {k[len(UNET_PREFIX):]: tuple(shape) for k, shape, _dtype in rows if k.startswith(UNET_PREFIX)}


def assert_same_layout(got: dict, want: dict):
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
    assert not wrong, f"{len(wrong)} shape mismatches, e.g. {wrong[:3]}"


# --- real architectures ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REAL))
def test_meta_model_has_the_checkpoint_layout(name):
    want = spec_unet_shapes(name)
    with torch.device("meta"):
        model = UNetModel(getattr(UNetConfig, name)())
    assert all(p.is_meta for p in model.parameters())
    assert_same_layout({k: tuple(v.shape) for k, v in model.state_dict().items()}, want)


@pytest.mark.parametrize("name", sorted(REAL))
def test_from_state_dict_recovers_real_config(name):
    sd = {UNET_PREFIX + k: Shape(s) for k, s in spec_unet_shapes(name).items()}
    sd["first_stage_model.decoder.conv_in.weight"] = Shape((512, 4, 3, 3))  # other components are ignored
    assert UNetConfig.from_state_dict(sd) == getattr(UNetConfig, name)()


def test_from_state_dict_recovers_refiner_from_meta_tensors():
    cfg = UNetConfig.sdxl_refiner()
    with torch.device("meta"):
        sd = UNetModel(cfg).state_dict()
    assert len(sd) > 1000
    assert UNetConfig.from_state_dict(sd, prefix="") == cfg
    assert cfg != UNetConfig.sdxl_base()


def test_real_configs_differ_where_the_models_do():
    sd15, sd21, xl = UNetConfig.sd15(), UNetConfig.sd21(), UNetConfig.sdxl_base()
    assert sd15.attention_shape(640) == (8, 80) and sd21.attention_shape(640) == (10, 64)
    assert xl.transformer_depth == (0, 0, 2, 2, 10, 10)
    assert xl.transformer_depth_output == (10, 10, 10, 2, 2, 2, 0, 0, 0)
    assert UNetConfig.sd15_inpaint().in_channels == 9


# --- detection errors --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd15_shapes():
    return {UNET_PREFIX + k: Shape(s) for k, s in spec_unet_shapes("sd15").items()}


def test_from_state_dict_names_a_missing_key(sd15_shapes):
    key = UNET_PREFIX + "output_blocks.4.1.transformer_blocks.0.norm2.bias"
    sd = dict(sd15_shapes)
    del sd[key]
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        UNetConfig.from_state_dict(sd)


def test_from_state_dict_names_an_unexpected_key(sd15_shapes):
    key = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias"
    with pytest.raises(ValueError, match=f"unexpected key '{key}'"):
        UNetConfig.from_state_dict({**sd15_shapes, key: Shape((320,))})


def test_from_state_dict_names_a_misshapen_key(sd15_shapes):
    key = UNET_PREFIX + "time_embed.2.weight"
    with pytest.raises(ValueError, match=f"key '{key}' has shape"):
        UNetConfig.from_state_dict({**sd15_shapes, key: Shape((1280, 640))})


def test_from_state_dict_rejects_non_unets(sd15_shapes):
    with pytest.raises(ValueError, match="no keys under prefix"):
        UNetConfig.from_state_dict({"first_stage_model.encoder.conv_in.weight": Shape((128, 3, 3, 3))})
    with pytest.raises(ValueError, match="missing key 'model.diffusion_model.out.2.weight'"):
        UNetConfig.from_state_dict({UNET_PREFIX + "input_blocks.0.0.weight": Shape((320, 4, 3, 3))})
    no_middle = {k: v for k, v in sd15_shapes.items() if ".middle_block.1." not in k}
    with pytest.raises(ValueError, match="middle_block.1"):
        UNetConfig.from_state_dict(no_middle)


# --- tiny models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("style", TINY_UNET_STYLES)
def test_from_state_dict_recovers_tiny_config(style):
    assert UNetConfig.from_state_dict(tiny_unet_state_dict(style)) == tiny_unet_config(style)


def test_head_layout_can_be_overridden():
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=1, context_dim=8,
                     num_heads=-1, num_head_channels=16, use_linear_in_transformer=True)
    sd = {k: v.shape for k, v in UNetModel(cfg).state_dict().items()}
    sd = {k: Shape(s) for k, s in sd.items()}
    with pytest.raises(ValueError, match="does not split into attention heads"):
        UNetConfig.from_state_dict(sd, prefix="")  # default 64-channel heads do not fit width 32
    assert UNetConfig.from_state_dict(sd, prefix="", num_head_channels=16) == cfg


def test_depth_forms_are_normalised():
    per_level = UNetConfig(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
                           num_heads=-1, num_head_channels=64)
    per_block = UNetConfig(channel_mult=(1, 2, 4), transformer_depth=(0, 0, 2, 2, 10, 10),
                           transformer_depth_middle=10, transformer_depth_output=(10,) * 3 + (2,) * 3 + (0,) * 3,
                           num_heads=-1, num_head_channels=64)
    assert per_level == per_block
    with pytest.raises(ValueError, match="transformer_depth"):
        UNetConfig(transformer_depth=(1, 1, 1))


def test_meta_model_loads_by_assignment_and_runs():
    sd = tiny_unet("sd15").state_dict()
    with torch.device("meta"):
        model = UNetModel(tiny_unet_config("sd15"))
    model.load_state_dict(sd, assign=True)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 24)
    with torch.no_grad():
        out = model(x, torch.tensor(500.0), ctx)  # a scalar timestep is broadcast to the batch
    assert out.shape == x.shape and torch.isfinite(out).all()


# --- numerics against diffusers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairs():
    """style -> (our tiny model, diffusers model loaded from the same original-layout weights)."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    built = {}

    def get(style):
        if style not in built:
            ours = tiny_unet(style)
            dcfg = diffusers_unet_config(ours.config)
            theirs = diffusers.UNet2DConditionModel(**dcfg).eval()
            converted = convert_ldm_unet_checkpoint(tiny_unet_state_dict(style), dcfg)
            theirs.load_state_dict(converted, strict=True)
            built[style] = ours, theirs
        return built[style]

    return get


def make_inputs(cfg: UNetConfig, size=(16, 16), batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, *size, generator=gen)
    t = torch.tensor([999.0, 37.5, 500.0, 1.0][:batch])
    ctx = torch.randn(batch, 7, cfg.context_dim, generator=gen)
    y, extra = None, {}
    if cfg.adm_in_channels:  # SDXL: the adm vector is pooled text + sinusoids of the size/crop ids
        text = torch.randn(batch, SDXL_TEXT_EMBED_DIM, generator=gen)
        ids = torch.tensor([[1024.0, 768.0, 0.0], [512.0, 512.0, 64.0]] * batch)[:batch, :SDXL_NUM_TIME_IDS]
        y = torch.cat([text, timestep_embedding(ids.flatten(), SDXL_TIME_EMBED_DIM).reshape(batch, -1)], dim=1)
        extra = {"added_cond_kwargs": {"text_embeds": text, "time_ids": ids}}
    return x, t, ctx, y, extra


@pytest.mark.parametrize("size", [(16, 16), (13, 10)], ids=["even", "odd"])
@pytest.mark.parametrize("style", TINY_UNET_STYLES)
def test_matches_diffusers(pairs, style, size):
    ours, theirs = pairs(style)
    x, t, ctx, y, extra = make_inputs(ours.config, size)
    with torch.no_grad():
        got = ours(x, t, ctx, y=y)
        want = theirs(x, t, ctx, **extra).sample
    assert got.shape == x.shape[:1] + (ours.config.out_channels,) + x.shape[2:]
    assert want.abs().mean() > 0.1  # a real signal, not two zero maps agreeing
    assert (got - want).abs().max().item() < 1e-4


def skip_shapes(model: UNetModel, x, t, ctx, y):
    shapes = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape)) for b in model.input_blocks]
    try:
        with torch.no_grad():
            model(x, t, ctx, y=y)
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize("style", TINY_UNET_STYLES)
def test_controlnet_residuals_match_diffusers(pairs, style):
    ours, theirs = pairs(style)
    x, t, ctx, y, extra = make_inputs(ours.config, (12, 12))
    gen = torch.Generator().manual_seed(7)
    shapes = skip_shapes(ours, x, t, ctx, y)
    residuals = [torch.randn(s, generator=gen) * 0.5 for s in shapes]
    residuals[3] = None  # ComfyUI skips None entries; diffusers needs a zero tensor there
    mid = torch.randn(shapes[-1], generator=gen)  # the middle block keeps the deepest skip's shape
    control = {"input": [], "middle": [mid], "output": list(residuals)}
    down = tuple(torch.zeros(s) if r is None else r for r, s in zip(residuals, shapes))
    with torch.no_grad():
        got = ours(x, t, ctx, y=y, control=control)
        plain = ours(x, t, ctx, y=y)
        want = theirs(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                      **extra).sample
    assert (got - plain).abs().max() > 1e-2  # the residuals did something
    assert (got - want).abs().max().item() < 1e-4
    assert control["output"] == residuals and control["middle"] == [mid]  # caller's lists intact


def test_input_residuals_follow_comfyui_adapter_order():
    """"input" is consumed from the end: its last entry lands on input block 0's output."""
    model = tiny_unet("sd15")
    x, t, ctx, _, _ = make_inputs(model.config, (8, 8))
    shapes = skip_shapes(model, x, t, ctx, None)
    gen = torch.Generator().manual_seed(3)
    per_block = [torch.randn(s, generator=gen) if i in (0, 2, 4) else None for i, s in enumerate(shapes)]
    hooks = [model.input_blocks[i].register_forward_hook(lambda _m, _i, out, r=r: out + r)
             for i, r in enumerate(per_block) if r is not None]
    try:
        with torch.no_grad():
            want = model(x, t, ctx)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        got = model(x, t, ctx, control={"input": list(reversed(per_block))})
        plain = model(x, t, ctx)
    assert (want - plain).abs().max() > 1e-2
    assert (got - want).abs().max().item() < 1e-5


def test_bf16_weights_track_float32():
    model = tiny_unet("sdxl")
    x, t, ctx, y, _ = make_inputs(model.config)
    with torch.no_grad():
        ref = model(x, t, ctx, y=y)
        model.to(torch.bfloat16)
        got = model(x, t, ctx, y=y)
    assert got.dtype == torch.float32  # the result comes back in the input's dtype
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_conv_weights_are_relaid_once_at_load_not_per_forward():
    """NHWC conv weights are made once (to_channels_last, which the checkpoint loader calls for the
    CPU); forward passes then use the same Parameter objects, and the result equals the NCHW one."""
    unet = tiny_unet("sd15")
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 7, tiny_unet_config("sd15").context_dim)
    with torch.no_grad():
        want = unet(x, t, ctx)
        unet.to_channels_last()
        convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        params = [p for p in unet.parameters()]
        got = unet(x, t, ctx)
        unet(x, t, ctx)
    assert all(a is b for a, b in zip(params, unet.parameters()))  # nothing re-laid out per call
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
