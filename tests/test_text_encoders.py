"""Text encoders: checkpoint layouts, agreement with independent implementations, ComfyUI semantics.

Numerical checks use small random-weight models in the original checkpoint layouts; the
references are transformers' own CLIPTextModel forward and diffusers' OpenCLIP key converter
(transformers is a test-only dependency: our transformer is diffusion.clip_text).
"""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffusion.prompt_weights import EmbeddingDirectory
from diffusion.text_encoders import (SD1TextEncoder, SD2TextEncoder, SDXLRefinerTextEncoder, SDXLTextEncoder,
                                     TextEncoder, text_config)
from diffusion.tokenizer import ClipTokenizer
from tests import paths

SPEC = paths.SPEC_KEYS
VOCAB, POSITIONS = 49408, 77
# transformers' attention sums in its own order, ours in ComfyUI's (basic attention on the CPU):
# on outputs of magnitude ~15 the two differ by fp32 rounding, up to 3e-5; a wrong layer, norm or
# projection differs by far more.
TOL = 5e-5


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


# -- random original-layout weights -------------------------------------------------------------

def _noise(shape, generator, scale=0.05):
    return torch.randn(shape, generator=generator) * scale


def _norm(width, generator):
    return {"weight": 1 + _noise([width], generator, 0.1), "bias": _noise([width], generator, 0.1)}


def clip_l_weights(prefix, width=64, layers=3, seed=0):
    """CLIP-L layout (transformers' key names under text_model.), as SD1/SDXL checkpoints hold it."""
    g = torch.Generator().manual_seed(seed)
    sd = {"text_model.embeddings.token_embedding.weight": _noise([VOCAB, width], g, 0.5),
          "text_model.embeddings.position_embedding.weight": _noise([POSITIONS, width], g, 0.5),
          "text_model.embeddings.position_ids": torch.arange(POSITIONS).unsqueeze(0)}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"] = _noise([width, width], g, 0.2)
            sd[p + f"self_attn.{name}.bias"] = _noise([width], g)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = _noise([4 * width, width], g, 0.2), _noise([4 * width], g)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = _noise([width, 4 * width], g, 0.1), _noise([width], g)
        for n in ("layer_norm1", "layer_norm2"):
            sd.update({p + f"{n}.{k}": v for k, v in _norm(width, g).items()})
    sd.update({f"text_model.final_layer_norm.{k}": v for k, v in _norm(width, g).items()})
    return {prefix + k: v for k, v in sd.items()}


