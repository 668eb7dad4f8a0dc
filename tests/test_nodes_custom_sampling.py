"""SAMPLER and NOISE nodes against ComfyUI's own nodes (reference values made by
tests/data/golden/make_golden.py): each node is built with the recorded widget values, and the
SAMPLER it returns is run on the golden problem (CFG 3 over two different denoisers) from the
same start and seed as ComfyUI's. Tolerance as in test_sampler_golden.py: 2e-5 of the output's
scale."""
from __future__ import annotations

import pytest
import torch

from diffusion.noise import prepare_noise
from tests import golden_problem as P
from tests.golden import TENSORS, assert_close, cases_of, run_sampler, sd1_model, with_model
from tests.node_helpers import builtin_registry, call_node

REGISTRY = builtin_registry()
SAMPLER_NODES = cases_of("sampler_node")


def test_every_sampler_node_is_checked():
    names = {c["node"] for c in SAMPLER_NODES}
    assert names == {"SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerEulerCFGpp", "SamplerDPMPP_2M_SDE",
                     "SamplerDPMPP_3M_SDE", "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral", "SamplerDPMAdaptative",
                     "SamplerLMS", "SamplerER_SDE", "SamplerSASolver", "SamplerLCMUpscale"}


@pytest.mark.parametrize("case", SAMPLER_NODES, ids=lambda c: c["key"].removeprefix("node/"))
def test_sampler_node_matches_comfyui(case):
    sampler, = call_node(REGISTRY, case["node"], with_model(case["inputs"]))
    ours = run_sampler(sampler.sampler_function, case["case"], **sampler.extra_options)
    assert_close(ours, TENSORS[case["key"]], f'{case["node"]} {case["inputs"]}')


def test_sampler_options_change_the_result():
    # The widgets reach the sampling function: other eta / s_noise, another image.
    a, = call_node(REGISTRY, "SamplerEulerAncestral", {"eta": 1.0, "s_noise": 1.0})
    b, = call_node(REGISTRY, "SamplerEulerAncestral", {"eta": 0.5, "s_noise": 0.8})
    out_a = run_sampler(a.sampler_function, "karras", **a.extra_options)
    out_b = run_sampler(b.sampler_function, "karras", **b.extra_options)
    assert float((out_a - out_b).abs().max()) > 0.05
    assert_close(out_a, TENSORS["sampler/euler_ancestral/karras"], "SamplerEulerAncestral at the defaults")


def test_ksampler_select_gives_the_named_sampler():
    sampler, = call_node(REGISTRY, "KSamplerSelect", {"sampler_name": "dpmpp_2m"})
    assert_close(run_sampler(sampler.sampler_function, "karras", **sampler.extra_options), TENSORS["sampler/dpmpp_2m/karras"],
                 "KSamplerSelect dpmpp_2m")


# -- noise ------------------------------------------------------------------------------------


def test_random_noise_is_the_seeded_initial_noise():
    noise, = call_node(REGISTRY, "RandomNoise", {"noise_seed": 2 ** 64 - 1})
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    assert noise.seed == 2 ** 64 - 1
    assert torch.equal(noise.generate_noise(latent), prepare_noise(latent["samples"], 2 ** 64 - 1))
    # batch_index: an item's noise depends only on its index (re-running one image of a batch)
    one = noise.generate_noise({"samples": torch.zeros(1, 4, 8, 8), "batch_index": [1]})
    assert torch.equal(one[0], noise.generate_noise(latent)[1])


def test_disable_noise_is_zeros():
    noise, = call_node(REGISTRY, "DisableNoise", {})
    out = noise.generate_noise({"samples": torch.ones(1, 4, 3, 5)})
    assert out.shape == (1, 4, 3, 5) and not out.any() and noise.seed == 0


@pytest.mark.parametrize("case", cases_of("add_noise"), ids=lambda c: c["key"].removeprefix("node/"))
def test_add_noise_matches_comfyui(case):
    if case["seed"] is None:
        noise, = call_node(REGISTRY, "DisableNoise", {})
    else:
        noise, = call_node(REGISTRY, "RandomNoise", {"noise_seed": case["seed"]})
    samples = P.start_latent(0.0) if case["latent"] == "start" else torch.zeros(P.SHAPE)
    latent = {"samples": samples}
    out, = call_node(REGISTRY, "AddNoise", {"model": sd1_model(), "noise": noise,
                                            "sigmas": torch.tensor(case["sigmas"]), "latent_image": latent})
    assert_close(out["samples"], TENSORS[case["key"]], f"AddNoise {case}")
    assert torch.equal(latent["samples"], samples)  # the input latent is not modified


def test_add_noise_with_no_sigmas_returns_the_latent():
    noise, = call_node(REGISTRY, "RandomNoise", {"noise_seed": 1})
    latent = {"samples": torch.ones(1, 4, 2, 2)}
    out, = call_node(REGISTRY, "AddNoise", {"model": sd1_model(), "noise": noise, "sigmas": torch.tensor([]),
                                            "latent_image": latent})
    assert out is latent
