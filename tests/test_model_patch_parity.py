"""Model-patch, guidance and merge nodes against ComfyUI: the same tiny network, prompts, seed and
sampler, patched by our nodes and by ComfyUI's, must sample the same latent.

The reference latents are ComfyUI's (commit a125cd84) for tests/model_patch_cases.py, written by
tests/data/model_patches/make_reference.py under ComfyUI's interpreter (see its docstring).
Tolerance: none. In fp32 on the CPU our UNet runs ComfyUI's operations in ComfyUI's order
(its CPU attention functions, NCHW convolutions, its contiguous token copies), so every case
samples ComfyUI's latent bit for bit (before, within 5e-6 of its magnitude). Each patched case
must also differ from the unpatched run with the same latent, CFG and denoise by at least 1e-2 of
the latent's largest magnitude (the smallest effect, UNetSelfAttentionMultiply's, is 2.6e-2), so a
node that did nothing, or too little, fails.
"""

import pytest
import torch

from diffusion.model import DiffusionModel
from diffusion.model_patcher import ModelPatcher
from diffusion.model_sampling import ModelSamplingDiscrete
from diffusion.unet import UNetConfig, UNetModel
from tests import model_patch_cases as cases
from tests.models_tiny import randomize_
from tests.node_helpers import builtin_registry, call_in_context
from tests.paths import REPO, read_reference

REFERENCE = REPO / "tests" / "data" / "model_patches" / "reference.safetensors"
RTOL = 1e-4


TENSORS, META = read_reference(REFERENCE)


def _fingerprint(tensors) -> list[float]:
    return [float(sum(t.double().sum() for t in tensors)), float(sum((t.double() ** 2).sum() for t in tensors))]


def tiny_model(seed: int) -> ModelPatcher:
    unet = randomize_(UNetModel(UNetConfig(**cases.UNET)), seed).eval()
    return ModelPatcher(DiffusionModel(unet, ModelSamplingDiscrete(), family="sd1"), "cpu", "cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    models = {name: tiny_model(seed) for name, seed in cases.WEIGHT_SEEDS.items()}
    for name, model in models.items():
        assert _fingerprint(model.model.state_dict().values()) == pytest.approx(META["weights"][name], rel=1e-9), \
            f"the {name} weights differ from those ComfyUI was given (torch's generator changed?)"
    prompts = [c[0] for c in cases.POSITIVE + cases.NEGATIVE + cases.EMPTY]
    assert _fingerprint(prompts) == pytest.approx(META["prompts"], rel=1e-9)
    return models, builtin_registry(tmp_path_factory.mktemp("patches"))


def _resolve(registry, inputs: dict, model, model2) -> dict:
    placeholders = {"<MODEL>": model, "<MODEL2>": model2, "<EMPTY>": cases.EMPTY}
    return {name: (call_in_context(registry, value.node, **value.inputs)[0] if isinstance(value, cases.Call)
                   else placeholders.get(value, value) if isinstance(value, str) else value)
            for name, value in inputs.items()}


def sample_case(setup, case: cases.Case) -> torch.Tensor:
    from diffusion.ksampler import common_ksampler

    (models, registry) = setup
    model = models["model"]
    for node, inputs in case.patches:
        model = call_in_context(registry, node, **_resolve(registry, inputs, model, models["model2"]))[0]
    with torch.inference_mode():
        out = common_ksampler(model, cases.SEED, cases.STEPS, case.cfg, cases.SAMPLER, cases.SCHEDULER,
                              cases.POSITIVE, cases.NEGATIVE, cases.LATENTS[case.latent](), denoise=case.denoise)
    return out["samples"]


@pytest.mark.parametrize("case", cases.CASES, ids=[c.id for c in cases.CASES])
def test_sampled_latent_matches_comfyui(setup, case):
    expected = TENSORS[f"{case.id}/samples"]
    tolerance = RTOL * float(expected.abs().max())
    ours = sample_case(setup, case)
    assert ours.shape == expected.shape
    error = float((ours - expected).abs().max())
    # fp32 on the CPU computes ComfyUI's sums in ComfyUI's order: the same latent, bit for bit
    assert torch.equal(ours, expected), f"{case.id}: max |ours - ComfyUI| = {error:.3g}"
    if case.patches:
        effect = float((expected - TENSORS[f"{cases.baseline_id(case)}/samples"]).abs().max())
        assert effect > 100 * tolerance, f"{case.id} barely changes the sample ({effect:.3g})"

def test_every_case_was_made_by_comfyui():
    assert set(META["cases"]) == {c.id for c in cases.CASES}
