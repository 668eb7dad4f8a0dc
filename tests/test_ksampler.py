"""KSampler semantics: noise from seeds, CFG, sigma slicing, scaling, masks, conditioning."""

import math

import pytest
import torch

from diffusion import ksampler as K
from diffusion import schedules as sch
from diffusion.model import DiffusionModel, SDXLAdm, SDXLRefinerAdm, sdxl_adm, timestep_embedding
from diffusion.model_patcher import ModelPatcher
from diffusion.model_sampling import ModelSamplingDiscrete
from diffusion.noise import RandomNoise, prepare_noise


class FakeUNet(torch.nn.Module):
    """A UNet stand-in with the contract's signature: eps = k * x + mean(context) (+ mean(y)).
    Records every call's batch size, timesteps and context shape."""

    def __init__(self, k=0.3, in_channels=4):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(float(k)))
        self.config = type("Cfg", (), {"in_channels": in_channels})()
        self.calls = []

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None):
        self.calls.append({"batch": x.shape[0], "t": timesteps.clone(), "context": tuple(context.shape), "x": x})
        out = self.k * x[:, :4] + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        if y is not None:
            out = out + y.mean(dim=1).view(-1, 1, 1, 1)
        return out


def cond(value, tokens=77, **extras):
    return [[torch.full((1, tokens, 8), float(value)), extras]]


def patcher(unet, prediction="eps", family="sd1"):
    """MODEL as the loaders give it: a ModelPatcher over a DiffusionModel, on the CPU."""
    return ModelPatcher(DiffusionModel(unet, ModelSamplingDiscrete(prediction), family=family), "cpu", "cpu")


def make_model(k=0.3):
    return patcher(FakeUNet(k))


def unet_of(model):
    return model.model.diffusion_model


def denoise(model, x, sigma, context):
    return model.model.apply_model(x, sigma, c_crossattn=context)


def prepared(model, x, positive, negative):
    return K.process_conds(model.model, x, {"positive": K.convert_cond(positive),
                                            "negative": K.convert_cond(negative)}, x.device)


def guided(model, conds, cfg, x, sigma):
    """The guided denoiser a sampler calls (CFGGuider.predict_noise's sampling_function)."""
    return K.sampling_function(model.model, x, sigma, conds["negative"], conds["positive"], cfg, model.model_options)


def latent(b=1, h=4, w=4, value=0.0):
    return {"samples": torch.full((b, 4, h, w), value)}


# ---------------------------------------------------------------------------------------------
# noise


def test_prepare_noise_is_one_randn_after_manual_seed():
    lat = torch.zeros(3, 4, 8, 8)
    torch.manual_seed(123)
    want = torch.randn(lat.shape)
    assert torch.equal(prepare_noise(lat, 123), want)
    assert prepare_noise(lat, 2 ** 64 - 1).shape == lat.shape


def test_prepare_noise_batch_index_rule():
    lat = torch.zeros(3, 4, 2, 2)
    torch.manual_seed(9)
    items = [torch.randn(1, 4, 2, 2) for _ in range(3)]
    got = prepare_noise(lat, 9, batch_index=[2, 0, 2])
    assert torch.equal(got, torch.cat([items[2], items[0], items[2]]))


# ---------------------------------------------------------------------------------------------
# sigma slicing


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    model = make_model()
    ms = model.model.model_sampling
    # steps 4, denoise 0.5: an 8-step schedule, keep its last 5 sigmas.
    assert torch.equal(K.ksampler_sigmas(model, 4, "euler", "normal", 0.5), sch.calculate_sigmas(ms, "normal", 8)[-5:])
    # steps 10, denoise 0.75: int(13.33) = 13 steps, keep 11.
    assert torch.equal(K.ksampler_sigmas(model, 10, "euler", "karras", 0.75),
                       sch.calculate_sigmas(ms, "karras", 13)[-11:])
    assert K.ksampler_sigmas(model, 10, "euler", "karras", 0.0).numel() == 0
    assert torch.equal(K.basic_scheduler(model, "karras", 10, 0.75), sch.calculate_sigmas(ms, "karras", 13)[-11:])


def test_dpm2_and_unipc_drop_the_penultimate_sigma():
    model = make_model()
    full = sch.calculate_sigmas(model.model.model_sampling, "karras", 5)
    for name in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        got = K.ksampler_sigmas(model, 4, name, "karras")
        assert torch.equal(got, torch.cat([full[:-2], full[-1:]])) and len(got) == 5