def open_clip_weights(prefix, width=128, layers=3, seed=1):
    """OpenCLIP text layout (fused in_proj, resblocks, ln_final, text_projection, logit_scale)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"token_embedding.weight": _noise([VOCAB, width], g, 0.5),
          "positional_embedding": _noise([POSITIONS, width], g, 0.5),
          "text_projection": _noise([width, width], g, 0.2),
          "logit_scale": torch.tensor(4.6052)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = _noise([3 * width, width], g, 0.2)
        sd[p + "attn.in_proj_bias"] = _noise([3 * width], g)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = _noise([width, width], g, 0.2), _noise([width], g)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = _noise([4 * width, width], g, 0.2), _noise([4 * width], g)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = _noise([width, 4 * width], g, 0.1), _noise([width], g)
        for n in ("ln_1", "ln_2"):
            sd.update({p + f"{n}.{k}": v for k, v in _norm(width, g).items()})
    sd.update({f"ln_final.{k}": v for k, v in _norm(width, g).items()})
    return {prefix + k: v for k, v in sd.items()}


SD1_PREFIX = "cond_stage_model.transformer."
SD2_PREFIX = "cond_stage_model.model."
XL_L_PREFIX, XL_G_PREFIX = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."


def hf_config(config):
    """transformers' CLIPTextConfig of the same sizes (pooling at the first end token, as ours)."""
    return CLIPTextConfig(**dataclasses.asdict(config), bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def hf_clip_l(sd, prefix, width=64, layers=3):
    """transformers' CLIPTextModel loaded directly from CLIP-L-layout weights (no code of ours)."""
    model = CLIPTextModel(hf_config(text_config(width, layers, act="quick_gelu"))).eval()
    state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not missing
    return model


def hf_open_clip(sd, prefix, width=128, layers=3):
    """CLIPTextModelWithProjection loaded through diffusers' own OpenCLIP converter."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    model = CLIPTextModelWithProjection(hf_config(text_config(width, layers, act="gelu", projection_dim=width))).eval()
    converted = convert_open_clip_checkpoint(model, sd, prefix=prefix)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected
    return model, missing


def ids_of(window):
    return torch.tensor([[t for t, _ in window]])


def run_hf(model, ids):
    with torch.no_grad():
        return model(ids, output_hidden_states=True)


# -- layouts: real sizes on the meta device -----------------------------------------------------

def spec_keys(file, prefixes):
    rows = json.loads((SPEC / file).read_text())
    return {k: tuple(shape) for k, shape, _ in rows if k.startswith(prefixes)}


@pytest.mark.parametrize("cls, file", [(SD1TextEncoder, "sd15_full.json"), (SD2TextEncoder, "sd21_768_full.json"),
                                       (SDXLTextEncoder, "sdxl_base_1.0_full.json")])
def test_original_keys_match_released_files(cls, file):
    expected = spec_keys(file, tuple(t.prefix for t in cls.TOWERS))
    assert expected  # the spec lists these encoders' keys
    with torch.device("meta"):
        encoder = cls()
    got = {k: tuple(v.shape) for k, v in encoder.state_dict_original().items()}
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))[:10]
    assert got == expected
    # and the family is recognised from those keys alone, built at full size from shapes
    meta_sd = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    assert TextEncoder.detect(meta_sd) is cls
    configs = {name: t.transformer.config for name, t in encoder.towers.items()}
    built = TextEncoder.from_state_dict(meta_sd, device="meta")
    for name, tower in built.towers.items():
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                      "projection_dim"):
            assert getattr(tower.transformer.config, field) == getattr(configs[name], field)


def test_real_configs():
    with torch.device("meta"):
        sd1, sd2, xl = SD1TextEncoder(), SD2TextEncoder(), SDXLTextEncoder()
    def shape(tower):
        c = tower.transformer.config
        return c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.hidden_act
    assert shape(sd1.towers["l"]) == (768, 12, 12, 3072, "quick_gelu")
    assert shape(sd2.towers["h"]) == (1024, 24, 16, 4096, "gelu")
    assert shape(xl.towers["l"]) == (768, 12, 12, 3072, "quick_gelu")
    assert shape(xl.towers["g"]) == (1280, 32, 20, 5120, "gelu")


def test_refiner_layout_and_detection():
    expected = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
                for k, v in spec_keys("sdxl_base_1.0_full.json", (XL_G_PREFIX,)).items()}
    with torch.device("meta"):
        got = {k: tuple(v.shape) for k, v in SDXLRefinerTextEncoder().state_dict_original().items()}
    assert got == expected
    assert TextEncoder.detect({k: torch.empty(s, device="meta") for k, s in expected.items()}) is SDXLRefinerTextEncoder


def test_round_trip_restores_original_weights(tokenizer):
    sd = {**clip_l_weights(XL_L_PREFIX), **open_clip_weights(XL_G_PREFIX), "model.diffusion_model.x": torch.zeros(1)}
    encoder = TextEncoder.from_state_dict(sd, tokenizer=tokenizer)
    assert isinstance(encoder, SDXLTextEncoder)
    back = encoder.state_dict_original()
    assert set(back) == set(sd) - {"model.diffusion_model.x"}
    for key, value in back.items():
        assert value.shape == sd[key].shape and torch.equal(value.to(sd[key].dtype), sd[key]), key


def test_old_sd1_layout_and_float_position_ids(tokenizer):
    sd = clip_l_weights(SD1_PREFIX)
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in sd.items()}
    old[SD1_PREFIX + "embeddings.position_ids"] = torch.arange(77).float()[None] + 0.3  # damaged copy
    a = SD1TextEncoder.from_state_dict(sd, tokenizer=tokenizer).encode("a cat")[0]
    b = TextEncoder.from_state_dict(old, tokenizer=tokenizer).encode("a cat")[0]
    assert torch.equal(a, b)


def test_storage_dtype_is_kept_and_computed_in_float32(tokenizer):
    """ComfyUI's numerics: weights stored in fp16, every op computed in fp32 on the widened weights."""
    sd = {**clip_l_weights(XL_L_PREFIX), **open_clip_weights(XL_G_PREFIX)}
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()}
    half = TextEncoder.from_state_dict(sd, tokenizer=tokenizer, dtype=torch.float16)
    kept = TextEncoder.from_state_dict({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
                                       tokenizer=tokenizer, dtype=None)  # None: the file's dtype
    assert {p.dtype for p in half.parameters()} == {p.dtype for p in kept.parameters()} == {torch.float16}
    on_rounded = TextEncoder.from_state_dict(rounded, tokenizer=tokenizer)
    full = TextEncoder.from_state_dict(sd, tokenizer=tokenizer)
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    tokens = half.tokenize("a (photo:1.3) of a cat, long prompt " * 5)
    for clip_skip in (None, -1):
        cond, pooled = half.encode(tokens, clip_skip)
        assert cond.dtype == pooled.dtype == torch.float32
        for other in (kept, on_rounded):
            c, p = other.encode(tokens, clip_skip)
            assert torch.equal(cond, c) and torch.equal(pooled, p)
        c, p = full.encode(tokens, clip_skip)  # fp16 rounding of the weights: small, but there
        for ours, exact in ((cond, c), (pooled, p)):
            assert 1e-5 < (ours - exact).abs().max() < 1e-2 * exact.abs().max()


def test_attention_is_causal(sd1):
    """A token changes its own and later positions' outputs, never earlier ones."""
    encoder, reference = sd1
    a = encoder.tokenize("a photo of a cat")["l"][0]
    b = list(a)
    b[4] = (encoder.bpe.encode_text("dog")[0], 1.0)
    (za, _), (zb, _) = encoder.encode({"l": [a]}), encoder.encode({"l": [b]})
    assert torch.equal(za[0, :4], zb[0, :4])
    assert (za[0, 4:] - zb[0, 4:]).abs().amax(-1).min() > 1e-3
    assert (zb - run_hf(reference, ids_of(b)).last_hidden_state).abs().max() < TOL


# -- numerical agreement ------------------------------------------------------------------------

def test_clip_l_matches_transformers(tokenizer):
    sd = clip_l_weights(SD1_PREFIX)
    encoder = TextEncoder.from_state_dict(sd, tokenizer=tokenizer)
    assert isinstance(encoder, SD1TextEncoder)
    reference = hf_clip_l(sd, SD1_PREFIX)
    tokens = encoder.tokenize("a photo of a cat")
    cond, pooled = encoder.encode(tokens)
    out = run_hf(reference, ids_of(tokens["l"][0]))
    assert cond.shape == (1, 77, 64) and pooled.shape == (1, 64)
    assert (cond - out.last_hidden_state).abs().max() < TOL
    assert (pooled - out.pooler_output).abs().max() < TOL


@pytest.mark.parametrize("prefix", [SD2_PREFIX, XL_G_PREFIX])
def test_open_clip_matches_diffusers_conversion(prefix, tokenizer):
    sd = open_clip_weights(prefix)
    reference, missing = hf_open_clip(sd, prefix)
    cls = SD2TextEncoder if prefix == SD2_PREFIX else SDXLRefinerTextEncoder
    encoder = cls.from_state_dict({k.replace(XL_G_PREFIX, "conditioner.embedders.0.model."): v for k, v in sd.items()},
                                  tokenizer=tokenizer)
    name = encoder.TOWERS[0].name
    tokens = encoder.tokenize("a photo of a cat, (highly detailed:1.0)")
    window = tokens[name][0]
    end = 1 + len(tokenizer.encode_text("a photo of a cat, highly detailed"))
    assert window[end][0] == 49407 and {t for t, _ in window[end + 1:]} == {0}  # OpenCLIP pads with 0
    out = run_hf(reference, ids_of(window))
    cond, pooled = encoder.encode(tokens)
    penultimate = out.hidden_states[-2]
    if prefix == SD2_PREFIX:  # SD2: penultimate layer through the final norm
        expected = reference.text_model.final_layer_norm(penultimate)
        assert missing == ["text_projection.weight"]  # diffusers leaves SD2's projection out
    else:  # SDXL bigG: penultimate layer as is, pooled through the projection
        expected = penultimate
        assert not missing
        assert (pooled - out.text_embeds).abs().max() < TOL
    assert cond.shape == (1, 77, 128)
    assert (cond - expected).abs().max() < TOL


def test_sdxl_concatenates_both_encoders(tokenizer):
    sd = {**clip_l_weights(XL_L_PREFIX), **open_clip_weights(XL_G_PREFIX)}
    encoder = TextEncoder.from_state_dict(sd, tokenizer=tokenizer)
    tokens = encoder.tokenize("a photo of a cat")
    assert [t for t, _ in tokens["l"][0][6:]] == [49407] * 71 and {t for t, _ in tokens["g"][0][7:]} == {0}
    cond, pooled = encoder.encode(tokens)
    clip_l = run_hf(hf_clip_l(sd, XL_L_PREFIX), ids_of(tokens["l"][0]))
    big_g = run_hf(hf_open_clip(sd, XL_G_PREFIX)[0], ids_of(tokens["g"][0]))
    assert cond.shape == (1, 77, 64 + 128) and pooled.shape == (1, 128)
    assert (cond[..., :64] - clip_l.hidden_states[-2]).abs().max() < TOL  # no final norm for SDXL
    assert (cond[..., 64:] - big_g.hidden_states[-2]).abs().max() < TOL
    assert (pooled - big_g.text_embeds).abs().max() < TOL


# -- ComfyUI semantics --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1(tokenizer):
    sd = clip_l_weights(SD1_PREFIX, layers=4)
    return SD1TextEncoder.from_state_dict(sd, tokenizer=tokenizer), hf_clip_l(sd, SD1_PREFIX, layers=4)


def test_clip_skip_picks_the_hidden_layer(sd1):
    encoder, reference = sd1
    tokens = encoder.tokenize("a photo of a cat")
    out = run_hf(reference, ids_of(tokens["l"][0]))
    norm = reference.final_layer_norm
    assert len(out.hidden_states) == 5  # embeddings + 4 layers
    for skip in (-1, -2, -3, -4):
        cond, pooled = encoder.encode(tokens, clip_skip=skip)
        assert (cond - norm(out.hidden_states[skip])).abs().max() < TOL, skip
        assert (pooled - out.pooler_output).abs().max() < TOL  # pooled is always the last layer's
    default = encoder.encode(tokens)[0]
    assert (default - out.last_hidden_state).abs().max() < TOL
    assert torch.equal(encoder.encode(tokens, clip_skip=-1)[0], default)
    assert torch.equal(encoder.encode(tokens, clip_skip=-9)[0], default)  # deeper than the model: last
    assert (encoder.encode(tokens, clip_skip=-2)[0] - default).abs().max() > 1e-2


def test_sdxl_clip_skip_keeps_norm_off(tokenizer):
    sd = {**clip_l_weights(XL_L_PREFIX), **open_clip_weights(XL_G_PREFIX)}
    encoder = SDXLTextEncoder.from_state_dict(sd, tokenizer=tokenizer)
    tokens = encoder.tokenize("a cat")
    clip_l = run_hf(hf_clip_l(sd, XL_L_PREFIX), ids_of(tokens["l"][0]))
    cond, _ = encoder.encode(tokens, clip_skip=-1)
    assert (cond[..., :64] - clip_l.hidden_states[-1]).abs().max() < TOL
    assert (cond[..., :64] - clip_l.last_hidden_state).abs().max() > 1e-2


def test_weights_interpolate_from_the_empty_prompt(sd1):
    encoder, reference = sd1
    tokens = encoder.tokenize("a (photo:1.5) of a ((cat))")
    window = tokens["l"][0]
    weights = torch.tensor([w for _, w in window])
    assert weights[2] == 1.5 and weights[5] == pytest.approx(1.21) and (weights == 1).sum() == 75
    cond, _ = encoder.encode(tokens)
    z = run_hf(reference, ids_of(window)).last_hidden_state[0]
    empty = [49406, 49407] + [49407] * 75  # start, end, end-token padding
    z_empty = run_hf(reference, torch.tensor([empty])).last_hidden_state[0]
    expected = z.clone()
    for j in (2, 5):
        expected[j] = (z[j] - z_empty[j]) * weights[j] + z_empty[j]
    assert (cond[0] - expected).abs().max() < TOL
    assert (cond[0, 2] - z[2]).abs().max() > 1e-3  # the weight did something


def test_long_prompt_concatenates_windows(sd1):
    encoder, reference = sd1
    tokens = encoder.tokenize("a photo of a cat " * 20)  # 100 tokens
    assert len(tokens["l"]) == 2
    cond, pooled = encoder.encode(tokens)
    assert cond.shape == (1, 154, 64)
    for k, window in enumerate(tokens["l"]):
        out = run_hf(reference, ids_of(window))
        assert (cond[0, 77 * k:77 * (k + 1)] - out.last_hidden_state[0]).abs().max() < TOL
        if k == 0:
            assert (pooled - out.pooler_output).abs().max() < TOL  # pooled from the first window


def test_embedding_vectors_are_injected(sd1, tmp_path):
    encoder, _ = sd1
    table = encoder.towers["l"].text.embeddings.token_embedding.weight
    photo, cat = encoder.bpe.encode_text("photo cat")
    save_file({"emb_params": table[[photo, cat]].clone()}, tmp_path / "photocat.safetensors")
    resolver = EmbeddingDirectory([tmp_path])
    tokens = encoder.tokenize("a embedding:photocat on a mat", embeddings=resolver)
    window = tokens["l"][0]
    assert [j for j, (t, _) in enumerate(window) if isinstance(t, torch.Tensor)] == [2, 3]
    injected, _ = encoder.encode(tokens)
    spelled, _ = encoder.encode("a photo cat on a mat")
    assert (injected - spelled).abs().max() < 1e-5
    other, _ = encoder.encode("a dog bird on a mat")
    assert (injected - other).abs().max() > 1e-2


def test_embedding_resolver_set_on_the_encoder(tokenizer, tmp_path):
    sd = clip_l_weights(SD1_PREFIX)
    save_file({"emb_params": torch.randn(3, 64)}, tmp_path / "style.safetensors")
    encoder = SD1TextEncoder.from_state_dict(sd, tokenizer=tokenizer, embeddings=EmbeddingDirectory([tmp_path]))
    window = encoder.tokenize("embedding:style cat")["l"][0]
    assert [isinstance(t, torch.Tensor) for t, _ in window[:5]] == [False, True, True, True, False]



def test_text_model_attributes_plugins_read(sd1):
    """ComfyUI's (and transformers') text model: num_layers, dtype, device, get/set_input_embeddings;
    a plain torch Embedding set by a plugin, even a half-precision one, still computes in float32."""
    encoder, _ = sd1
    model = encoder.towers["l"].transformer
    assert model.num_layers == 4 and model.dtype == torch.float32 and model.device == torch.device("cpu")
    table = model.get_input_embeddings()
    assert table is model.text_model.embeddings.token_embedding
    tokens = encoder.tokenize("a photo of a cat")
    before, _ = encoder.encode(tokens)
    outputs = {}
    for dtype in (torch.float16, torch.float32):
        plain = torch.nn.Embedding(*table.weight.shape, dtype=dtype)
        plain.weight.data.copy_(table.weight.half())
        model.set_input_embeddings(plain)
        try:
            outputs[dtype], _ = encoder.encode(tokens)
        finally:
            model.set_input_embeddings(table)
    assert outputs[torch.float16].dtype == torch.float32
    assert torch.equal(outputs[torch.float16], outputs[torch.float32])  # fp16 rows widened, not fp16 compute
    assert 0 < (outputs[torch.float16] - before).abs().max() < 1e-2 * before.abs().max()
    assert torch.equal(encoder.encode(tokens)[0], before)
