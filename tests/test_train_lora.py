"""LoRA training (diffusion.training.lora_train and the train command) on a tiny random-weight SD1
checkpoint: the loss falls, the saved file loads through Load LoRA with every key used and pulls
samples towards the training latents, a seed fixes the run, and a resumed run continues exactly."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from app import train_cli
from diffusion.device import DevicePolicy
from diffusion.handles import open_checkpoint
from diffusion.ksampler import common_ksampler
from diffusion.lora import load_lora_for_models, read_lora, unet_key_map
from diffusion.model_management import ModelManagement, load_models_gpu
from diffusion.training.lora_train import LoraSettings, LoraTrainer, checkpoint_units, kohya_name, steps_in_filename
from diffusion.training.scratch import Recipe, checkpoint_state_dict, write_checkpoint
from diffusion.unet import UNetModel
from diffusion.vae import AutoencoderKL
from tests.models_tiny import randomize_
from tests.node_helpers import checkpoint_session


TINY = Recipe(unet_channels=32, unet_mult=(1, 2), unet_res_blocks=1, text_width=32, text_layers=1,
              vae_mult=(1, 1, 1, 1))


def write_tiny_sd1(path: Path) -> Path:
    """An SD1-layout checkpoint with a 32-wide CLIP (narrow text encoders are detected as SD1)."""
    unet = randomize_(UNetModel(TINY.unet_config()), 0)
    vae = randomize_(AutoencoderKL(TINY.vae_config()), 1)
    text = randomize_(TINY.text_encoder(), 2)
    write_checkpoint(path, checkpoint_state_dict(unet, vae, text, torch.float32), {})
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_lora")
    (root / "models" / "checkpoints").mkdir(parents=True)
    write_tiny_sd1(root / "models" / "checkpoints" / "tiny_sd1.safetensors")
    return root


@pytest.fixture(scope="module")
def models(base):
    return open_checkpoint(base / "models" / "checkpoints" / "tiny_sd1.safetensors",
                           ModelManagement(DevicePolicy.choose(cpu=True)), [])


def encode(clip, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def denoised(model, x, sigma, context) -> torch.Tensor:
    """The MODEL's x0 estimate with its patches applied (loaded as for sampling)."""
    load_models_gpu([model], force_full_load=True)
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=context)


@pytest.fixture(scope="module")
def data(models):
    """Three 8x8 latents (decodable pictures: flat colours with a block) and their captions."""
    gen = torch.Generator().manual_seed(7)
    latents = torch.randn(3, 4, 8, 8, generator=gen) * 3
    positive = [encode(models.clip, text)[0] for text in ("a red square", "a blue circle", "a green triangle")]
    return latents, positive


def train(models, data, **options):
    settings = LoraSettings(**{"steps": 8, "batch_size": 2, "learning_rate": 0.01, "rank": 4, **options})
    latents, positive = data
    with torch.inference_mode():   # as node calls run: the trainer must leave it itself
        trainer = LoraTrainer(models.model, latents, positive, settings)
        trainer.run()
    return trainer


def test_the_loss_on_the_training_images_falls(models, data):
    latents, positive = data
    with torch.inference_mode():
        trainer = LoraTrainer(models.model, latents, positive,
                              LoraSettings(steps=25, batch_size=3, learning_rate=0.01, rank=4))
        before = trainer.validation_loss()
        trainer.run()
        after = trainer.validation_loss()
    assert len(trainer.losses) == 25
    assert after < 0.7 * before, (before, after)


def test_the_first_step_starts_from_the_unchanged_model(models, data):
    """down = 0 at the start: the adapters add nothing until the optimizer moves them."""
    latents, positive = data
    trainer = LoraTrainer(models.model, latents, positive, LoraSettings(rank=4, training_dtype="fp32"))
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([3.0])
    plain = denoised(models.model, x, sigma, positive[0][0])
    with trainer.lora.installed(models.model.model.diffusion_model):
        adapted = denoised(models.model, x, sigma, positive[0][0])
    # equal up to the convolution kernel chosen for a channels-last vs a contiguous weight
    assert torch.allclose(plain, adapted, rtol=0, atol=1e-5)