def test_advanced_start_end_steps():
    sigmas = sch.calculate_sigmas(ModelSamplingDiscrete(), "normal", 10)
    leftover = K.slice_sigmas(sigmas, start_step=3, last_step=7, force_full_denoise=False)
    assert torch.equal(leftover, sigmas[3:8]) and leftover[-1] > 0
    full = K.slice_sigmas(sigmas, start_step=3, last_step=7, force_full_denoise=True)
    assert torch.equal(full[:-1], sigmas[3:7]) and full[-1] == 0
    assert sigmas[7] > 0  # the slice did not write into the schedule
    assert torch.equal(K.slice_sigmas(sigmas, 0, 10000, True), sigmas)
    assert K.slice_sigmas(sigmas, start_step=10) is None


def test_start_step_past_the_end_returns_latent_unchanged():
    model = make_model()
    lat = latent(value=0.7)
    out = K.common_ksampler(model, 1, 10, 7.0, "euler", "normal", cond(1), cond(0), lat, start_step=10, last_step=10000)
    assert torch.equal(out["samples"], lat["samples"]) and unet_of(model).calls == []


# ---------------------------------------------------------------------------------------------
# the whole path: noise scaling, latent scaling, CFG, masks


def test_noise_and_latent_scaling_end_to_end():
    # With eps = 0 the denoiser is the identity, Euler never moves, and the output is exactly the
    # starting point: VAE latent + noise * sqrt(1 + sigma_max^2) / scale_factor (full denoise) ...
    model = make_model(k=0.0)
    unet_of(model).forward = lambda x, t, context=None, **kw: torch.zeros_like(x)
    lat = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))}
    out = K.common_ksampler(model, 42, 3, 1.0, "euler", "normal", cond(1), cond(0), lat)["samples"]
    sigma_max = float(model.model.model_sampling.sigma_max)
    want = lat["samples"] + prepare_noise(lat["samples"], 42) * math.sqrt(1 + sigma_max ** 2) / 0.18215
    assert torch.allclose(out, want, rtol=1e-5, atol=1e-4)
    # ... and noise * sigma_start when denoise < 1 starts below the top.
    out = K.common_ksampler(model, 42, 3, 1.0, "euler", "normal", cond(1), cond(0), lat, denoise=0.5)["samples"]
    s0 = float(K.ksampler_sigmas(model, 3, "euler", "normal", 0.5)[0])
    assert torch.allclose(out, lat["samples"] + prepare_noise(lat["samples"], 42) * s0 / 0.18215, rtol=1e-5, atol=1e-4)
    # With the noise disabled nothing changes.
    out = K.common_ksampler(model, 42, 3, 1.0, "euler", "normal", cond(1), cond(0), lat, disable_noise=True)["samples"]
    assert torch.allclose(out, lat["samples"], atol=1e-6)


def test_cfg_one_skips_the_uncond_pass():
    model = make_model()
    K.common_ksampler(model, 1, 3, 1.0, "euler", "normal", cond(1), cond(0), latent())
    assert [c["batch"] for c in unet_of(model).calls] == [1, 1, 1]


def test_cfg_batches_cond_and_uncond_and_combines_them():
    model = make_model()
    K.common_ksampler(model, 1, 3, 7.5, "euler", "normal", cond(1), cond(-2, tokens=154), latent())
    # One UNet call per step with cond and uncond together; the 77-token context was repeated to 154.
    assert [c["batch"] for c in unet_of(model).calls] == [2, 2, 2]
    assert all(c["context"] == (2, 154, 8) for c in unet_of(model).calls)

    x, sigma = torch.randn(1, 4, 4, 4), torch.tensor([3.0])
    got = guided(model, prepared(model, x, cond(1), cond(-2)), 7.5, x, sigma)
    d_cond = denoise(model, x, sigma, torch.full((1, 77, 8), 1.0))
    d_uncond = denoise(model, x, sigma, torch.full((1, 77, 8), -2.0))
    assert torch.allclose(got, d_uncond + 7.5 * (d_cond - d_uncond), atol=1e-5)
    assert not torch.allclose(d_cond, d_uncond)


def test_timesteps_given_to_the_unet_are_table_indices():
    model = make_model()
    K.common_ksampler(model, 1, 2, 1.0, "euler", "normal", cond(1), cond(0), latent())
    assert [float(c["t"][0]) for c in unet_of(model).calls] == [999.0, 0.0]


