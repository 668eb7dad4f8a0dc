"""Samplers against problems with known answers and against diffusers' schedulers.

The toy problem: data x0 ~ N(mu, s^2) independently per element (mu, s per channel). Its exact
denoiser is D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the probability-flow ODE
has the closed form x(sigma) = mu + (x(sigma_T) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2).
"""

import math
import warnings

import pytest
import torch

from diffusion import samplers as S
from diffusion import schedules as sch
from diffusion.model_sampling import ModelSamplingDiscrete

MU = torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, 4, 1, 1)
STD = torch.tensor([0.8, 0.3, 1.5, 0.1]).view(1, 4, 1, 1)
MS = ModelSamplingDiscrete()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Gaussian:
    """Exact denoiser of N(MU, STD^2) data; counts calls."""

    model_sampling = MS

    def __init__(self, dtype=torch.float32):
        self.mu, self.s = MU.to(dtype), STD.to(dtype)
        self.calls = 0

    def __call__(self, x, sigma, **_):
        self.calls += 1
        sg = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        return (self.s ** 2 * x + sg ** 2 * self.mu) / (self.s ** 2 + sg ** 2)


def ode_solution(x_t, sigma_t, sigma, mu=MU, s=STD):
    return mu + (x_t - mu) * ((s ** 2 + sigma ** 2) / (s ** 2 + sigma_t ** 2)) ** 0.5


# ---------------------------------------------------------------------------------------------
# deterministic samplers: error against the closed form, shrinking at the expected order


def _ode_error(name, n, smin=0.05, smax=10.0):
    dt = torch.float64
    sigmas = sch.karras(n, smin, smax)[:-1].to(dt)  # end at smin > 0 so no method's final-step rule applies
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=dt)
    mu, s = MU.to(dt), STD.to(dt)
    x_t = mu + z * (s ** 2 + sigmas[0] ** 2) ** 0.5
    out = S.sampler_function(name)(Gaussian(dt), x_t, sigmas, extra_args={})
    return float((out - ode_solution(x_t, sigmas[0], sigmas[-1], mu, s)).abs().max())


# (name, observed global order over 16 -> 64 steps). Multistep methods warm up with lower-order
# steps, which caps the observed order (lms: 4th-order formula, observed ~3).
ORDERS = [("euler", 1), ("ddim", 1), ("heun", 2), ("dpm_2", 2), ("lms", 3), ("dpmpp_2m", 2), ("ipndm", 2),
          ("deis", 2.5), ("res_multistep", 2), ("uni_pc", 2), ("uni_pc_bh2", 2), ("dpm_fast", 2),
          ("heunpp2", 1), ("gradient_estimation", 0.8)]


@pytest.mark.parametrize("name,order", ORDERS)
def test_ode_convergence_order(name, order):
    e16, e64 = _ode_error(name, 16), _ode_error(name, 64)
    observed = math.log2(e16 / e64) / 2
    assert observed > order - 0.25, (name, e16, e64, observed)
    assert e64 < 0.1  # and the errors are small in absolute terms


def test_ipndm_v_equals_ipndm_on_uniform_steps():
    # Its variable-step coefficients reduce to the fixed Adams-Bashforth ones when steps are equal
    # (up to third order; ComfyUI's fourth-order variable formula, kept as is, does not).
    sigmas = torch.linspace(8.0, 0.5, 12, dtype=torch.float64)
    x = MU.double() + torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 8.0
    a = S.sample_ipndm(Gaussian(torch.float64), x, sigmas, max_order=3)
    b = S.sample_ipndm_v(Gaussian(torch.float64), x, sigmas, max_order=3)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_dpm_adaptive_meets_tolerance():
    sigmas = sch.karras(10, 0.05, 10.0).double()
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_t = MU.double() + z * (STD.double() ** 2 + 100) ** 0.5
    exact = ode_solution(x_t, 10.0, 0.05, MU.double(), STD.double())
    errors, nfes = [], []
    for rtol in (0.05, 1e-3, 1e-5):
        out, info = S.dpm_solver_adaptive(Gaussian(torch.float64), x_t, 0.05, 10.0, rtol=rtol, atol=rtol / 10,
                                          return_info=True)
        errors.append(float((out - exact).abs().max()))
        nfes.append(info["nfe"])
    # The step controller trades evaluations for accuracy: tighter tolerance, more steps, less error.
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2], (errors, nfes)
    assert errors[0] < 0.15 and errors[2] < 2e-4
    # The sigmas-based entry point integrates between the schedule's ends.
    same = S.sample_dpm_adaptive(Gaussian(torch.float64), x_t, sigmas, rtol=1e-5, atol=1e-6)
    assert float((same - exact).abs().max()) < 2e-4


