"""Attention on the CPU computes ComfyUI's numbers bit for bit (torch.equal against outputs
recorded from ComfyUI's own functions by tests/data/attention/make_attention_reference.py), through
the paths our models take: the UNet's default attention in fp32, the text encoder's basic
attention with its causal mask, the VAE's attention; the row blocks change no value; and whole
SD2.1- and SDXL-layout UNets give ComfyUI's UNetModel's output in fp32."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from diffusion import attention
from diffusion.clip_text import ClipAttention, ClipTextConfig
from tests import attention_cases
from tests.paths import REPO

pytestmark = pytest.mark.usefixtures("recorded_threads")  # compares bit for bit with ComfyUI's recorded numbers

REFERENCE = load_file(str(REPO / "tests" / "data" / "attention" / "comfyui_attention.safetensors"))
CASES = {c.name: c for c in attention_cases.CASES}


def ours(case: attention_cases.Case) -> torch.Tensor:
    q, k, v, mask = attention_cases.inputs(case)
    if case.kind == "vae":
        return attention.vae_attention(q, k, v)
    fn = attention.optimized_attention if case.kind == "sub_quad" else attention.attention_basic
    if case.dtype != torch.float32:   # the default chooses SDPA for bf16; ComfyUI's function by name
        fn = attention.attention_sub_quad
    return fn(q, k, v, case.heads, mask=mask, attn_precision=case.precision, skip_reshape=case.skip_reshape,
              skip_output_reshape=case.skip_reshape)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_attention_is_comfyuis_bit_for_bit(name):
    with torch.no_grad():
        got = ours(CASES[name])
    expected = REFERENCE[name]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.equal(got, expected), f"max difference {(got.float() - expected.float()).abs().max():.3g}"


@pytest.mark.parametrize("name", ["unet_self", "unet_masked", "vae_mid"])
def test_blocks_of_query_rows_change_no_value(name, monkeypatch):
    monkeypatch.setattr(attention, "_SCORE_BLOCK_BYTES", 4096)   # the fewest rows a block may have
    with torch.no_grad():
        assert torch.equal(ours(CASES[name]), REFERENCE[name])


def test_sdpa_differs_from_comfyuis_cpu_attention():
    """What the exact path is for: SDPA's sums are not ComfyUI's (so the test above can fail)."""
    case = CASES["unet_self"]
    q, k, v, _ = attention_cases.inputs(case)
    with torch.no_grad():
        sdpa = attention.attention_pytorch(q, k, v, case.heads)
    assert torch.allclose(sdpa, REFERENCE[case.name], atol=1e-4)
    assert not torch.equal(sdpa, REFERENCE[case.name])


def test_clip_attention_on_the_cpu_is_causal_and_comfyuis():
    """The text encoder's attention layer: its ComfyUI-exact CPU path is the causal attention SDPA
    computes, to rounding; a later token never changes an earlier token's output."""
    torch.manual_seed(0)
    layer = ClipAttention(ClipTextConfig()).eval()
    x = torch.randn(1, 77, 768)
    with torch.no_grad():
        out = layer(x)
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, 12, 64).transpose(1, 2) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
        sdpa = layer.out_proj(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                              .transpose(1, 2).reshape(b, t, d))
        changed = x.clone()
        changed[:, 40:] += 1.0
        later = layer(changed)
    assert torch.allclose(out, sdpa, atol=1e-5)
    assert torch.equal(out[:, :40], later[:, :40])
    assert not torch.equal(out[:, 40:], later[:, 40:])


def test_compat_device_choice_is_comfyuis():
    from compat.comfy.ldm.modules import attention as compat_attention

    assert compat_attention.optimized_attention_for_device(torch.device("cpu"), small_input=True) \
        is attention.attention_basic
    assert compat_attention.optimized_attention_for_device("cpu", mask=True) is attention.attention_sub_quad
    assert compat_attention.get_attention_function("sub_quad") is attention.attention_sub_quad


@pytest.mark.parametrize("style", attention_cases.UNET_STYLES)
def test_fp32_unet_is_comfyuis_bit_for_bit(style):
    from tests.models_tiny import tiny_unet, tiny_unet_config

    unet = tiny_unet(style, seed=attention_cases.UNET_SEED)
    x, t, context, y = attention_cases.unet_inputs(tiny_unet_config(style))
    with torch.no_grad():
        got = unet(x, t, context, y=y)
    expected = REFERENCE[f"unet_{style}"]
    assert torch.equal(got, expected), f"max difference {(got - expected).abs().max():.3g}"