def test_the_saved_lora_loads_with_every_key_used_and_pulls_samples_towards_the_training_latent(models, base):
    """One image, one caption: after training, sampling that caption lands nearer the image."""
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 3
    positive = encode(models.clip, "a purple star")
    with torch.inference_mode():
        trainer = LoraTrainer(models.model, target, positive,
                              LoraSettings(steps=40, batch_size=1, learning_rate=0.02, rank=8, lora_dtype="fp32"))
        trainer.run()
    lora = trainer.lora_state_dict()
    assert any(k.endswith(".diff") for k in lora) and any(k.endswith(".diff_b") for k in lora)
    assert all(k.startswith("lora_unet_") for k in lora)
    to_load = {name: target.key for name, target in unet_key_map(models.model.model.diffusion_model).items()}
    assert read_lora(lora, to_load)[1] == []   # every key used

    for seed, ratio in pull_towards(base, lora, "star", target):
        assert ratio < 0.6, seed


def pull_towards(base: Path, lora: dict, name: str, target: torch.Tensor, seeds=(0, 1)) -> list[tuple[int, float]]:
    """Save `lora`, load it through LoraLoader (every key must be used) and sample with and
    without it: per seed, (distance to `target` with it) / (distance without it)."""
    folder = base / "models" / "loras"
    folder.mkdir(exist_ok=True)
    save_file(lora, str(folder / f"{name}.safetensors"))
    session = checkpoint_session(base, "tiny_sd1.safetensors")
    result = session.node("LoraLoader", model=session.model, clip=session.clip, lora_name=f"{name}.safetensors",
                          strength_model=1.0, strength_clip=1.0)
    assert isinstance(result, tuple), result  # a dict result would carry a warning about unused keys
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    cond = encode(session.clip, "a purple star")

    def sample(model, seed):
        with torch.inference_mode():
            return common_ksampler(model, seed, 10, 1.0, "euler", "normal", cond, cond, empty)["samples"]

    return [(seed, ((sample(result[0], seed) - target).norm() / (sample(session.model, seed) - target).norm()).item())
            for seed in seeds]


def test_a_seed_fixes_the_run_and_another_seed_changes_it(models, data):
    first, again, other = (train(models, data, seed=s).lora_state_dict() for s in (5, 5, 6))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_gradient_checkpointing_gives_the_same_training(models, data):
    on = train(models, data, gradient_checkpointing=True, training_dtype="fp32", lora_dtype="fp32")
    off = train(models, data, gradient_checkpointing=False, training_dtype="fp32", lora_dtype="fp32")
    a, b = on.lora_state_dict(), off.lora_state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert len(checkpoint_units(models.model.model.diffusion_model)) > 10   # blocks, not the whole network


def test_resuming_from_a_saved_state_continues_exactly(models, data):
    latents, positive = data
    settings = LoraSettings(steps=8, batch_size=2, learning_rate=0.01, rank=4, grad_accumulation_steps=2)
    straight = train(models, data, **vars(settings))
    with torch.inference_mode():
        first = LoraTrainer(models.model, latents, positive, settings)
        for _ in range(6):
            first.step()
        state = first.state_dict()
        second = LoraTrainer(models.model, latents, positive, settings)
        second.load_state_dict(state)
        second.run()
    a, b = straight.lora_state_dict(), second.lora_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.losses == straight.losses


