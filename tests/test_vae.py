"""The KL autoencoder: layout against real key lists, numbers against diffusers; the VAE object: whole
images whatever memory is free, tiles only after an out-of-memory error."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusion.handles import VAE
from diffusion.vae import AutoencoderKL, VAEConfig
from tests import paths

KEYS = paths.SPEC_KEYS
REPO = Path(__file__).resolve().parent.parent
SMALL = VAEConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1)


def spec_vae_shapes(name: str) -> dict[str, tuple[int, ...]]:
    rows = json.loads((KEYS / f"{name}.json").read_text())
    return {k[len("first_stage_model."):]: tuple(s) for k, s, _ in rows if k.startswith("first_stage_model.")}


def random_vae(config: VAEConfig, seed: int = 0, residual_scale: float = 1.0) -> AutoencoderKL:
    """Random weights, with norms and biases randomised too so no term is trivially 0 or 1."""
    torch.manual_seed(seed)
    model = AutoencoderKL(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                is_norm_scale = "norm" in name and name.endswith("weight")
                p.copy_(torch.rand_like(p) * 0.5 + (0.75 if is_norm_scale else -0.25))
            if residual_scale != 1.0 and (".conv2." in name or ".proj_out." in name):
                p.mul_(residual_scale)
    return model


def smooth_periodic(channels: int, height: int, width: int, period: int) -> torch.Tensor:
    """Low-frequency waves whose period divides the tile sizes used below, so every tile sees the
    same value statistics as the whole image (GroupNorm normalises per tile when tiling)."""
    yy, xx = torch.meshgrid(torch.arange(height) / period, torch.arange(width) / period, indexing="ij")
    waves = [0.5 * torch.sin(2 * math.pi * (xx + yy) + c) + 0.3 * torch.cos(2 * math.pi * (xx - yy) + 2 * c)
             for c in range(channels)]
    return torch.stack(waves)[None]


@pytest.mark.parametrize("name", ["sd15_full", "sdxl_base_1.0_full", "sd21_768_full"])
def test_meta_vae_matches_spec_keys_one_for_one(name):
    spec = spec_vae_shapes(name)
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig.sd())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(spec) - set(ours)) == []
    assert sorted(set(ours) - set(spec)) == []
    assert {k: v for k, v in ours.items() if spec[k] != v} == {}
    # the mid attention really is stored as 1x1 convs
    assert ours["decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


def test_config_from_spec_state_dict_is_the_sd_config():
    spec = spec_vae_shapes("sdxl_base_1.0_full")
    meta = {"first_stage_model." + k: torch.empty(s, device="meta") for k, s in spec.items()}
    assert VAEConfig.from_state_dict(meta) == VAEConfig.sd()
    small = {k: torch.empty(v.shape, device="meta") for k, v in random_vae(SMALL).state_dict().items()}
    assert VAEConfig.from_state_dict(small, prefix="") == SMALL
    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        VAEConfig.from_state_dict({"first_stage_model.decoder.conv_in.weight": torch.empty(4, 4)})


def diffusers_twin(ours: AutoencoderKL):
    """The same weights in diffusers' AutoencoderKL, converted by diffusers' own LDM converter."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    c = ours.config
    config = dict(
        in_channels=c.in_channels, out_channels=c.out_channels, latent_channels=c.embed_dim,
        down_block_types=["DownEncoderBlock2D"] * len(c.channel_mult),
        up_block_types=["UpDecoderBlock2D"] * len(c.channel_mult),
        block_out_channels=[c.base_channels * m for m in c.channel_mult],
        layers_per_block=c.num_res_blocks, norm_num_groups=c.norm_groups, sample_size=64,
    )
    original = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    theirs = DiffusersVAE(**config).eval()
    theirs.load_state_dict(convert_ldm_vae_checkpoint(original, config), strict=True)
    return theirs


def test_agrees_with_diffusers_fp32():
    ours = random_vae(SMALL)
    theirs = diffusers_twin(ours)
    pixels = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latent = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_mean = theirs.encode(pixels).latent_dist.mean
        ref_pixels = theirs.decode(latent).sample
        mean = ours.encode(pixels)
        decoded = ours.decode(latent)
    assert mean.shape == (2, 4, 16, 12)
    assert (mean - ref_mean).abs().max() < 1e-4
    assert (decoded - ref_pixels).abs().max() < 1e-4
    assert ref_pixels.abs().max() > 0.1   # not trivially zero
    # the VAE object clamps to 0..1
    assert vae_object(ours).decode(latent).min() >= 0.0


