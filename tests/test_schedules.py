"""Sigma tables and schedules against exact formulas, hand-worked cases and diffusers."""

import math

import numpy as np
import pytest
import torch

from diffusion import schedules as sch
from diffusion.latent_formats import SD15, SDXL, latent_format_for
from diffusion.model_sampling import ModelSamplingDiscrete

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MS = ModelSamplingDiscrete()


def _table_sigmas_by_hand():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


# ---------------------------------------------------------------------------------------------
# the discrete table and sigma <-> timestep


def test_sigma_table_matches_ldm_betas():
    want = _table_sigmas_by_hand()
    assert np.allclose(MS.sigmas.numpy(), want, rtol=1e-6)
    assert MS.sigmas.dtype == torch.float32
    assert float(MS.sigma_min) == pytest.approx(0.02916716, rel=1e-6)
    assert float(MS.sigma_max) == pytest.approx(14.614642, rel=1e-6)


def test_sigma_table_matches_diffusers_scaled_linear():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    abar = sched.alphas_cumprod.double()
    # diffusers computes the betas in float32, hence 5e-5.
    assert torch.allclose(MS.sigmas.double(), ((1 - abar) / abar) ** 0.5, rtol=5e-5)


def test_timestep_is_nearest_table_index_in_log_sigma():
    assert int(MS.timestep(MS.sigma_max)) == 999
    assert int(MS.timestep(MS.sigma_min)) == 0
    s = MS.sigmas
    # Just below / above the log-midpoint of entries 500 and 501.
    mid = math.exp((math.log(s[500]) + math.log(s[501])) / 2)
    assert int(MS.timestep(torch.tensor(mid * 0.9999))) == 500
    assert int(MS.timestep(torch.tensor(mid * 1.0001))) == 501
    assert MS.timestep(torch.tensor([s[10], s[900]])).tolist() == [10, 900]


def test_sigma_of_timestep_interpolates_log_sigma():
    s = MS.sigmas.double()
    assert float(MS.sigma(torch.tensor(250.0))) == pytest.approx(float(s[250]), rel=1e-6)
    assert float(MS.sigma(torch.tensor(499.5))) == pytest.approx(math.sqrt(s[499] * s[500]), rel=1e-6)
    assert float(MS.sigma(torch.tensor(2000.0))) == pytest.approx(float(s[999]), rel=1e-6)


def test_percent_to_sigma():
    assert MS.percent_to_sigma(0.0) == 999999999.9
    assert MS.percent_to_sigma(1.0) == 0.0
    assert MS.percent_to_sigma(0.5) == pytest.approx(float(MS.sigma(torch.tensor(499.5))), rel=1e-6)


def test_zero_terminal_snr_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
    ms = ModelSamplingDiscrete(zsnr=True)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    want = ((1 - abar) / abar) ** 0.5
    assert torch.allclose(ms.sigmas[:-1].double(), want[:-1], rtol=1e-4)
    assert float(ms.sigmas[-1]) > 4000  # finite stand-in for the infinite last sigma


# ---------------------------------------------------------------------------------------------
# parameterisations


def test_eps_and_v_prediction_recover_x0():
    # x = x0 + sigma * eps (VE); in the VP frame x_vp = a x0 + b eps with a = 1/sqrt(1 + sigma^2),
    # b = sigma a, and the v target is a eps - b x0. Both parameterisations must return x0.
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    sigma = torch.tensor([0.1, 2.0, 14.0])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * eps
    a, b = 1 / (1 + s ** 2) ** 0.5, s / (1 + s ** 2) ** 0.5
    assert torch.allclose(MS.calculate_denoised(sigma, eps, x), x0, atol=1e-5)
    v_ms = MS.with_prediction("v_prediction")
    assert torch.allclose(v_ms.calculate_denoised(sigma, a * eps - b * x0, x), x0, atol=1e-5)
    assert torch.allclose(MS.calculate_input(sigma, x), a * x0 + b * eps, atol=1e-5)
    assert torch.equal(v_ms.sigmas, MS.sigmas)