def test_final_step_to_zero_returns_denoised():
    # With sigma_next = 0 the ODE step lands on D(x, sigma_last): for the toy, an exact formula.
    sigmas = torch.tensor([2.0, 0.5, 0.0])
    x = torch.randn(1, 4, 4, 4) * 2
    model = Gaussian()
    for name in ("euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ipndm", "deis"):
        seen = {}
        out = S.sampler_function(name)(model, x, sigmas, callback=lambda d: seen.update(d))
        assert torch.allclose(out, seen["denoised"], atol=1e-5), name


@pytest.mark.parametrize("steps", [2, 3, 7])
def test_uni_pc_small_step_counts_run(steps):
    sigmas = sch.karras(steps, 0.03, 14.6)
    out = S.sample_uni_pc(Gaussian(), torch.randn(1, 4, 4, 4) * 14.6, sigmas)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# stochastic samplers: sample statistics


N_SIDE = 64  # 4096 independent samples per channel


def _final_std(sigma_last):
    # Every stochastic sampler ends with x = D(x, sigma_last): that shrinks N(mu, s^2 + sigma^2)
    # to std s^2 / sqrt(s^2 + sigma^2).
    return STD ** 2 / (STD ** 2 + sigma_last ** 2) ** 0.5


# (name, steps): first-order ancestral methods need more steps for their O(h) variance bias.
STOCHASTIC = [("euler_ancestral", 200), ("ddpm", 200), ("dpm_2_ancestral", 60), ("dpmpp_2s_ancestral", 60),
              ("dpmpp_sde", 40), ("dpmpp_2m_sde", 40), ("dpmpp_2m_sde_heun", 40), ("dpmpp_3m_sde", 40),
              ("res_multistep_ancestral", 60), ("er_sde", 60), ("seeds_2", 60), ("seeds_3", 60),
              ("sa_solver", 60), ("sa_solver_pece", 60)]


@pytest.mark.parametrize("name,steps", STOCHASTIC)
def test_stochastic_sampler_statistics(name, steps):
    sigmas = sch.karras(steps, float(MS.sigma_min), float(MS.sigma_max))
    g = torch.Generator().manual_seed(1234)
    z = torch.randn(1, 4, N_SIDE, N_SIDE, generator=g)
    x_t = MU + z * (STD ** 2 + sigmas[0] ** 2) ** 0.5  # an exact draw from p_sigma_max
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's float-rounding warnings at the tree's ends
        out = S.sampler_function(name)(Gaussian(), x_t, sigmas, extra_args={"seed": 7})
    n = N_SIDE * N_SIDE
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    s, want_std = STD.flatten(), _final_std(sigmas[-2]).flatten()
    # Mean: 4.5 standard errors plus 2% of s for discretisation bias.
    assert ((mean - MU.flatten()).abs() < 4.5 * s / math.sqrt(n) + 0.02 * s).all(), (mean, MU.flatten())
    # Std: the standard error of a sample std is std / sqrt(2n) (1.1% here); allow 4.5 of those
    # plus 2% discretisation bias.
    assert ((std / want_std - 1).abs() < 4.5 / math.sqrt(2 * n) + 0.02).all(), std / want_std


