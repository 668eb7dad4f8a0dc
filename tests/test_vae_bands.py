"""The autoencoder's layers in bands of rows (diffusion.vae_bands) against the same layers run
whole, bit for bit, on the real shapes of an SD VAE decoding a 512x512 image (random weights,
torch's own thread count, as the server runs them). tests/test_comfy_node_parity.py checks the
banded path against ComfyUI's recorded pixels on a small VAE."""
import pytest
import torch
import torch.nn.functional as F

from diffusion import vae_bands
from diffusion.vae import ResnetBlock, Upsample
from tests.models_tiny import randomize_


@pytest.fixture
def calls(monkeypatch):
    """Counts the banded functions' calls, so a test knows the banded path really ran."""
    seen = {"normed_conv": 0, "upsampled_conv": 0}
    for name in seen:
        original = getattr(vae_bands, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(vae_bands, name, counted)
    return seen


def whole(monkeypatch, layer, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` computed on whole tensors (banding switched off)."""
    with monkeypatch.context() as m:
        m.setattr(vae_bands, "BANDED_FROM_BYTES", 1 << 62)
        return layer(x.clone())


@torch.no_grad()
def test_last_level_resnet_block_in_bands_equals_whole(monkeypatch, calls):
    # The decoder's first full-resolution block: 256 -> 128 channels at 512x512 with its 1x1
    # shortcut. Covers GroupNorm at both widths, both 3x3 convolutions and the residual sum.
    # As the decoder runs it: the first conv's output written over the input's first channels.
    block = randomize_(ResnetBlock(256, 128, 32), seed=1).eval()
    x = torch.randn(1, 256, 512, 512, generator=torch.Generator().manual_seed(2))
    expected = whole(monkeypatch, block, x)
    got = block(x.clone(), reuse_input=True)
    assert calls["normed_conv"] == 2
    assert got.shape == (1, 128, 512, 512) and torch.equal(got, expected)


@torch.no_grad()
def test_upsample_to_full_resolution_in_bands_equals_whole(monkeypatch, calls):
    up = randomize_(Upsample(256), seed=3).eval()
    x = torch.randn(1, 256, 256, 256, generator=torch.Generator().manual_seed(4))
    expected = whole(monkeypatch, up, x)
    got = up(x)
    assert calls["upsampled_conv"] == 1
    assert got.shape == (1, 256, 512, 512) and torch.equal(got, expected)


@torch.no_grad()
def test_output_layers_in_bands_equal_whole():
    # The decoder's norm_out, SiLU and conv_out (128 -> 3 channels) at 512x512.
    norm = randomize_(torch.nn.GroupNorm(32, 128, eps=1e-6), seed=5)
    conv = randomize_(torch.nn.Conv2d(128, 3, 3, padding=1), seed=6)
    x = torch.randn(1, 128, 512, 512, generator=torch.Generator().manual_seed(7))
    assert torch.equal(vae_bands.normed_conv(norm, conv, x), conv(F.silu(norm(x))))


@torch.no_grad()
def test_a_batch_of_images_in_bands_written_over_the_input_equals_whole():
    norm = randomize_(torch.nn.GroupNorm(32, 256, eps=1e-6), seed=10)
    conv = randomize_(torch.nn.Conv2d(256, 128, 3, padding=1), seed=11)
    x = torch.randn(2, 256, 128, 128, generator=torch.Generator().manual_seed(12))
    expected = conv(F.silu(norm(x)))
    got = vae_bands.normed_conv(norm, conv, x, out=x[:, :128])   # overwrites x's first channels
    assert torch.equal(got, expected)


@torch.no_grad()
def test_group_norm_statistics_match_torchs_over_a_few_groups_at_a_time():
    norm = randomize_(torch.nn.GroupNorm(32, 256, eps=1e-6), seed=8)
    x = 3 * torch.randn(1, 256, 256, 256, generator=torch.Generator().manual_seed(9)) + 1
    scale, shift = vae_bands.group_norm_affine(norm, x)
    assert torch.equal(torch.addcmul(shift, x, scale), norm(x))


def test_only_large_float32_nchw_tensors_without_autograd_are_banded():
    big = torch.empty(1, 128, 512, 512)
    with torch.no_grad():
        assert vae_bands.banded(big)
        assert not vae_bands.banded(torch.empty(1, 128, 64, 64))                         # small
        assert vae_bands.banded(torch.empty(1, 256, 256, 256), growth=4)                 # upsampled output
        assert not vae_bands.banded(big.to(torch.bfloat16))                               # reduced precision
        assert not vae_bands.banded(big.contiguous(memory_format=torch.channels_last))   # NHWC kernels
    with torch.enable_grad():   # explicitly: an engine run in this process may have turned it off
        assert not vae_bands.banded(big)                                                 # training


def test_layers_a_plugin_replaced_or_hooked_run_whole():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    assert vae_bands.supports(torch.nn.GroupNorm(4, 8), conv, None)
    assert not vae_bands.supports(torch.nn.Conv2d(8, 8, 1))                  # a 1x1 kernel is not band-exact
    assert not vae_bands.supports(torch.nn.GroupNorm(4, 8, affine=False))
    conv.register_forward_hook(lambda *args: None)
    assert not vae_bands.supports(conv)