def test_v_prediction_formula():
    sigma = torch.tensor([3.0])
    x, v = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 0.5)
    got = ModelSamplingDiscrete("v_prediction").calculate_denoised(sigma, v, x)
    assert float(got) == pytest.approx(2.0 / 10 - 0.5 * 3.0 / math.sqrt(10), rel=1e-6)


def test_noise_scaling():
    noise, latent = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    assert torch.allclose(MS.noise_scaling(torch.tensor(3.0), noise, latent), torch.full_like(noise, 3.5))
    # From the top of the schedule the noise is scaled by sqrt(1 + sigma^2).
    assert torch.allclose(MS.noise_scaling(torch.tensor(3.0), noise, latent, max_denoise=True),
                          torch.full_like(noise, math.sqrt(10) + 0.5))


# ---------------------------------------------------------------------------------------------
# schedules


def test_karras_formula():
    got = sch.karras(5, 0.03, 14.6, rho=7.0).double()
    ramp = np.linspace(0, 1, 5)
    want = (14.6 ** (1 / 7) + ramp * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7
    assert np.allclose(got[:-1].numpy(), want, rtol=1e-5) and got[-1] == 0 and len(got) == 6


def test_karras_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             use_karras_sigmas=True)
    sched.set_timesteps(9)
    ours = sch.karras(9, float(MS.sigma_min), float(MS.sigma_max))
    assert torch.allclose(ours, sched.sigmas.float(), rtol=1e-4)