def test_lcm_statistics_follow_its_recursion():
    # LCM jumps to D and re-noises: with the exact D of Gaussian data the mean and variance follow
    # m' = a m + (1 - a) mu, v' = a^2 v + sigma_next^2 with a = s^2 / (s^2 + sigma^2).
    sigmas = sch.karras(8, float(MS.sigma_min), float(MS.sigma_max))
    z = torch.randn(1, 4, N_SIDE, N_SIDE, generator=torch.Generator().manual_seed(5))
    x_t = MU + z * (STD ** 2 + sigmas[0] ** 2) ** 0.5
    out = S.sample_lcm(Gaussian(), x_t, sigmas, extra_args={"seed": 3})
    m, v = MU.flatten().clone(), (STD ** 2 + sigmas[0] ** 2).flatten()
    for i in range(len(sigmas) - 1):
        a = STD.flatten() ** 2 / (STD.flatten() ** 2 + sigmas[i] ** 2)
        m, v = a * m + (1 - a) * MU.flatten(), a ** 2 * v + sigmas[i + 1] ** 2
    n = N_SIDE * N_SIDE
    assert ((out.mean(dim=(0, 2, 3)) - m).abs() < 4.5 * v.sqrt() / math.sqrt(n)).all()
    assert ((out.std(dim=(0, 2, 3)) / v.sqrt() - 1).abs() < 4.5 / math.sqrt(2 * n)).all()


