"""Scheduler and sigma-tool nodes against ComfyUI's own nodes (reference values made by
tests/data/golden/make_golden.py with the recorded widget values), plus worked examples.
Sigmas are float32 on both sides; tolerance 2e-6 of the largest sigma."""
from __future__ import annotations

import math

import pytest
import torch

from tests.golden import TENSORS, assert_close, cases_of, with_model
from tests.node_helpers import builtin_registry, call_node

REGISTRY = builtin_registry()
SIGMA_NODES = cases_of("sigma_node")


def test_every_scheduler_and_sigma_node_is_checked():
    assert {c["node"] for c in SIGMA_NODES} >= {
        "AlignYourStepsScheduler", "BetaSamplingScheduler", "ExponentialScheduler", "GITSScheduler", "LaplaceScheduler",
        "OptimalStepsScheduler", "PolyexponentialScheduler", "VPScheduler", "ExtendIntermediateSigmas", "FlipSigmas",
        "SamplingPercentToSigma", "SetFirstSigma", "SplitSigmasDenoise"}


def _inputs(case):
    inputs = with_model(case["inputs"])
    if "sigmas" in inputs:
        inputs["sigmas"] = torch.tensor(inputs["sigmas"], dtype=torch.float32)
    return inputs


@pytest.mark.parametrize("case", SIGMA_NODES, ids=lambda c: c["key"].removeprefix("node/"))
def test_sigma_node_matches_comfyui(case):
    inputs = _inputs(case)
    given = inputs.get("sigmas")
    before = None if given is None else given.clone()
    outputs = call_node(REGISTRY, case["node"], inputs)
    ours, theirs = outputs[case["output"]], TENSORS[case["key"]]
    if theirs.dtype == torch.float64:  # a FLOAT output
        assert isinstance(ours, float) and ours == pytest.approx(float(theirs), rel=1e-6), (ours, float(theirs))
    else:
        assert ours.dtype == torch.float32
        assert_close(ours, theirs, f'{case["node"]} {case["inputs"]}', rtol=2e-6)
    if before is not None:
        assert torch.equal(given, before)  # the input SIGMAS is never modified


# -- worked examples --------------------------------------------------------------------------


def test_exponential_is_even_in_log_sigma():
    sigmas, = call_node(REGISTRY, "ExponentialScheduler", {"steps": 4, "sigma_max": 8.0, "sigma_min": 1.0})
    assert torch.allclose(sigmas, torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0]), rtol=1e-6)


def test_polyexponential_with_rho_1_is_exponential():
    a, = call_node(REGISTRY, "PolyexponentialScheduler", {"steps": 6, "sigma_max": 10.0, "sigma_min": 0.1, "rho": 1.0})
    b, = call_node(REGISTRY, "ExponentialScheduler", {"steps": 6, "sigma_max": 10.0, "sigma_min": 0.1})
    assert torch.allclose(a, b, rtol=1e-6)


def test_vp_schedule_is_the_vp_sde_noise_level():
    # sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) at t = 1, 0.5005, 0.001
    sigmas, = call_node(REGISTRY, "VPScheduler", {"steps": 3, "beta_d": 19.9, "beta_min": 0.1, "eps_s": 0.001})
    want = [math.sqrt(math.expm1(19.9 * t * t / 2 + 0.1 * t)) for t in (1.0, 0.5005, 0.001)] + [0.0]
    assert torch.allclose(sigmas, torch.tensor(want), rtol=1e-5)


def test_laplace_is_centred_on_e_mu_without_a_final_zero():
    sigmas, = call_node(REGISTRY, "LaplaceScheduler",
                        {"steps": 5, "sigma_max": 100.0, "sigma_min": 0.01, "mu": 1.0, "beta": 0.5})
    assert len(sigmas) == 5 and float(sigmas[2]) == pytest.approx(math.e, rel=1e-5)
    # x = 0.25: log sigma = mu + beta log(0.5 + 1e-5)
    assert float(sigmas[1]) == pytest.approx(math.exp(1.0 - 0.5 * math.log(0.5 + 1e-5)), rel=1e-5)


def test_align_your_steps_sd1_at_ten_steps_is_the_published_schedule():
    sigmas, = call_node(REGISTRY, "AlignYourStepsScheduler", {"model_type": "SD1", "steps": 10, "denoise": 1.0})
    published = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
                 0.6523686016, 0.3977456272, 0.1515232662, 0.0]  # Sabour et al. 2024, SD1.5
    assert torch.allclose(sigmas, torch.tensor(published), rtol=1e-6)
    half, = call_node(REGISTRY, "AlignYourStepsScheduler", {"model_type": "SD1", "steps": 10, "denoise": 0.5})
    assert torch.equal(half, sigmas[-6:])
    none, = call_node(REGISTRY, "AlignYourStepsScheduler", {"model_type": "SD1", "steps": 10, "denoise": 0.0})
    assert none.numel() == 0


def test_gits_rejects_a_coefficient_without_a_table():
    with pytest.raises(ValueError, match="GITS|gits"):
        call_node(REGISTRY, "GITSScheduler", {"coeff": 1.23, "steps": 10, "denoise": 1.0})


def test_extend_intermediate_sigmas_by_hand():
    sigmas = torch.tensor([10.0, 6.0, 2.0, 0.0])
    out, = call_node(REGISTRY, "ExtendIntermediateSigmas", {"sigmas": sigmas, "steps": 2, "start_at_sigma": -1.0,
                                                             "end_at_sigma": 5.0, "spacing": "linear"})
    # steps starting at 10 and 6 (>= 5) get their midpoints; the one from 2 does not
    assert torch.equal(out, torch.tensor([10.0, 8.0, 6.0, 4.0, 2.0, 0.0]))


def test_split_sigmas_denoise_and_flip_and_set_first_by_hand():
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])
    high, low = call_node(REGISTRY, "SplitSigmasDenoise", {"sigmas": sigmas, "denoise": 0.5})
    assert torch.equal(high, torch.tensor([8.0, 4.0, 2.0])) and torch.equal(low, torch.tensor([2.0, 1.0, 0.0]))
    flipped, = call_node(REGISTRY, "FlipSigmas", {"sigmas": sigmas})
    assert torch.equal(flipped, torch.tensor([1e-4, 1.0, 2.0, 4.0, 8.0]))
    first, = call_node(REGISTRY, "SetFirstSigma", {"sigmas": sigmas, "sigma": 136.0})
    assert torch.equal(first, torch.tensor([136.0, 4.0, 2.0, 1.0, 0.0]))
