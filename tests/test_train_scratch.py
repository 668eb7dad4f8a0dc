"""Pieces of the from-scratch trainer (diffusion.training.scratch, .loop) checked on tiny networks:
what is trained is what the loader runs, the latent re-coordination changes nothing the decoder
shows, and the denoising loss is the textbook one."""
import random

import pytest
import torch

from diffusion.checkpoint import detect, load_checkpoint
from diffusion.latent_formats import SD15
from diffusion.model_sampling import ModelSamplingDiscrete
from diffusion.training import shapes
from diffusion.training.loop import EMA, coarse_noise, cosine_lr, denoising_loss, snr_weights
from diffusion.training.scratch import (CaptionTokens, Recipe, checkpoint_state_dict, encode,
                                        normalise_latent_space, pixels, reconstruction_loss, text_context,
                                        write_checkpoint)
from diffusion.unet import UNetModel
from diffusion.vae import AutoencoderKL
from tests.models_tiny import randomize_
from tests.test_train_lora import TINY



def test_the_trained_text_path_is_the_one_the_loader_runs(tmp_path):
    """Conditioning computed with gradients during training equals what CLIPTextEncode gets from
    the written file."""
    unet = randomize_(UNetModel(TINY.unet_config()), 0)
    vae = randomize_(AutoencoderKL(TINY.vae_config()), 1)
    text = randomize_(TINY.text_encoder(), 2)
    caption = "a small red circle at the top left on a blue background"
    ids = CaptionTokens(text).batch([caption, ""], "cpu")
    with torch.no_grad():
        trained = text_context(text, ids)
    path = tmp_path / "tiny.safetensors"
    write_checkpoint(path, checkpoint_state_dict(unet, vae, text, torch.float32), {"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.info.family == "sd1" and loaded.info.unet_config.context_dim == TINY.text_width
    with torch.no_grad():
        cond, _ = loaded.text.encode(caption)
        empty, _ = loaded.text.encode("")
    assert torch.allclose(cond[0], trained[0], atol=1e-5) and torch.allclose(empty[0], trained[1], atol=1e-5)


def test_a_narrow_text_encoder_is_sd1_only_when_it_matches_the_unet(tmp_path):
    unet = UNetModel(TINY.unet_config())
    wider = Recipe(text_width=64, text_layers=1).text_encoder()
    sd = checkpoint_state_dict(unet, AutoencoderKL(TINY.vae_config()), wider, torch.float32)
    with pytest.raises(Exception, match="matches no known family"):
        detect(sd)


def test_the_latent_recoordination_keeps_reconstructions_and_normalises_latents():
    recipe = Recipe(vae_mult=(1, 1, 1, 1))
    vae = randomize_(AutoencoderKL(recipe.vae_config()), 4).eval()
    rng = random.Random(0)
    images = pixels(shapes.make_batch([rng.choice(shapes.all_scenes()) for _ in range(8)], rng))
    cpu = torch.device("cpu")
    with torch.no_grad():
        before = vae.decode(vae.encode(images))
        report = normalise_latent_space(vae, recipe, cpu, torch.float32, samples=64)
        after = vae.decode(vae.encode(images))
        latents = encode(vae, images, cpu, torch.float32) * SD15().scale_factor
    assert (after - before).abs().max().item() < 2e-3
    assert abs(report["latent_mean"]) < 0.1 and abs(report["latent_std"] - 1) < 0.2
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    assert flat.std(0).min().item() > 0.5   # every channel carries variance, none collapsed


def test_the_denoising_loss_is_the_noise_regression_of_ddpm():
    """For a network that returns the true noise the loss is 0; for one that returns zeros it is
    E[eps^2] = 1 (eps prediction), and Min-SNR weights follow min(SNR, gamma) / SNR."""
    ms = ModelSamplingDiscrete("eps")
    x0 = torch.randn(64, 4, 8, 8)
    seen = {}

    def oracle(xin, t, context):
        sigma = ms.sigmas[t.long()].view(-1, 1, 1, 1)
        x = xin * (sigma ** 2 + 1).sqrt()   # back from the network's input scaling
        seen["noise"] = (x - x0) / sigma
        return seen["noise"]

    gen = torch.Generator().manual_seed(0)
    assert denoising_loss(oracle, ms, x0, None, gen).loss.item() < 1e-8
    zero = denoising_loss(lambda xin, t, context: torch.zeros_like(xin), ms, x0, None, gen)
    assert abs(zero.per_sample.mean().item() - 1.0) < 0.05
    sigma = torch.tensor([0.1, 1.0, 10.0])
    expected = torch.clamp(1 / sigma ** 2, max=5.0) / (1 / sigma ** 2)
    assert torch.allclose(snr_weights(sigma, 5.0, "eps"), expected)


def test_coarse_noise_adds_smooth_fields_to_the_same_white_noise():
    """The draws do not depend on the strengths, so the difference of two runs is the coarse
    part alone: a per-channel constant for the 1x1 level (offset noise), a field with no
    8x8-scale detail for the 4x4 level; strengths () is plain Gaussian noise."""
    shape = torch.Size([2048, 4, 8, 8])

    def draw(strengths):
        return coarse_noise(shape, torch.Generator().manual_seed(3), strengths)

    white = draw((0.0, 0.0, 0.0))
    assert torch.equal(coarse_noise(shape, torch.Generator().manual_seed(3), ()),
                       torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    offset = draw((0.0, 0.0, 0.6)) - white
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-6)
    assert abs(offset[:, :, 0, 0].std().item() - 0.6) < 0.02
    # the spatial mean of white noise has std 1/8; with the offset it is sqrt(1/64 + 0.36)
    assert abs(draw((0.0, 0.0, 0.6)).mean((2, 3)).std().item() - (1 / 64 + 0.36) ** 0.5) < 0.02
    smooth = draw((1.0, 0.0, 0.0)) - white
    # bilinear upsampling from 4x4: neighbouring cells are strongly correlated, white noise's are not
    corr = lambda t: torch.corrcoef(torch.stack([t[..., :, :-1].flatten(), t[..., :, 1:].flatten()]))[0, 1]
    assert corr(smooth) > 0.7 and abs(corr(white)) < 0.02


def test_reconstruction_loss_pays_for_the_shape_and_its_outline():
    scene = shapes.Scene("red", "square", "small", "center", "blue")
    x = pixels(shapes.draw(scene)[None])
    background_only = pixels(shapes.draw(scene.__class__("blue", "square", "small", "center", "blue"))[None])
    plain = reconstruction_loss(background_only, x, foreground=0.0, edges=0.0).item()
    weighted = reconstruction_loss(background_only, x, foreground=3.0, edges=0.0).item()
    with_edges = reconstruction_loss(background_only, x, foreground=3.0, edges=0.5).item()
    assert weighted == pytest.approx(4 * plain, rel=1e-4)   # every wrong pixel is a foreground pixel
    assert with_edges > weighted
    assert reconstruction_loss(x, x, 3.0, 0.5).item() == 0


def test_schedule_and_ema():
    assert cosine_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, warmup=10, floor=0.1) == pytest.approx(0.1)
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=1000)   # decay min(0.5, ...) = 0.5: halfway to the new weights
    assert torch.allclose(ema.state_dict()["weight"], net.weight - 0.5)