def vae_object(model: AutoencoderKL) -> VAE:
    return VAE(model, "cpu", torch.float32, "cpu")


def test_tiled_agrees_with_untiled_on_smooth_input():
    """Tiles see zero padding at their borders and per-tile GroupNorm statistics, so tiled output is
    not equal to untiled; on a smooth periodic input it must stay close. Stated tolerance: mean
    absolute difference under 20% of the output's standard deviation (the same output shifted by
    one latent pixel differs by 70-90%)."""
    vae = vae_object(random_vae(SMALL, residual_scale=0.3))
    latent = smooth_periodic(4, 32, 40, period=8)
    pixels = (smooth_periodic(3, 128, 160, period=32) * 0.4 + 0.5).movedim(1, -1)
    whole = vae.decode(latent)
    tiled = vae.decode_tiled(latent, tile_x=24, tile_y=24, overlap=8)
    assert tiled.shape == whole.shape == (1, 128, 160, 3)
    assert (tiled - whole).abs().mean() < 0.2 * whole.std()
    whole = vae.encode(pixels)
    tiled = vae.encode_tiled(pixels, tile_x=96, tile_y=96, overlap=32)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.2 * whole.std()


def record_inputs(module) -> list[tuple[int, ...]]:
    seen = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    return seen


def test_whole_images_whatever_memory_is_free(monkeypatch):
    """Pixels never depend on how busy the machine is: one decoder call for the whole batch even
    when almost nothing is free (ComfyUI's tiles are for out-of-memory errors only)."""
    from diffusion import device as device_module

    vae = vae_object(random_vae(SMALL))
    latent = torch.randn(3, 4, 24, 24)
    seen = record_inputs(vae.first_stage_model.decoder)
    plenty = vae.decode(latent)
    monkeypatch.setattr(device_module, "free_memory", lambda device: 1 << 20)
    squeezed = vae.decode(latent)
    assert seen == [(3, 4, 24, 24)] * 2 and torch.equal(plenty, squeezed)
    seen = record_inputs(vae.first_stage_model.encoder)
    pixels = torch.rand(3, 96, 96, 3)
    assert torch.equal(vae.encode(pixels), vae.encode(pixels)) and seen == [(3, 3, 96, 96)] * 2


def test_out_of_memory_falls_back_to_tiles():
    class Fragile(AutoencoderKL):
        """Pretends the first allocation fails (CUDA's error on decode, the CPU allocator's on encode)."""
        failed = set()

        def decode(self, z):
            if "decode" not in self.failed:
                self.failed.add("decode")
                raise torch.OutOfMemoryError("simulated")
            return super().decode(z)

        def encode(self, x):
            if "encode" not in self.failed:
                self.failed.add("encode")
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
            return super().encode(x)

    torch.manual_seed(0)
    vae = vae_object(Fragile(SMALL).eval())
    seen = record_inputs(vae.first_stage_model.decoder)
    out = vae.decode(torch.randn(1, 4, 40, 40))
    # ComfyUI's three tilings of 64 latent cells (tall 128x32, wide 32x128, square 64x64)
    assert out.shape == (1, 160, 160, 3) and sorted(seen) == sorted(
        [(1, 4, 40, 32), (1, 4, 40, 24), (1, 4, 32, 40), (1, 4, 24, 40), (1, 4, 40, 40)])
    seen = record_inputs(vae.first_stage_model.encoder)
    latent = vae.encode(torch.rand(1, 160, 160, 3))
    assert latent.shape == (1, 4, 40, 40) and len(seen) == 3
    with pytest.raises(RuntimeError, match="something else"):  # other errors are not swallowed
        class Broken(AutoencoderKL):
            def decode(self, z):
                raise RuntimeError("something else")
        vae_object(Broken(SMALL)).decode(torch.randn(1, 4, 8, 8))


def test_sizes_not_multiple_of_the_scale_are_centre_cropped_and_tiny_images_refused():
    vae = vae_object(random_vae(SMALL))
    pixels = torch.rand(1, 30, 34, 3)
    assert torch.equal(vae.encode(pixels), vae.encode(pixels[:, 1:29, 1:33]))
    with pytest.raises(ValueError, match="too small to encode"):
        vae.encode(torch.zeros(1, 3, 32, 3))
    with pytest.raises(ValueError, match="multiple of 4"):
        random_vae(SMALL).encode(torch.zeros(1, 3, 30, 32))