def test_noise_mask_keeps_the_unmasked_region():
    model = make_model()
    lat = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)),
           "noise_mask": torch.zeros(1, 8, 8)}
    lat["noise_mask"][:, :, :4] = 1.0
    for sampler in ("euler", "dpmpp_2m", "euler_ancestral", "ddim"):
        out = K.common_ksampler(model, 5, 6, 5.0, sampler, "karras", cond(1), cond(0), lat)["samples"]
        assert torch.allclose(out[..., 4:], lat["samples"][..., 4:], atol=1e-4), sampler
        assert not torch.allclose(out[..., :4], lat["samples"][..., :4], atol=1e-2), sampler


def test_progress_callback_per_step():
    model = make_model()
    seen = []
    K.common_ksampler(model, 1, 4, 2.0, "heun", "normal", cond(1), cond(0), latent(),
               callback=lambda step, total, x0: seen.append((step, total, tuple(x0.shape))))
    assert seen == [(i, 4, (1, 4, 4, 4)) for i in range(1, 5)]


def test_same_seed_same_result_and_ancestral_seed_dependence():
    model = make_model()
    a = K.common_ksampler(model, 77, 5, 3.0, "euler_ancestral", "karras", cond(1), cond(0), latent())["samples"]
    b = K.common_ksampler(model, 77, 5, 3.0, "euler_ancestral", "karras", cond(1), cond(0), latent())["samples"]
    c = K.common_ksampler(model, 78, 5, 3.0, "euler_ancestral", "karras", cond(1), cond(0), latent())["samples"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sample_custom_matches_ksampler():
    model = make_model()
    want = K.common_ksampler(model, 31, 6, 4.0, "dpmpp_2m", "karras", cond(1), cond(0), latent())["samples"]
    sigmas = K.basic_scheduler(model, "karras", 6)
    out, denoised = K.sample_custom(model, RandomNoise(31), 4.0, K.ksampler_select("dpmpp_2m"), sigmas, cond(1),
                                    cond(0), latent())
    assert torch.allclose(out["samples"], want, atol=1e-6)
    assert denoised["samples"].shape == want.shape


def test_split_and_flip_sigmas():
    sigmas = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.0])
    high, low = K.split_sigmas(sigmas, 2)
    assert high.tolist() == [5.0, 3.0, 1.0] and low.tolist() == [1.0, 0.5, 0.0]
    high, low = K.split_sigmas_denoise(sigmas, 0.5)  # 4 steps, the last round(2) go to low
    assert high.tolist() == [5.0, 3.0, 1.0] and low.tolist() == [1.0, 0.5, 0.0]
    assert K.flip_sigmas(sigmas).tolist() == pytest.approx([0.0001, 0.5, 1.0, 3.0, 5.0])
    assert torch.equal(K.sd_turbo_scheduler(make_model(), 1), sch.sd_turbo(ModelSamplingDiscrete(), 1))


# ---------------------------------------------------------------------------------------------
# area / mask / timestep-range conditioning


def test_masked_cond_is_weighted_average():
    model = make_model()
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    conds = prepared(model, x, cond(1) + cond(3, mask=mask, strength=1.0), cond(0))
    got = guided(model, conds, 1.0, x, sigma)
    d1 = denoise(model, x, sigma, torch.full((1, 77, 8), 1.0))
    d3 = denoise(model, x, sigma, torch.full((1, 77, 8), 3.0))
    m = mask.unsqueeze(1)
    assert torch.allclose(got, (d1 + d3 * m) / (1 + m), atol=1e-5)


def test_area_cond_runs_on_the_crop_and_feathers():
    model = make_model()
    x, sigma = torch.randn(1, 4, 16, 16), torch.tensor([2.0])
    conds = prepared(model, x, cond(1) + cond(3, area=(8, 8, 0, 8), strength=1.0), cond(0))
    # The negative gained a copy over the same area (so CFG compares like with like).
    assert len(conds["negative"]) == 2 and conds["negative"][1]["area"] == (8, 8, 0, 8)
    got = guided(model, conds, 1.0, x, sigma)
    d1 = denoise(model, x, sigma, torch.full((1, 77, 8), 1.0))
    crop = x[:, :, 0:8, 8:16]
    d3 = denoise(model, crop, sigma, torch.full((1, 77, 8), 3.0))
    # Outside the area only the full cond counts; deep inside (away from the feathered left and
    # bottom edges) both count equally.
    assert torch.allclose(got[..., :, :8], d1[..., :, :8], atol=1e-5)
    assert torch.allclose(got[..., 0:4, 12:16], (d1[..., 0:4, 12:16] + d3[..., 0:4, 4:8]) / 2, atol=1e-5)
    # At the area's left edge the weight is 1/rr with rr = min(8, 8 // 4) = 2.
    assert torch.allclose(got[..., 0, 8], (d1[..., 0, 8] + 0.5 * d3[..., 0, 0]) / 1.5, atol=1e-5)


