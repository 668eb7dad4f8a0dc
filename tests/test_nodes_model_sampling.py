"""Model-sampling nodes against ComfyUI's (reference values made by
tests/data/golden/make_golden.py: ComfyUI's own nodes patched an SD1.5 model and every quantity
below was read from the model sampling they installed): the sigma table, sigma <-> timestep,
percent_to_sigma, the network input scaling, the x0 formula, noise scaling, the latent format and
every scheduler on the new table. Tolerance 2e-5 of each quantity's largest magnitude."""
from __future__ import annotations

import math

import pytest
import torch

from diffusion import schedules as sch
from tests import golden_problem as P
from tests.golden import TENSORS, assert_close, cases_of, sd1_model, with_model
from tests.node_helpers import builtin_registry, call_node

REGISTRY = builtin_registry()
CASES = [c for c in cases_of("model_sampling") if c["key"].endswith("/sigmas")]
PROBES = torch.tensor((0.03, 0.2, 1.0, 3.0, 14.0, 80.0))
PERCENTS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def test_every_mode_of_every_model_sampling_node_is_checked():
    seen = {(c["node"], c["inputs"]["sampling"]) for c in CASES}
    for node in ("ModelSamplingDiscrete", "ModelSamplingContinuousEDM", "ModelSamplingContinuousV"):
        modes = REGISTRY.get(node).describe()["input"]["required"]["sampling"][0]
        assert {(node, m) for m in modes} <= seen


@pytest.mark.parametrize("case", CASES, ids=lambda c: f'{c["node"]}-{c["inputs"]["sampling"]}-{c["key"].split("/")[1]}')
def test_model_sampling_node_matches_comfyui(case):
    base = case["key"].rsplit("/", 1)[0]
    model = sd1_model()
    patched, = call_node(REGISTRY, case["node"], {**with_model(case["inputs"]), "model": model})
    assert patched is not model and patched.model is model.model
    ms = patched.get_model_object("model_sampling")
    x, out = P.start_latent(1.0), P.start_latent(0.0).flip(0)
    batch_sigma = torch.tensor([0.5, 6.0])

    def check(name, ours, rtol=2e-5):
        assert_close(ours, TENSORS[f"{base}/{name}"], f'{case["node"]} {case["inputs"]["sampling"]}: {name}', rtol)

    check("sigmas", ms.sigmas)
    timesteps = ms.timestep(PROBES)
    check("timestep", timesteps)
    check("sigma", ms.sigma(timesteps.float()))
    check("percent_to_sigma", torch.tensor([float(ms.percent_to_sigma(p)) for p in PERCENTS], dtype=torch.float64),
          rtol=1e-6)
    check("calculate_input", ms.calculate_input(batch_sigma, x))
    check("calculate_denoised", ms.calculate_denoised(batch_sigma, out, x))
    check("noise_scaling", ms.noise_scaling(batch_sigma, out, x))
    check("noise_scaling_max", ms.noise_scaling(ms.sigma_max, out, x, max_denoise=True))
    check("inverse_noise_scaling", ms.inverse_noise_scaling(batch_sigma, x))
    check("latent_in", patched.get_model_object("latent_format").process_in(x))
    for name in sch.SCHEDULER_NAMES:
        check(f"schedule/{name}", sch.calculate_sigmas(ms, name, 10))


def test_the_input_model_is_left_alone():
    model = sd1_model()
    patched, = call_node(REGISTRY, "ModelSamplingContinuousEDM", {"model": model, "sampling": "edm_playground_v2.5",
                                                                  "sigma_max": 80.0, "sigma_min": 0.002})
    ms = model.get_model_object("model_sampling")
    assert ms.prediction == "eps" and len(ms.sigmas) == 1000
    assert type(model.get_model_object("latent_format")).__name__ == "SD15"
    assert type(patched.get_model_object("latent_format")).__name__ == "SDXLPlayground25"


def test_lcm_boundary_condition_by_hand():
    # c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25) at the distilled
    # timestep t of the sigma; D = c_out (x - sigma eps) + c_skip x.
    patched, = call_node(REGISTRY, "ModelSamplingDiscrete", {"model": sd1_model(), "sampling": "lcm", "zsnr": False})
    ms = patched.get_model_object("model_sampling")
    assert [int(ms.timestep(torch.tensor(float(s)))) for s in ms.sigmas[[0, 1, -1]]] == [19, 39, 999]
    sigma, x, eps = float(ms.sigmas[0]), torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 0.5)
    t = 19 * 10.0
    want = t / math.sqrt(t * t + 0.25) * (2.0 - sigma * 0.5) + 0.25 / (t * t + 0.25) * 2.0
    got = ms.calculate_denoised(torch.tensor([sigma]), eps, x)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_continuous_v_time_is_the_arctangent():
    patched, = call_node(REGISTRY, "ModelSamplingContinuousV", {"model": sd1_model(), "sampling": "v_prediction",
                                                                "sigma_max": 500.0, "sigma_min": 0.03})
    ms = patched.get_model_object("model_sampling")
    assert float(ms.timestep(torch.tensor(1.0))) == pytest.approx(0.5)
    assert float(ms.sigma(torch.tensor(0.5))) == pytest.approx(1.0, rel=1e-6)
    assert (float(ms.sigma_min), float(ms.sigma_max)) == (pytest.approx(0.03, rel=1e-5), pytest.approx(500.0, rel=1e-5))


@pytest.mark.parametrize("node,inputs,sigma,want_t,want_scale", [
    ("ModelSamplingDiscrete", {"sampling": "lcm", "zsnr": False}, 14.614642, 999.0, 1 / math.sqrt(14.614642 ** 2 + 1)),
    ("ModelSamplingDiscrete", {"sampling": "img_to_img", "zsnr": False}, 1.0, None, 1.0),
    ("ModelSamplingContinuousEDM", {"sampling": "edm", "sigma_max": 80.0, "sigma_min": 0.002}, 2.0,
     0.25 * math.log(2.0), 1 / math.sqrt(4.25)),
    ("ModelSamplingContinuousV", {"sampling": "v_prediction", "sigma_max": 500.0, "sigma_min": 0.03}, 1.0, 0.5,
     1 / math.sqrt(2.0)),
])
def test_the_network_sees_the_patched_time_and_input(node, inputs, sigma, want_t, want_scale):
    seen = {}

    def unet(x, timesteps, context=None, control=None, transformer_options=None):
        seen.update(x=x, t=timesteps)
        return torch.zeros_like(x)

    patched, = call_node(REGISTRY, node, {**inputs, "model": sd1_model(unet)})
    x = torch.full((1, 4, 2, 2), 3.0)
    patched.patch_model(load_weights=False)  # what loading for sampling does with object patches
    try:
        patched.model.apply_model(x, torch.tensor([sigma]), c_crossattn=torch.zeros(1, 77, 768))
    finally:
        patched.unpatch_model()
    assert torch.allclose(seen["x"], x * want_scale, rtol=1e-5)
    if want_t is not None:
        assert float(seen["t"]) == pytest.approx(want_t, rel=1e-5)