def test_an_existing_lora_is_continued_from_its_values(models, data, tmp_path):
    latents, positive = data
    start = train(models, data, rank=2, lora_dtype="fp32").lora_state_dict()
    with torch.inference_mode():
        trainer = LoraTrainer(models.model, latents, positive, LoraSettings(rank=8, lora_dtype="fp32"), start)
    resumed = trainer.lora_state_dict()
    assert trainer.existing_modules > 0
    assert all(torch.equal(start[k], resumed[k]) for k in start)   # the file's rank (2), not 8
    foreign = {"lora_unet_no_such_module.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_no_such_module.lora_down.weight": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match="does not fit this model"):
        LoraTrainer(models.model, latents, positive, LoraSettings(), foreign)


def test_the_applied_lora_matches_the_trained_adapters(models, data):
    """What Load LoRA applies from the file is what the trainer computed with."""
    trainer = train(models, data, lora_dtype="fp32", training_dtype="fp32")
    patched, _, report = load_lora_for_models(models.model, None, trainer.lora_state_dict(), 1.0, 0.0)
    assert report.problems == 0
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([2.0, 5.0])
    context = torch.cat([data[1][0][0], data[1][1][0]])
    loaded = denoised(patched, x, sigma, context)
    with trainer.lora.installed(models.model.model.diffusion_model):
        trained = denoised(models.model, x, sigma, context)
    assert (loaded - trained).abs().max().item() < 1e-4


def test_kohya_names_and_steps_in_file_names():
    assert kohya_name("input_blocks.1.1.transformer_blocks.0.attn1.to_q") == \
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    assert steps_in_filename("loras/ComfyUI_trained_lora_120_steps_00003_.safetensors") == 120
    assert steps_in_filename("my_lora.safetensors") == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="optimizer"):
        LoraSettings(optimizer="Lion")
    with pytest.raises(ValueError, match="loss_function"):
        LoraSettings(loss_function="Hinge")


# --- the train command ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset")
    colours = [(220, 40, 40), (40, 80, 220), (40, 170, 60)]
    for i, colour in enumerate(colours):
        pixels = np.full((64, 64, 3), 235, np.uint8)
        pixels[16 + 4 * i:40 + 4 * i, 20:44] = colour
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a square, picture {i}")
    return folder


def cli(base, dataset, output, *extra):
    err = io.StringIO()
    code = train_cli.main([str(dataset), "--checkpoint", "tiny_sd1.safetensors", "--base-directory", str(base),
                           "--output", str(output), "--batch-size", "2", "--learning-rate", "0.01", "--rank", "4",
                           "--training-dtype", "fp32", *extra], err=err)
    return code, err.getvalue()


def test_the_command_trains_saves_a_plot_and_resumes_exactly(base, dataset, tmp_path):
    whole = tmp_path / "whole.safetensors"
    code, log = cli(base, dataset, whole, "--steps", "6")
    assert code == 0, log
    assert "6/6" in log and whole.is_file() and train_cli.plot_path(whole).is_file()
    assert Image.open(train_cli.plot_path(whole)).size == (840, 520)

    parts = tmp_path / "parts.safetensors"
    code, log = cli(base, dataset, parts, "--steps", "4", "--save-every", "2")
    assert code == 0, log
    code, log = cli(base, dataset, parts, "--steps", "6", "--resume")
    assert code == 0, log
    assert "resumed from" in log and "at step 4" in log
    a, b = load_file(str(whole)), load_file(str(parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    code, log = cli(base, dataset, parts, "--steps", "8", "--resume", "--rank", "8")
    assert code == 2 and "another data set or settings" in log and "settings" in log


def test_the_command_reports_a_missing_checkpoint_or_folder(base, dataset, tmp_path):
    err = io.StringIO()
    code = train_cli.main([str(dataset), "--checkpoint", "nope.safetensors", "--base-directory", str(base),
                           "--output", str(tmp_path / "x.safetensors")], err=err)
    assert code == 2 and "nope.safetensors" in err.getvalue()
    code, log = cli(base, tmp_path / "missing", tmp_path / "x.safetensors")
    assert code == 2 and "does not exist" in log