def test_exponential_is_log_uniform():
    got = sch.exponential(6, 0.03, 14.6).double()
    logs = got[:-1].log()
    assert torch.allclose(logs[0], torch.tensor(math.log(14.6), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(logs[-1], torch.tensor(math.log(0.03), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(logs.diff(), logs.diff()[:1].expand(5), atol=1e-5) and got[-1] == 0


def test_polyexponential_rho_one_is_exponential():
    assert torch.allclose(sch.polyexponential(7, 0.03, 14.6, rho=1.0), sch.exponential(7, 0.03, 14.6), rtol=1e-5)


def test_normal_worked_example():
    s = MS.sigmas
    # steps = 2: timesteps linspace(999, 0, 2) = [999, 0].
    assert sch.normal(MS, 2).tolist() == pytest.approx([float(s[999]), float(s[0]), 0.0], rel=1e-6)
    # steps = 3: [999, 499.5, 0]; the middle one is the geometric mean of entries 499 and 500.
    got = sch.normal(MS, 3)
    assert float(got[1]) == pytest.approx(math.sqrt(float(s[499]) * float(s[500])), rel=1e-5)
    assert len(got) == 4 and got[-1] == 0


def test_sgm_uniform_drops_the_last_point():
    s = MS.sigmas
    got = sch.sgm_uniform(MS, 4)  # linspace(999, 0, 5)[:-1] = [999, 749.25, 499.5, 249.75]
    want = [float(MS.sigma(torch.tensor(t))) for t in (999.0, 749.25, 499.5, 249.75)] + [0.0]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert float(got[-2]) > float(s[0])


def test_simple_worked_example():
    s = MS.sigmas
    assert sch.simple(MS, 4).tolist() == pytest.approx([float(s[999]), float(s[749]), float(s[499]),
                                                        float(s[249]), 0.0])


def test_ddim_uniform_worked_example():
    s = MS.sigmas
    # stride 1000 // 10 = 100 over entries 1, 101, ..., 901, reversed, then 0.
    want = [float(s[t]) for t in range(901, 0, -100)] + [0.0]
    assert sch.ddim_uniform(MS, 10).tolist() == pytest.approx(want)
    # 1000 // 3 = 333: entries 1, 334, 667 and the 0, i.e. steps + 1 values ...
    assert len(sch.ddim_uniform(MS, 3)) == 4
    # ... but 1000 // 7 = 142 fits eight entries (1, 143, ..., 995): one step more than asked.
    assert len(sch.ddim_uniform(MS, 7)) == 9


def test_beta_worked_example():
    from scipy.stats import beta as beta_dist
    s = MS.sigmas
    p = beta_dist.ppf(2 / 3, 0.6, 0.6)
    # Quantiles 1, 2/3, 1/3 of a symmetric Beta: timesteps 999, rint(999 p), rint(999 (1 - p)).
    want = [float(s[999]), float(s[int(np.rint(999 * p))]), float(s[int(np.rint(999 * (1 - p)))]), 0.0]
    assert sch.beta(MS, 3).tolist() == pytest.approx(want)


def test_linear_quadratic_worked_example():
    # steps 4: linear part [0, 0.0125], quadratic 0.2375 i^2 - 0.9375 i + 0.95 at i = 2, 3
    # gives [0.025, 0.275] (continuous at the threshold 0.025); then 1 - t, times sigma_max.
    want = [1.0, 0.9875, 0.975, 0.725, 0.0]
    assert sch.linear_quadratic(MS, 4).tolist() == pytest.approx([w * float(MS.sigma_max) for w in want], rel=1e-6)
    assert sch.linear_quadratic(MS, 1).tolist() == pytest.approx([float(MS.sigma_max), 0.0])


def test_kl_optimal_is_uniform_in_arctan():
    got = sch.kl_optimal(5, 0.03, 14.6).double()
    atans = torch.atan(got[:-1])
    assert torch.allclose(atans.diff(), atans.diff()[:1].expand(4), atol=1e-6)
    assert float(got[0]) == pytest.approx(14.6, rel=1e-5) and float(got[-2]) == pytest.approx(0.03, rel=1e-5)
    assert got[-1] == 0


def test_sd_turbo_timesteps():
    s = MS.sigmas
    assert sch.sd_turbo(MS, 1).tolist() == pytest.approx([float(s[999]), 0.0])
    assert sch.sd_turbo(MS, 4).tolist() == pytest.approx([float(s[t]) for t in (999, 899, 799, 699)] + [0.0])
    assert sch.sd_turbo(MS, 2, denoise=0.5).tolist() == pytest.approx([float(s[499]), float(s[399]), 0.0])


@pytest.mark.parametrize("name", sch.SCHEDULER_NAMES)
def test_every_scheduler_descends_to_zero(name):
    got = sch.calculate_sigmas(MS, name, 12)
    assert got.dtype == torch.float32 and got[-1] == 0
    assert (got.diff() < 0).all()
    assert len(got) == 13 or name in ("beta", "ddim_uniform")


def test_scheduler_names_in_comfyui_order():
    assert sch.SCHEDULER_NAMES == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                                   "normal", "linear_quadratic", "kl_optimal"]
    with pytest.raises(ValueError):
        sch.calculate_sigmas(MS, "nope", 3)


# ---------------------------------------------------------------------------------------------
# latent formats


def test_latent_formats():
    x = torch.randn(1, 4, 3, 3)
    sd, xl = latent_format_for("sd1"), latent_format_for("sdxl")
    assert isinstance(sd, SD15) and isinstance(xl, SDXL) and isinstance(latent_format_for("sd2"), SD15)
    assert torch.allclose(sd.process_in(x), x * 0.18215) and torch.allclose(xl.process_in(x), x * 0.13025)
    assert torch.allclose(xl.process_out(xl.process_in(x)), x, atol=1e-6)
    flux = latent_format_for("flux")
    y = torch.randn(1, 16, 2, 2)
    assert torch.allclose(flux.process_out(flux.process_in(y)), y, atol=1e-6)


def test_latent_to_rgb_uses_the_published_factors():
    x0 = torch.zeros(1, 4, 2, 2)
    x0[:, 0] = 1.0  # channel 0 only: RGB = first factor row (+ bias), mapped from -1..1 to 0..1
    rgb = SD15().latent_to_rgb(x0)
    assert rgb.shape == (1, 2, 2, 3)
    assert rgb[0, 0, 0].tolist() == pytest.approx([(0.3512 + 1) / 2, (0.2297 + 1) / 2, (0.3227 + 1) / 2])
    rgb = SDXL().latent_to_rgb(x0)
    assert rgb[0, 1, 1].tolist() == pytest.approx([(0.3651 + 0.1084 + 1) / 2, (0.4232 - 0.0175 + 1) / 2,
                                                   (0.4341 - 0.0011 + 1) / 2])
