"""The ComfyUI reference values of tests/data/golden/ (made by make_golden.py there) and the
helpers that run our code on the same inputs."""
from __future__ import annotations

import json
import warnings

import torch
from safetensors import safe_open

from diffusion.model import DiffusionModel
from diffusion.model_patcher import ModelPatcher
from diffusion.model_sampling import ModelSamplingDiscrete
from tests import golden_problem as P
from tests.paths import REPO

GOLDEN = REPO / "tests" / "data" / "golden" / "comfyui_reference.safetensors"
MS = ModelSamplingDiscrete()


def _load():
    with safe_open(str(GOLDEN), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["cases"])


TENSORS, CASES = _load()


def cases_of(kind: str) -> list[dict]:
    return [c for c in CASES if c["kind"] == kind]


def sd1_model(unet=None) -> ModelPatcher:
    """A MODEL with SD1.5's model sampling and latent format, on the CPU; by default without a
    network (the nodes under test only read the model sampling and latent format)."""
    return ModelPatcher(DiffusionModel(unet, ModelSamplingDiscrete(), family="sd1"), "cpu", "cpu")


def with_model(inputs: dict) -> dict:
    """Node inputs as recorded, with the "<MODEL>" placeholder replaced by an SD1.5 MODEL."""
    return {k: (sd1_model() if v == "<MODEL>" else v) for k, v in inputs.items()}


class Guided:
    """The denoiser a sampling function sees: SD1 model sampling plus CFG over the problem."""

    model_sampling = MS

    def __call__(self, x, sigma, model_options=None, seed=None, **_):
        return P.guided(x, sigma, model_options)


def run_sampler(function, case: str, callback=None, **options) -> torch.Tensor:
    """`function` on the recorded start latent and sigmas of `case`, seeded as the reference was."""
    sigmas = TENSORS[f"sigmas/{case}"]
    x = TENSORS[f"x/{case}"]
    torch.manual_seed(P.SEED)  # samplers that draw from the global generator (lcm upscale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's warnings about float rounding at the tree's ends
        return function(Guided(), x.clone(), sigmas.clone(), extra_args={"model_options": {}, "seed": P.SEED},
                        callback=callback, disable=True, **options)


def assert_close(ours, theirs: torch.Tensor, what: str, rtol: float = 2e-5) -> None:
    """Equal within rtol of the reference's largest magnitude (plus 1e-6); nan where it is nan."""
    ours = torch.as_tensor(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != ComfyUI's {tuple(theirs.shape)}"
    assert torch.equal(ours.isnan(), theirs.isnan()), f"{what}: nan in other places than ComfyUI's"
    ours, theirs = ours.double().nan_to_num(), theirs.double().nan_to_num()
    scale = float(theirs.abs().max()) if theirs.numel() else 0.0
    diff = float((ours - theirs).abs().max()) if theirs.numel() else 0.0
    assert diff <= rtol * scale + 1e-6, f"{what}: max |ours - ComfyUI| = {diff:.3g} (scale {scale:.3g})"