def test_timestep_range_disables_a_cond():
    model = make_model()
    x = torch.randn(1, 4, 4, 4)
    conds = prepared(model, x, cond(1) + cond(5, start_percent=0.5, end_percent=1.0), cond(0))
    high, low = torch.tensor([10.0]), torch.tensor([0.5])
    d1_high = denoise(model, x, high, torch.full((1, 77, 8), 1.0))
    assert torch.allclose(guided(model, conds, 1.0, x, high), d1_high, atol=1e-5)
    d_low = (denoise(model, x, low, torch.full((1, 77, 8), 1.0))
             + denoise(model, x, low, torch.full((1, 77, 8), 5.0))) / 2
    assert torch.allclose(guided(model, conds, 1.0, x, low), d_low, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# DiffusionModel: parameterisation, SDXL y, inpainting channels


def test_v_prediction_model_denoise():
    unet = FakeUNet()
    unet.forward = lambda x, t, context=None, **kw: torch.full_like(x, 0.5)
    model = patcher(unet, "v_prediction", "sd2")
    x = torch.full((1, 4, 2, 2), 2.0)
    got = denoise(model, x, torch.tensor([3.0]), torch.zeros(1, 77, 8))
    assert torch.allclose(got, torch.full_like(x, 2.0 / 10 - 0.5 * 3.0 / math.sqrt(10)), atol=1e-6)


def test_sdxl_adm_layout():
    pooled = torch.randn(2, 1280)
    y = sdxl_adm(pooled, width=1024, height=768, crop_w=16, crop_h=32, target_width=1024, target_height=1024)
    assert y.shape == (2, 2816) and torch.equal(y[:, :1280], pooled)
    order = [768, 1024, 32, 16, 1024, 1024]  # height, width, crop top, crop left, target height, width
    for i, v in enumerate(order):
        emb = timestep_embedding(torch.tensor([float(v)]), 256)[0]
        assert torch.allclose(y[1, 1280 + 256 * i:1280 + 256 * (i + 1)], emb)
    # Embedding: [cos(t f), sin(t f)] with f_k = 10000^(-k / 128).
    e = timestep_embedding(torch.tensor([5.0]), 256)[0]
    assert float(e[3]) == pytest.approx(math.cos(5.0 * 10000 ** (-3 / 128)), abs=1e-6)
    assert float(e[128 + 3]) == pytest.approx(math.sin(5.0 * 10000 ** (-3 / 128)), abs=1e-6)
    # Defaults: targets equal to the size (the sampler fills the size from the latent).
    y2 = SDXLAdm()({"pooled_output": pooled, "width": 1024, "height": 768})
    assert torch.allclose(y2, sdxl_adm(pooled, 1024, 768))


def test_sdxl_refiner_adm_and_aesthetic_defaults():
    pooled = torch.randn(1, 1280)
    pos = SDXLRefinerAdm()({"pooled_output": pooled, "width": 1024, "height": 1024, "prompt_type": "positive"})
    neg = SDXLRefinerAdm()({"pooled_output": pooled, "width": 1024, "height": 1024, "prompt_type": "negative"})
    assert pos.shape == (1, 2560)
    assert torch.allclose(pos[0, -256:], timestep_embedding(torch.tensor([6.0]), 256)[0])
    assert torch.allclose(neg[0, -256:], timestep_embedding(torch.tensor([2.5]), 256)[0])


def test_sdxl_model_passes_y_to_the_unet():
    unet = FakeUNet()
    model = patcher(unet, family="sdxl")
    pooled = torch.randn(1, 1280)
    K.common_ksampler(model, 1, 2, 1.0, "euler", "normal", cond(1, pooled_output=pooled),
                      cond(0, pooled_output=pooled), latent())
    assert model.model.latent_format.scale_factor == 0.13025 and len(unet.calls) == 2


def test_inpainting_model_gets_mask_then_masked_latent():
    unet = FakeUNet(in_channels=9)
    model = patcher(unet)
    assert model.model.concat_keys == ("mask", "masked_image")
    lat = {"samples": torch.randn(1, 4, 8, 8), "noise_mask": torch.zeros(1, 8, 8)}
    lat["noise_mask"][:, 2:6, 2:6] = 1.0
    K.common_ksampler(model, 1, 2, 1.0, "euler", "normal", cond(1), cond(0), lat)
    x_in = unet.calls[0]["x"]
    assert x_in.shape == (1, 9, 8, 8)
    assert torch.equal(x_in[:, 4], lat["noise_mask"])
    assert torch.allclose(x_in[:, 5:], lat["samples"] * 0.18215, atol=1e-6)
    # Without a mask: all-ones mask and the grey-image latent.
    c = model.model.concat_cond(noise=torch.zeros(2, 4, 3, 3))
    assert torch.equal(c[:, 0], torch.ones(2, 3, 3)) and c[0, 1:, 0, 0].tolist() == pytest.approx(
        [0.8223, -0.6876, 0.6364, 0.1380])


def test_names():
    assert K.SAMPLER_NAMES[:5] == ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun"]
    assert K.SAMPLER_NAMES[-3:] == ["ddim", "uni_pc", "uni_pc_bh2"] and len(K.SAMPLER_NAMES) == 42
    with pytest.raises(ValueError):
        K.ksampler_select("nope")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", K.SAMPLER_NAMES)
def test_every_sampler_runs_through_ksampler(name):
    model = make_model()
    out = K.common_ksampler(model, 3, 3, 2.5, name, "karras", cond(1), cond(0), latent(value=0.1), denoise=0.8)
    assert out["samples"].shape == (1, 4, 4, 4) and torch.isfinite(out["samples"]).all()


def _tiny_unet(**extra):
    unet_mod = pytest.importorskip("diffusion.unet")
    cfg = unet_mod.UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                              context_dim=16, num_heads=2, **extra)
    torch.manual_seed(0)
    return unet_mod.UNetModel(cfg).eval()