def test_ddpm_equals_euler_ancestral():
    # In the VE frame the DDPM posterior step with x0 = D is exactly an eta = 1 ancestral Euler step,
    # so with the same noise stream the two samplers agree.
    sigmas = sch.karras(12, 0.03, 14.6)
    x = torch.randn(1, 4, 8, 8) * 14.6
    a = S.sample_ddpm(Gaussian(), x, sigmas, extra_args={"seed": 3})
    b = S.sample_euler_ancestral(Gaussian(), x, sigmas, extra_args={"seed": 3})
    assert torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# seeds


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm"])
def test_same_seed_is_bit_identical(name):
    sigmas = sch.karras(6, 0.03, 14.6)
    x = torch.randn(2, 4, 8, 8) * 14.6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = S.sampler_function(name)(Gaussian(), x.clone(), sigmas, extra_args={"seed": 2 ** 63 + 5})
        b = S.sampler_function(name)(Gaussian(), x.clone(), sigmas, extra_args={"seed": 2 ** 63 + 5})
        c = S.sampler_function(name)(Gaussian(), x.clone(), sigmas, extra_args={"seed": 11})
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ancestral_noise_is_one_randn_per_step_from_the_seed():
    # ComfyUI draws the per-step noise from a generator on the latent's device seeded with the
    # seed: replay that stream by hand and run the ancestral step formula.
    sigmas = torch.tensor([5.0, 2.0, 0.7, 0.0])
    x0 = torch.randn(1, 4, 4, 4) * 5
    out = S.sample_euler_ancestral(Gaussian(), x0, sigmas, extra_args={"seed": 99})
    gen = torch.Generator().manual_seed(99)
    x, model = x0, Gaussian()
    for i in range(3):
        d_ = model(x, sigmas[i:i + 1])
        s_from, s_to = float(sigmas[i]), float(sigmas[i + 1])
        up = min(s_to, (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5)
        down = (s_to ** 2 - up ** 2) ** 0.5
        if down == 0:
            x = d_
        else:
            x = x + (x - d_) / s_from * (down - s_from) + torch.randn(x.shape, generator=gen) * up
    assert torch.allclose(out, x, atol=1e-5)


def test_brownian_tree_noise_is_consistent_across_subdivision():
    # W(s0, s2) = W(s0, s1) + W(s1, s2): the noise of a big step is the sum of its halves' noise.
    from diffusion.noise import BrownianTreeNoiseSampler
    x = torch.zeros(1, 4, 8, 8)
    ns = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    a = ns(torch.tensor(5.0), torch.tensor(1.0)) * 4.0 ** 0.5
    b = ns(torch.tensor(5.0), torch.tensor(2.0)) * 3.0 ** 0.5 + ns(torch.tensor(2.0), torch.tensor(1.0)) * 1.0
    assert torch.allclose(a, b, atol=1e-4)
    z = ns(torch.tensor(10.0), torch.tensor(0.1))
    assert abs(float(z.std()) - 1) < 0.2


# ---------------------------------------------------------------------------------------------
# CFG++ variants reduce to their base samplers when cond == uncond. Not dpmpp_2s_ancestral_cfg_pp:
# ComfyUI's (which ours follows, see test_sampler_golden.py) shifts the full step by the first
# guided estimate minus the midpoint's unconditional one, which differ even without guidance.


class GaussianCFG(Gaussian):
    """Exposes the CFG hooks the CFG++ samplers use, with identical cond and uncond."""

    def __call__(self, x, sigma, model_options=None, **_):
        d = super().__call__(x, sigma)
        for fn in (model_options or {}).get("sampler_post_cfg_function", []):
            d = fn({"denoised": d, "uncond_denoised": d, "cond_denoised": d})
        return d


@pytest.mark.parametrize("pp,base", [("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m"),
                                     ("res_multistep_cfg_pp", "res_multistep"),
                                     ("gradient_estimation_cfg_pp", "gradient_estimation"),
                                     ("euler_ancestral_cfg_pp", "euler_ancestral"),
                                     ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral")])
def test_cfg_pp_equals_base_without_guidance(pp, base):
    sigmas = sch.karras(8, 0.03, 14.6)
    x = torch.randn(1, 4, 8, 8) * 14.6
    a = S.sampler_function(pp)(GaussianCFG(), x, sigmas, extra_args={"seed": 4})
    b = S.sampler_function(base)(Gaussian(), x, sigmas, extra_args={"seed": 4})
    assert torch.allclose(a, b, atol=2e-4), float((a - b).abs().max())


def test_every_sampler_name_resolves_and_reports_each_step():
    sigmas = sch.karras(4, 0.03, 14.6)
    for name in S.SAMPLER_NAMES:
        model = GaussianCFG()
        steps = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = S.sampler_function(name)(model, torch.randn(1, 4, 4, 4) * 14.6, sigmas, extra_args={"seed": 1},
                                           callback=lambda d: steps.append(d))
        assert torch.isfinite(out).all(), name
        assert steps and set(steps[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}, name


# ---------------------------------------------------------------------------------------------
# against diffusers' schedulers (an independent implementation), same sigmas, toy eps model

diffusers = pytest.importorskip("diffusers")
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _eps(x_ve, sigma):
    """eps-prediction of the toy, for VE input x_ve at noise sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return (x_ve - Gaussian()(x_ve, sigma.reshape(1))) / sigma


def _noise(seed=0):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_euler_matches_diffusers():
    sched = diffusers.EulerDiscreteScheduler(**SD_BETAS)
    sched.set_timesteps(12)
    sigmas = sched.sigmas.clone()
    x = _noise() * sched.init_noise_sigma
    ours = S.sample_euler(Gaussian(), x.clone(), sigmas)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(_eps(x, sigmas[i]), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4, rtol=1e-4), float((ours - x).abs().max())


def test_euler_ancestral_matches_diffusers_with_same_noise():
    sched = diffusers.EulerAncestralDiscreteScheduler(**SD_BETAS)
    sched.set_timesteps(10)
    sigmas = sched.sigmas.clone()
    x = _noise() * sched.init_noise_sigma
    ours_gen = torch.Generator().manual_seed(21)
    ours = S.sample_euler_ancestral(Gaussian(), x.clone(), sigmas,
                                    noise_sampler=lambda a, b: torch.randn(x.shape, generator=ours_gen))
    gen = torch.Generator().manual_seed(21)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(_eps(x, sigmas[i]), t, x, generator=gen).prev_sample
    assert torch.allclose(ours, x, atol=1e-4, rtol=1e-4), float((ours - x).abs().max())


def test_heun_matches_diffusers():
    base = diffusers.EulerDiscreteScheduler(**SD_BETAS)
    base.set_timesteps(8)
    sched = diffusers.HeunDiscreteScheduler(**SD_BETAS)
    sched.set_timesteps(8)
    x = _noise() * sched.init_noise_sigma
    ours = S.sample_heun(Gaussian(), x.clone(), base.sigmas.clone())
    for t in sched.timesteps:
        sched.scale_model_input(x, t)  # sets the step index
        x = sched.step(_eps(x, sched.sigmas[sched.step_index]), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4, rtol=1e-4), float((ours - x).abs().max())


def test_lms_matches_diffusers_before_the_final_step():
    # ComfyUI's LMS returns D on the step to sigma = 0; diffusers integrates that step too, so
    # compare the trajectories up to the last nonzero sigma.
    sched = diffusers.LMSDiscreteScheduler(**SD_BETAS)
    sched.set_timesteps(10)
    sigmas = sched.sigmas.clone()
    x = _noise() * sched.init_noise_sigma
    ours = S.sample_lms(Gaussian(), x.clone(), sigmas[:-1])
    for i, t in enumerate(sched.timesteps[:-1]):
        x = sched.step(_eps(x, sigmas[i]), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4, rtol=1e-4), float((ours - x).abs().max())


def _vp_run(sched, sigmas, n_steps, x_ve):
    """Run a diffusers VP-frame scheduler (sample = x / sqrt(1 + sigma^2)) with the toy."""
    x = x_ve / (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(sched.timesteps[:n_steps]):
        s = sigmas[i]
        x = sched.step(_eps(x * (1 + s ** 2) ** 0.5, s), t, x).prev_sample
    return x


def test_dpmpp_2m_karras_matches_diffusers():
    sched = diffusers.DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                                  use_karras_sigmas=True, final_sigmas_type="zero",
                                                  lower_order_final=True)
    sched.set_timesteps(12)
    sigmas = sched.sigmas.clone()
    x = _noise() * sigmas[0]
    ours = S.sample_dpmpp_2m(Gaussian(), x.clone(), sigmas)
    theirs = _vp_run(sched, sigmas, 12, x)  # alpha = 1 at sigma = 0
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), float((ours - theirs).abs().max())


def test_ddim_matches_diffusers():
    sched = diffusers.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    sched.set_timesteps(10)
    abar = sched.alphas_cumprod[sched.timesteps]
    sigmas = torch.cat([((1 - abar) / abar) ** 0.5, torch.zeros(1)])
    x = _noise() * sigmas[0]
    ours = S.sampler_function("ddim")(Gaussian(), x.clone(), sigmas)
    theirs = _vp_run(sched, sigmas, 10, x)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), float((ours - theirs).abs().max())
    # ... and our ddim_uniform schedule is diffusers' "leading" DDIM spacing.
    assert torch.allclose(sch.ddim_uniform(MS, 10), sigmas, rtol=1e-4)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_uni_pc_matches_diffusers(variant):
    # A schedule ending at sigma_min (not 0), where neither implementation special-cases the end.
    sched = diffusers.UniPCMultistepScheduler(**SD_BETAS, solver_order=3, solver_type=variant, predict_x0=True,
                                              lower_order_final=True, final_sigmas_type="sigma_min")
    sched.set_timesteps(10)
    sigmas = sched.sigmas.clone()
    x = _noise() * (1 + sigmas[0] ** 2) ** 0.5
    ours = S.sample_uni_pc(Gaussian(), x.clone(), sigmas, variant=variant)
    theirs = _vp_run(sched, sigmas, 10, x) * (1 + sigmas[-1] ** 2) ** 0.5
    assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4), float((ours - theirs).abs().max())
