"""Every sampler and scheduler against ComfyUI's own, on a problem where guidance matters.

The reference values in tests/data/golden/comfyui_reference.safetensors were computed by running
ComfyUI a125cd84's sampling functions and schedulers (tests/data/golden/make_golden.py says
exactly how) on tests/golden_problem.py: CFG 3 over two different analytic denoisers, so a CFG++
sampler that mixes up the guided and the unconditional estimate cannot pass.

Tolerance: both sides compute in float32 with the same formulas, but not always in the same
order. The largest difference measured is 1.3e-6 of the output's scale (dpmpp_3m_sde); the
tests allow 2e-5 of it (plus 1e-6 absolute). A wrong step formula is off by far more: the old
dpmpp_2s_ancestral_cfg_pp by 0.2-0.8 on outputs of scale 3.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open

from diffusion import samplers as S
from diffusion import schedules as sch
from diffusion.model_sampling import ModelSamplingDiscrete
from tests import golden_problem as P
from tests.paths import REPO

GOLDEN = REPO / "tests" / "data" / "golden" / "comfyui_reference.safetensors"
MS = ModelSamplingDiscrete()
MS_ZSNR = ModelSamplingDiscrete(zsnr=True)


def _load():
    with safe_open(str(GOLDEN), "pt") as f:
        cases = json.loads(f.metadata()["cases"])
        return {k: f.get_tensor(k) for k in f.keys()}, cases


TENSORS, CASES = _load()


def cases_of(kind: str) -> list[dict]:
    return [c for c in CASES if c["kind"] == kind]


class Guided:
    """The denoiser a sampling function sees: our model sampling plus CFG over the problem."""

    model_sampling = MS

    def __call__(self, x, sigma, model_options=None, seed=None, **_):
        return P.guided(x, sigma, model_options)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float = 2e-5) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != ComfyUI's {tuple(theirs.shape)}"
    scale = float(theirs.abs().max()) if theirs.numel() else 0.0
    diff = float((ours.double() - theirs.double()).abs().max()) if theirs.numel() else 0.0
    assert diff <= rtol * scale + 1e-6, f"{what}: max |ours - ComfyUI| = {diff:.3g} (scale {scale:.3g})"


def run_sampler(function, case: str, callback=None, **options) -> torch.Tensor:
    sigmas = TENSORS[f"sigmas/{case}"]
    x = TENSORS[f"x/{case}"]
    torch.manual_seed(P.SEED)  # samplers that draw from the global generator (lcm upscale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's warnings about float rounding at the tree's ends
        return function(Guided(), x.clone(), sigmas.clone(), extra_args={"model_options": {}, "seed": P.SEED},
                        callback=callback, disable=True, **options)


def test_the_reference_covers_every_sampler_and_scheduler():
    assert {c["sampler"] for c in cases_of("sampler")} == set(S.SAMPLER_NAMES)
    assert {c["scheduler"] for c in cases_of("schedule")} == set(sch.SCHEDULER_NAMES)
    assert {c["case"] for c in cases_of("sampler")} >= set(sch.SCHEDULER_NAMES)


def test_the_problem_separates_cond_from_uncond():
    # If cond and uncond agreed, CFG++ samplers would equal their base samplers and prove nothing.
    x = TENSORS["x/karras"]
    cond, uncond = P.cond_uncond(x, torch.full((x.shape[0],), 2.0))
    assert float((cond - uncond).abs().mean()) > 0.3
    pp, base = TENSORS["sampler/dpmpp_2s_ancestral_cfg_pp/karras"], TENSORS["sampler/dpmpp_2s_ancestral/karras"]
    assert float((pp - base).abs().max()) > 0.1


SAMPLER_CASES = [pytest.param(c["sampler"], c["case"], id=f'{c["sampler"]}-{c["case"]}') for c in cases_of("sampler")]


@pytest.mark.parametrize("name,case", SAMPLER_CASES)
def test_sampler_matches_comfyui(name, case):
    ours = run_sampler(S.sampler_function(name), case)
    assert_close(ours, TENSORS[f"sampler/{name}/{case}"], f"{name} on {case} sigmas")


@pytest.mark.parametrize("case", cases_of("sampler_x0"), ids=lambda c: c["sampler"])
def test_sampler_reports_comfyuis_x0_estimates(case):
    # The last reported x0 is SamplerCustom's denoised_output; the count drives progress.
    reported = []
    run_sampler(S.sampler_function(case["sampler"]), case["case"], callback=lambda d: reported.append(d["denoised"]))
    assert len(reported) == case["callbacks"]
    assert_close(reported[-1], TENSORS[case["key"]], f'{case["sampler"]}: last reported x0')


SCHEDULE_CASES = [pytest.param(c["table"], c["scheduler"], c["steps"], id=f'{c["table"]}-{c["scheduler"]}-{c["steps"]}')
                  for c in cases_of("schedule")]


@pytest.mark.parametrize("table,name,steps", SCHEDULE_CASES)
def test_scheduler_matches_comfyui(table, name, steps):
    ms = MS_ZSNR if table == "sd1_zsnr" else MS
    ours = sch.calculate_sigmas(ms, name, steps)
    theirs = TENSORS[f"schedule/{table}/{name}/{steps}"]
    assert ours.dtype == theirs.dtype == torch.float32
    # nan where ComfyUI's formula gives nan (kl_optimal at 1 step divides by zero), equal elsewhere
    assert torch.equal(ours.isnan(), theirs.isnan()), (ours, theirs)
    assert_close(ours.nan_to_num(), theirs.nan_to_num(), f"{name} with {steps} steps on {table}", rtol=2e-6)
