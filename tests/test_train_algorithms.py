"""Train LoRA's other algorithms (LoHa, LoKr, OFT) on the tiny SD1 checkpoint of test_train_lora:
each starts from the unchanged model, learns, saves a file whose every key the LoRA loader uses and
whose loaded weights are the ones the trainer computed with, and moves samples; OFT patches are
checked against an independent computation of the rotation."""
import numpy as np
import pytest
import torch

from diffusion.lora import load_lora_for_models, read_lora, unet_key_map
from diffusion.patches import calculate_weight
from diffusion.training.lora_train import LoraSettings, LoraTrainer, factorization
from tests.test_train_lora import base, data, denoised, encode, models, pull_towards  # noqa: F401 (fixtures)


ALGORITHMS = ["LoHa", "LoKr", "OFT"]
# the factor each algorithm starts at zero, so training starts from the base model
ZERO_AT_START = {"LoHa": "hada_w1_b", "LoKr": "lokr_w1", "OFT": "oft_blocks"}
SUFFIXES = {"LoHa": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
            "LoKr": {"lokr_w1", "lokr_w2", "alpha"}, "OFT": {"oft_blocks", "alpha"}}


def factors(lora: dict, algorithm: str) -> list[torch.Tensor]:
    return [v for k, v in lora.items() if k.endswith("." + ZERO_AT_START[algorithm])]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_first_step_starts_from_the_unchanged_model(models, data, algorithm):
    latents, positive = data
    trainer = LoraTrainer(models.model, latents, positive,
                          LoraSettings(rank=4, training_dtype="fp32", algorithm=algorithm))
    assert all(not t.any() for t in factors(trainer.lora_state_dict(), algorithm))
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([3.0])
    plain = denoised(models.model, x, sigma, positive[0][0])
    with trainer.lora.installed(models.model.model.diffusion_model):
        adapted = denoised(models.model, x, sigma, positive[0][0])
    # equal up to the convolution kernel chosen for a channels-last vs a contiguous weight
    assert torch.allclose(plain, adapted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_loss_falls_and_the_zero_factor_moves(models, data, algorithm):
    latents, positive = data
    with torch.inference_mode():
        trainer = LoraTrainer(models.model, latents, positive,
                              LoraSettings(steps=25, batch_size=3, learning_rate=0.01, rank=4, algorithm=algorithm))
        before = trainer.validation_loss()
        trainer.run()
        after = trainer.validation_loss()
    assert after < 0.7 * before, (before, after)
    moved = factors(trainer.lora_state_dict(), algorithm)
    assert moved and all(t.any() for t in moved)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_saved_file_loads_every_key_and_applies_what_was_trained(models, base, algorithm):
    """One image, one caption: the file is all used, Load LoRA's weights give the trainer's own
    output, and sampling that caption lands nearer the image."""
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 3
    positive = encode(models.clip, "a purple star")
    with torch.inference_mode():
        trainer = LoraTrainer(models.model, target, positive,
                              LoraSettings(steps=40, batch_size=1, learning_rate=0.02, rank=8, lora_dtype="fp32",
                                           training_dtype="fp32", algorithm=algorithm))
        trainer.run()
    lora = trainer.lora_state_dict()
    matrices = {k.split(".", 1)[1] for k in lora if not k.endswith((".diff", ".diff_b"))}
    assert matrices == SUFFIXES[algorithm]
    to_load = {name: t.key for name, t in unet_key_map(models.model.model.diffusion_model).items()}
    assert read_lora(lora, to_load)[1] == []   # every key used

    patched, _, report = load_lora_for_models(models.model, None, lora, 1.0, 0.0)
    assert report.problems == 0
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([2.0, 5.0])
    context = torch.cat([positive[0][0]] * 2)
    loaded = denoised(patched, x, sigma, context)
    with trainer.lora.installed(models.model.model.diffusion_model):
        trained = denoised(models.model, x, sigma, context)
    assert not torch.allclose(loaded, denoised(models.model, x, sigma, context), atol=1e-3)
    assert (loaded - trained).abs().max().item() < 1e-4

    # Measured distance ratios (trained / plain, seeds 0 and 1): LoHa 0.87 / 0.86, LoKr 0.59 / 0.62,
    # OFT 0.72 / 0.71; runs are seeded, so these are fixed on a platform.
    for seed, ratio in pull_towards(base, lora, f"star_{algorithm}", target):
        assert ratio < 0.9, seed


def test_an_existing_file_keeps_its_algorithm_and_values(models, data):
    """As in ComfyUI, a module the file adapts goes on with the file's algorithm, whatever the
    algorithm chosen for the new run."""
    latents, positive = data
    settings = LoraSettings(steps=3, batch_size=2, learning_rate=0.01, rank=2, lora_dtype="fp32", algorithm="LoHa")
    with torch.inference_mode():
        first = LoraTrainer(models.model, latents, positive, settings)
        first.run()
        start = first.lora_state_dict()
        trainer = LoraTrainer(models.model, latents, positive, LoraSettings(rank=8, lora_dtype="fp32"), start)
    resumed = trainer.lora_state_dict()
    assert trainer.existing_modules > 0 and resumed.keys() == start.keys()
    assert all(torch.equal(start[k], resumed[k]) for k in start)


def test_resuming_an_oft_run_continues_exactly(models, data):
    latents, positive = data
    settings = LoraSettings(steps=4, batch_size=2, learning_rate=0.01, rank=4, algorithm="OFT")
    with torch.inference_mode():
        straight = LoraTrainer(models.model, latents, positive, settings)
        straight.run()
        first = LoraTrainer(models.model, latents, positive, settings)
        for _ in range(2):
            first.step()
        second = LoraTrainer(models.model, latents, positive, LoraSettings(**{**vars(settings), "algorithm": "LoRA"}))
        second.load_state_dict(first.state_dict())
        second.run()
    a, b = straight.lora_state_dict(), second.lora_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.losses == straight.losses


def rotated_reference(weight: np.ndarray, blocks: np.ndarray, constraint: float) -> np.ndarray:
    """OFT by its definition, block by block in float64: Q = B - B^T, scaled down to norm
    `constraint` if larger, R = (I - Q)^-1 (I + Q) (the Cayley transform; the factors commute), and
    each block of output rows W_k becomes R_k^T W_k."""
    q = blocks - blocks.transpose(0, 2, 1)
    norm = np.sqrt((q ** 2).sum())
    if constraint > 0 and norm > constraint:
        q = q * constraint / norm
    k, b, _ = blocks.shape
    rows = weight.reshape(k, b, -1)
    out = np.empty_like(rows)
    for i in range(k):
        eye = np.eye(b)
        r = np.linalg.solve(eye - q[i], eye + q[i])
        assert np.allclose(r.T @ r, eye)   # orthogonal: the rotation keeps each column's length
        out[i] = r.T @ rows[i]
    return out.reshape(weight.shape)


@pytest.mark.parametrize("shape", [(12, 5), (12, 3, 3, 3)])
@pytest.mark.parametrize("alpha, strength", [(None, 1.0), (0.5, 1.0), (100.0, 0.5)])
def test_oft_patches_rotate_blocks_of_output_rows(shape, alpha, strength):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    blocks = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64) * 0.3
    lora = {"m.oft_blocks": blocks.float()}
    if alpha is not None:
        lora["m.alpha"] = torch.tensor(alpha)
    patches, unused = read_lora(lora, {"m": "w"})
    assert unused == []
    got = calculate_weight([(strength, patches["w"], 1.0, None, None)], weight.float().clone(), "w")
    rotated = rotated_reference(weight.numpy(), blocks.numpy(), alpha or 0)
    # ComfyUI applies strength twice: W + strength^2 (R W - W)
    want = weight.numpy() + strength ** 2 * (rotated - weight.numpy())
    assert np.abs(got.double().numpy() - want).max() < 1e-5
    assert np.abs(rotated - weight.numpy()).max() > 0.1   # the rotation does change the weight


def test_the_factorization_splits_as_comfyui_does():
    """Splits for LoKr factors and OFT blocks. Reference values made by calling
    comfy.weight_adapter.base.factorization(d, factor) of ComfyUI a125cd84 for these d and factors
    (its docstring's table says 360 -> (8, 45) for factor -1, which its code does not give)."""
    dims = (127, 128, 250, 360, 512, 1024, 320, 1280)
    table = {-1: [(1, 127), (8, 16), (10, 25), (18, 20), (16, 32), (32, 32), (16, 20), (32, 40)],
             2: [(1, 127), (2, 64), (2, 125), (2, 180), (2, 256), (2, 512), (2, 160), (2, 640)],
             4: [(1, 127), (4, 32), (2, 125), (4, 90), (4, 128), (4, 256), (4, 80), (4, 320)],
             8: [(1, 127), (8, 16), (5, 50), (8, 45), (8, 64), (8, 128), (8, 40), (8, 160)],
             16: [(1, 127), (8, 16), (10, 25), (15, 24), (16, 32), (16, 64), (16, 20), (16, 80)]}
    for factor, splits in table.items():
        assert [factorization(d, factor) for d in dims] == splits, factor