def test_real_unet_batched_cfg_equals_separate_passes():
    # Batching cond and uncond into one UNet call must not change the result.
    model = patcher(_tiny_unet())
    pos, neg = [[torch.randn(1, 77, 16), {}]], [[torch.randn(1, 154, 16), {}]]
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([4.0])
    conds = prepared(model, x, pos, neg)
    with torch.no_grad():
        batched = guided(model, conds, 6.0, x, sigma)
        [cond_pred] = K.calc_cond_batch(model.model, [conds["positive"]], x, sigma, model.model_options)
        [uncond_pred] = K.calc_cond_batch(model.model, [conds["negative"]], x, sigma, model.model_options)
        separate = uncond_pred + 6.0 * (cond_pred - uncond_pred)
    # float32 reductions differ slightly with the batch size (~1e-5 relative), which cfg 6 amplifies.
    assert torch.allclose(batched, separate, atol=2e-4)
    out = K.common_ksampler(model, 1, 3, 6.0, "dpmpp_2m", "karras", pos, neg, latent(h=8, w=8))
    assert torch.isfinite(out["samples"]).all()


def test_real_sdxl_style_unet_gets_the_adm_vector():
    model = patcher(_tiny_unet(adm_in_channels=2816), family="sdxl")
    pooled = torch.randn(1, 1280)
    pos = [[torch.randn(1, 77, 16), {"pooled_output": pooled, "width": 1024, "height": 1024}]]
    neg = [[torch.randn(1, 77, 16), {"pooled_output": torch.zeros(1, 1280)}]]
    out = K.common_ksampler(model, 1, 2, 5.0, "euler", "normal", pos, neg, latent(h=8, w=8))
    assert torch.isfinite(out["samples"]).all()


def test_control_objects_are_prepared_and_called_per_batch():
    class Control:
        def __init__(self):
            self.pre_runs, self.calls = 0, []

        def pre_run(self, model, percent_to_sigma):
            self.pre_runs += 1

        def get_control(self, x, sigma, inputs, batched_number, transformer_options):
            self.calls.append((x.shape[0], batched_number))
            return {"middle": [None]}

    model = make_model()
    control = Control()
    pos = cond(1, control=control, control_apply_to_uncond=True)
    K.common_ksampler(model, 1, 2, 4.0, "euler", "normal", pos, cond(0), latent())
    # The old-style apply shares the ControlNet with the negative prompt, so cond and uncond still
    # batch into one call per step, and the control sees both.
    assert control.pre_runs == 1 and control.calls == [(2, 2), (2, 2)]
    assert all(c["batch"] == 2 for c in unet_of(model).calls)
