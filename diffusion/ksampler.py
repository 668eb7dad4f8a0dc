"""KSampler semantics: seeds to noise, classifier-free guidance, denoise < 1, start/end steps,
leftover noise, latent noise masks, and the custom-sampling building blocks.

Layers, innermost first:
* `calc_cond_batch` runs the UNet on every conditioning entry that is active at this sigma,
  batching entries whose inputs can share a call (cond and uncond together), and averages the
  overlapping area/mask-weighted outputs.
* `CFGDenoiser` combines them: uncond + cfg * (cond - uncond); at cfg == 1 uncond is skipped.
* `InpaintDenoiser` pins the unmasked region of a noise-masked latent to the (re-noised) original.
* `Sampler` noises the latent to sigmas[0] and runs a sampling function from `samplers`.
* `sample` / `ksampler` / `sample_custom` are the KSampler, KSamplerAdvanced and SamplerCustom
  entry points.

Conditioning is ComfyUI's: a list of [cond_tensor, extras] with extras such as "pooled_output",
SDXL sizes, "area" (h, w, y, x in latent units, or ("percentage", h, w, y, x)), "strength",
"mask", "mask_strength", "set_area_to_bounds", "start_percent"/"end_percent" and "control".
"""

from __future__ import annotations

import math
import uuid

import torch
import torch.nn.functional as F

from . import patches as _patches
from . import samplers as _samplers
from . import schedules as _schedules
from .model import repeat_to_batch_size
from .noise import DisableNoise, RandomNoise, prepare_noise

SAMPLER_NAMES = _samplers.SAMPLER_NAMES
SCHEDULER_NAMES = _schedules.SCHEDULER_NAMES

# ---------------------------------------------------------------------------------------------
# conditioning preparation


def convert_cond(conditioning) -> list[dict]:
    """[[tensor, extras], ...] -> entries {"cross_attn", **extras, "uuid"} (own copies)."""
    out = []
    for tensor, extras in conditioning:
        entry = dict(extras)
        if tensor is not None:
            entry["cross_attn"] = tensor
        entry["uuid"] = uuid.uuid4()
        out.append(entry)
    return out


def _resolve_area_and_mask(entry: dict, h: int, w: int, device) -> dict:
    area = entry.get("area")
    if area is not None and area[0] == "percentage":
        entry = dict(entry)
        entry["area"] = (max(1, round(area[1] * h)), max(1, round(area[2] * w)), round(area[3] * h), round(area[4] * w))
    mask = entry.get("mask")
    if mask is not None:
        entry = dict(entry)
        mask = mask.to(device)
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.shape[1:] != (h, w):
            mask = F.interpolate(mask.unsqueeze(1).float(), size=(h, w), mode="bilinear",
                                 align_corners=False).squeeze(1)
        if entry.get("set_area_to_bounds", False):
            bounds = torch.max(torch.abs(mask), dim=0).values
            ys, xs = torch.where(bounds != 0)
            if ys.numel() == 0:
                entry["area"] = (8, 8, 0, 0)  # an all-zero mask contributes nothing; keep it cheap
            else:
                y0, x0 = int(ys.min()), int(xs.min())
                entry["area"] = (max(8, int(ys.max()) - y0 + 1), max(8, int(xs.max()) - x0 + 1), y0, x0)
        entry["mask"] = mask
    return entry


def _area_inside(inner, outer) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3]
            and inner[0] + inner[2] <= outer[0] + outer[2] and inner[1] + inner[3] <= outer[1] + outer[3])


def _add_matching_area(entries: list[dict], c: dict) -> None:
    """Give `entries` (the other prompt) a copy over c's area, so every area-restricted cond has an
    opposite of equal size; borrows the model inputs of the smallest entry that covers the area."""
    if "area" not in c:
        return
    smallest = None
    for x in entries:
        if "area" in x:
            if _area_inside(c["area"], x["area"]):
                if smallest is None or "area" not in smallest or (
                        math.prod(smallest["area"][:2]) > math.prod(x["area"][:2])):
                    smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None or smallest.get("area") == c["area"]:
        return
    out = dict(c)
    out["model_conds"] = dict(smallest["model_conds"])
    entries.append(out)


def process_conds(model, noise: torch.Tensor, conds: dict, latent_image=None, denoise_mask=None) -> dict:
    """Resolve areas and masks at the latent's size, sigma ranges, and each entry's model inputs."""
    h, w = noise.shape[2], noise.shape[3]
    ms = model.model_sampling
    out = {}
    for kind, entries in conds.items():
        done = []
        for e in entries:
            e = _resolve_area_and_mask(e, h, w, noise.device)
            if "start_percent" in e:
                e["timestep_start"] = ms.percent_to_sigma(e["start_percent"])
            if "end_percent" in e:
                e["timestep_end"] = ms.percent_to_sigma(e["end_percent"])
            e["model_conds"] = model.model_conds(e.get("cross_attn"), e, noise, latent_image, denoise_mask, kind)
            done.append(e)
        out[kind] = done
    for kind in out:
        for c in list(out[kind]):
            for other in out:
                if other != kind:
                    _add_matching_area(out[other], c)
    for entry in (e for entries in out.values() for e in entries):
        control = entry.get("control")
        if control is not None and hasattr(control, "pre_run"):
            control.pre_run(model, ms.percent_to_sigma)
    if "positive" in out:
        for kind in out:
            if kind != "positive":
                _share_control_with_uncond(out["positive"], out[kind])
    return out


def _share_control_with_uncond(positive: list[dict], negative: list[dict]) -> None:
    """The old ControlNetApply marks its entries control_apply_to_uncond: their ControlNets are
    also applied to the negative prompt's full-image entries (one each, round robin)."""
    controls = [c["control"] for c in positive if c.get("control_apply_to_uncond") and "area" not in c
                and c.get("control") is not None]
    if any("area" not in n and n.get("control") is not None for n in negative):
        return
    free = [i for i, n in enumerate(negative) if "area" not in n]
    for j, control in enumerate(controls):
        if not free:
            return
        i = free[j % len(free)]
        negative[i] = {**negative[i], "control": control}


def prepare_mask(mask: torch.Tensor, shape, device) -> torch.Tensor:
    """A noise mask [B?, H?, W?] resized (bilinear) to the latent [B, C, h, w]."""
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat((1, shape[1], 1, 1))[:, :shape[1]]
    return repeat_to_batch_size(mask, shape[0]).to(device)


# ---------------------------------------------------------------------------------------------
# model evaluation and guidance


def _crop(t: torch.Tensor, area) -> torch.Tensor:
    return t[:, :, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]


def _area_and_mult(entry: dict, x: torch.Tensor, sigma: torch.Tensor):
    """The input crop, the blend weights and the model inputs of one entry, or None when the
    entry is inactive at this sigma (ConditioningSetTimestepRange)."""
    if "timestep_start" in entry and sigma[0] > entry["timestep_start"]:
        return None
    if "timestep_end" in entry and sigma[0] < entry["timestep_end"]:
        return None
    area = entry.get("area")
    if area is not None:
        area = list(area)
        area[0] = min(x.shape[2] - area[2], area[0])
        area[1] = min(x.shape[3] - area[3], area[1])
    input_x = x if area is None else _crop(x, area)
    if "mask" in entry:
        mask = entry["mask"][:input_x.shape[0]]
        if area is not None:
            mask = mask[:, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
        mask = (mask * entry.get("mask_strength", 1.0)).unsqueeze(1)
        mask = mask.repeat(input_x.shape[0] // mask.shape[0], input_x.shape[1], 1, 1)
    else:
        mask = torch.ones_like(input_x)
    mult = mask * entry.get("strength", 1.0)
    if "mask" not in entry and area is not None:
        # Feather the inner edges of an area over up to 8 latent pixels so areas blend.
        for dim, (size, offset) in enumerate(((area[0], area[2]), (area[1], area[3]))):
            rr = min(8, mult.shape[2 + dim] // 4)
            for t in range(rr):
                if offset != 0:
                    mult.narrow(2 + dim, t, 1).mul_((t + 1) / rr)
                if size + offset < x.shape[2 + dim]:
                    mult.narrow(2 + dim, size - 1 - t, 1).mul_((t + 1) / rr)
    inputs = {}
    for key, value in entry["model_conds"].items():
        if value is None:
            continue
        if key == "c_concat" and area is not None:
            value = _crop(value, area)
        inputs[key] = repeat_to_batch_size(value, x.shape[0])
    return input_x, mult, inputs, area, entry.get("control")


def _can_batch(a, b) -> bool:
    if a[0].shape != b[0].shape or a[4] is not b[4] or a[2].keys() != b[2].keys():
        return False
    for k in a[2]:
        sa, sb = a[2][k].shape, b[2][k].shape
        if sa == sb:
            continue
        # Cross-attention contexts of different token counts batch by repetition (attention over
        # a repeated context is unchanged), up to a 4x padding.
        if k != "c_crossattn" or sa[0] != sb[0] or sa[2] != sb[2]:
            return False
        if math.lcm(sa[1], sb[1]) // min(sa[1], sb[1]) > 4:
            return False
    return True


def _cat_inputs(dicts: list[dict]) -> dict:
    out = {}
    for k in dicts[0]:
        values = [d[k] for d in dicts]
        if k == "c_crossattn":
            n = math.lcm(*[v.shape[1] for v in values])
            values = [v.repeat(1, n // v.shape[1], 1) if v.shape[1] < n else v for v in values]
        out[k] = torch.cat(values)
    return out


def calc_cond_batch(model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None,
                    max_batch: int | None = None) -> list[torch.Tensor]:
    """Denoised predictions for each list in `conds` (None = skip), each the mult-weighted
    average of its entries' predictions over the areas they cover."""
    model_options = model_options or {}
    outs = [torch.zeros_like(x) for _ in conds]
    counts = [torch.ones_like(x) * 1e-37 for _ in conds]
    to_run = []
    for idx, entries in enumerate(conds):
        for e in entries or []:
            p = _area_and_mult(e, x, sigma)
            if p is not None:
                to_run.append((p, idx))
    while to_run:
        first = to_run[0][0]
        batch = [j for j in range(len(to_run)) if _can_batch(to_run[j][0], first)]
        if max_batch is not None:
            batch = batch[:max(1, max_batch // x.shape[0])]
        picked = [to_run[j] for j in batch]
        to_run = [r for j, r in enumerate(to_run) if j not in set(batch)]
        input_x = torch.cat([p[0] for p, _ in picked])
        inputs = _cat_inputs([p[2] for p, _ in picked])
        sigma_in = torch.cat([sigma] * len(picked))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = [idx for _, idx in picked]
        transformer_options["sigmas"] = sigma
        inputs["transformer_options"] = transformer_options
        control = first[4]
        if control is not None:
            inputs["control"] = control.get_control(input_x, sigma_in, inputs, len(picked), transformer_options) \
                if hasattr(control, "get_control") else control
        output = model.denoise(input_x, sigma_in, inputs).chunk(len(picked))
        for o, ((_, mult, _, area, _), idx) in zip(output, picked):
            if area is None:
                outs[idx] += o * mult
                counts[idx] += mult
            else:
                _crop(outs[idx], area).add_(o * mult)
                _crop(counts[idx], area).add_(mult)
    return [o / c for o, c in zip(outs, counts)]


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) over a DiffusionModel: the denoiser
    D(x, sigma) = D_uncond + cfg * (D_cond - D_uncond), with ComfyUI's hooks in model_options
    ("sampler_cfg_function", "sampler_post_cfg_function", "disable_cfg1_optimization")."""

    def __init__(self, model, conds: dict, cfg: float, max_batch: int | None = None):
        self.model, self.conds, self.cfg, self.max_batch = model, conds, cfg, max_batch
        self.model_sampling = model.model_sampling

    def __call__(self, x, sigma, model_options=None, seed=None, **_):
        model_options = model_options or {}
        cond, uncond = self.conds.get("positive"), self.conds.get("negative")
        if math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False):
            uncond = None
        cond_pred, uncond_pred = calc_cond_batch(self.model, [cond, uncond], x, sigma, model_options, self.max_batch)
        if "sampler_cfg_function" in model_options:
            args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": self.cfg, "timestep": sigma,
                    "input": x, "sigma": sigma, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                    "model": self.model, "model_options": model_options}
            result = x - model_options["sampler_cfg_function"](args)
        else:
            result = uncond_pred + (cond_pred - uncond_pred) * self.cfg
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn({"denoised": result, "cond": cond, "uncond": uncond, "cond_scale": self.cfg,
                         "model": self.model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                         "sigma": sigma, "model_options": model_options, "input": x})
        return result


class InpaintDenoiser:
    """Wraps a denoiser for SetLatentNoiseMask: outside the mask the input is replaced by the
    original latent noised to the current sigma, and the output by the original latent, so only
    the masked region is generated (mask 1 = generate)."""

    def __init__(self, inner, latent_image: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor | None = None):
        self.inner, self.latent_image, self.noise, self.sigmas = inner, latent_image, noise, sigmas
        self.model_sampling = inner.model_sampling

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        model_options = model_options or {}
        if denoise_mask is not None:
            if "denoise_mask_function" in model_options:
                # ComfyUI's hook for per-step masks (DifferentialDiffusion thresholds the mask by sigma).
                denoise_mask = model_options["denoise_mask_function"](
                    sigma, denoise_mask, extra_options={"model": self.inner, "sigmas": self.sigmas})
            keep = 1.0 - denoise_mask
            s = sigma.reshape([sigma.shape[0]] + [1] * (x.ndim - 1))
            x = x * denoise_mask + self.model_sampling.noise_scaling(s, self.noise, self.latent_image) * keep
        out = self.inner(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * keep
        return out


# ---------------------------------------------------------------------------------------------
# samplers and sigmas


class Sampler:
    """A named sampling function with its options (the SAMPLER type of the custom-sampling nodes)."""

    def __init__(self, name: str, function=None, options: dict | None = None, random_inpaint_noise: bool = False):
        self.name = name
        self.function = function if function is not None else _samplers.sampler_function(name)
        self.options = dict(options or {})
        self.random_inpaint_noise = random_inpaint_noise

    @staticmethod
    def max_denoise(ms, sigmas) -> bool:
        sigma_max, sigma = float(ms.sigma_max), float(sigmas[0])
        return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max

    def sample(self, denoiser, sigmas, extra_args: dict, callback, noise, latent_image, denoise_mask=None):
        ms = denoiser.model_sampling
        extra_args = {**extra_args, "denoise_mask": denoise_mask}
        inpaint_noise = noise
        if self.random_inpaint_noise:
            # ComfyUI's "ddim" re-noises the kept region with noise of seed + 1, not the initial noise.
            seed = extra_args.get("seed")
            generator = torch.manual_seed((41 if seed is None else seed) + 1)  # seed 0 gives 1, not 42
            inpaint_noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
        model_k = InpaintDenoiser(denoiser, latent_image, inpaint_noise, sigmas)
        x = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(ms, sigmas))
        total = len(sigmas) - 1
        k_callback = None if callback is None else (lambda d: callback(d["i"], d["denoised"], d["x"], total))
        samples = self.function(model_k, x, sigmas, extra_args=extra_args, callback=k_callback, disable=True,
                                **self.options)
        return ms.inverse_noise_scaling(sigmas[-1], samples)

    def __repr__(self) -> str:
        return f"Sampler({self.name!r})"


def ksampler_select(name: str, **options) -> Sampler:
    """KSamplerSelect: the sampler object for a name (ddim gets its inpainting-noise rule)."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}")
    return Sampler(name, options=options, random_inpaint_noise=(name == "ddim"))


def _ms(model):
    return getattr(model, "model_sampling", model)


def ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float | None = 1.0):
    """KSampler's schedule: `steps` steps of `scheduler`, one extra (then the penultimate sigma
    dropped) for dpm_2 / uni_pc; with denoise < 1, the last steps + 1 sigmas of a schedule of
    int(steps / denoise) steps."""
    ms = _ms(model)

    def calc(n):
        discard = sampler_name in _samplers.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = _schedules.calculate_sigmas(ms, scheduler, n + 1 if discard else n)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    if denoise is None or denoise > 0.9999:
        return calc(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return calc(int(steps / denoise))[-(steps + 1):]


def slice_sigmas(sigmas: torch.Tensor, start_step=None, last_step=None, force_full_denoise=False):
    """KSamplerAdvanced's step window; None when start_step leaves nothing to do (the latent is
    returned unchanged). Ending early keeps the leftover noise unless force_full_denoise."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas


def basic_scheduler(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """BasicScheduler node."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.FloatTensor([])
        total = int(steps / denoise)
    return _schedules.calculate_sigmas(_ms(model), scheduler, total).cpu()[-(steps + 1):]


def karras_scheduler(steps: int, sigma_max: float = 14.614642, sigma_min: float = 0.0291675, rho: float = 7.0):
    """KarrasScheduler node."""
    return _schedules.karras(steps, sigma_min, sigma_max, rho)


def exponential_scheduler(steps: int, sigma_max: float = 14.614642, sigma_min: float = 0.0291675):
    """ExponentialScheduler node."""
    return _schedules.exponential(steps, sigma_min, sigma_max)


def sd_turbo_scheduler(model, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SDTurboScheduler node."""
    return _schedules.sd_turbo(_ms(model), steps, denoise)


def split_sigmas(sigmas: torch.Tensor, step: int):
    """SplitSigmas node: (sigmas[:step + 1], sigmas[step:]); the split sigma is in both halves."""
    return sigmas[:step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float):
    """SplitSigmasDenoise node: the last round(steps * denoise) steps go to the second half; the first
    half is sigmas[:-total] (so it also ends on the split sigma, as ComfyUI's does)."""
    steps = max(sigmas.shape[-1] - 1, 0)
    total = round(steps * denoise)
    return sigmas[:-total], sigmas[-(total + 1):]


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """FlipSigmas node (for unsampling); a leading 0 becomes 1e-4 so log-sigma stays finite."""
    if len(sigmas) == 0:
        return sigmas
    sigmas = sigmas.flip(0).clone()
    if sigmas[0] == 0:
        sigmas[0] = 0.0001
    return sigmas


# ---------------------------------------------------------------------------------------------
# entry points


def _device(model) -> torch.device:
    params = getattr(model.unet, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """An empty latent made for another family gets this model's channel count."""
    channels = model.latent_format.latent_channels
    if latent.shape[1] != channels and torch.count_nonzero(latent) == 0:
        latent = repeat_to_batch_size(latent.transpose(0, 1), channels).transpose(0, 1)
    return latent


def sample(model, noise, positive, negative, cfg: float, sampler: Sampler, sigmas, latent_image, denoise_mask=None,
           callback=None, seed=None, model_options=None, max_batch=None) -> torch.Tensor:
    """Sample with CFG from `noise` (unit variance) added to `latent_image` (VAE space, unscaled);
    returns the result in VAE space. This is ComfyUI's CFGGuider.sample."""
    if sigmas.shape[-1] == 0:
        return latent_image
    device = _device(model)
    noise = noise.to(device=device, dtype=torch.float32)
    latent_image = latent_image.to(device=device, dtype=torch.float32)
    sigmas = sigmas.to(device)
    if denoise_mask is not None:
        denoise_mask = prepare_mask(denoise_mask, noise.shape, device)
    if torch.count_nonzero(latent_image) > 0:
        # An empty latent stays exactly zero: formats with a shift would otherwise move it.
        latent_image = model.process_latent_in(latent_image)
    conds = process_conds(model, noise, {"positive": convert_cond(positive), "negative": convert_cond(negative)},
                          latent_image, denoise_mask)
    denoiser = CFGDenoiser(model, conds, cfg, max_batch)
    extra_args = {"model_options": dict(model_options or {}), "seed": seed}
    # LoRA and other weight patches live on the MODEL handle and touch the UNet only while it samples.
    with _patches.applied(getattr(model, "unet", None), _patches.patches_of(model)):
        samples = sampler.sample(denoiser, sigmas, extra_args, callback, noise, latent_image, denoise_mask)
    return model.process_latent_out(samples.to(torch.float32))


def _progress(callback, total):
    """Adapts the per-step (i, x0, x, n) hook to `callback(step, total, x0)`; `step` counts finished
    steps from 1. The callback may raise to interrupt sampling."""
    if callback is None:
        return None
    return lambda i, x0, x, n: callback(i + 1, total, x0)


def ksampler(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
             latent: dict, denoise: float = 1.0, disable_noise: bool = False, start_step=None, last_step=None,
             force_full_denoise: bool = False, callback=None) -> dict:
    """KSampler / KSamplerAdvanced (ComfyUI's common_ksampler). Returns a copy of `latent` with new
    "samples". For KSamplerAdvanced pass disable_noise=(add_noise == "disable"), start_step,
    last_step and force_full_denoise=(return_with_leftover_noise == "disable")."""
    latent_image = fix_empty_latent_channels(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        noise = prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    sigmas = slice_sigmas(sigmas, start_step, last_step, force_full_denoise)
    out = dict(latent)
    if sigmas is None:
        out["samples"] = latent_image
        return out
    samples = sample(model, noise, positive, negative, cfg, ksampler_select(sampler_name), sigmas, latent_image,
                     latent.get("noise_mask"), _progress(callback, steps), seed)
    out["samples"] = samples.cpu()
    return out


def sample_custom(model, noise, cfg: float, sampler: Sampler, sigmas, positive, negative, latent: dict,
                  seed: int | None = None, callback=None):
    """SamplerCustom / SamplerCustomAdvanced with a CFG guider. `noise` is a NOISE object
    (RandomNoise / DisableNoise) or a tensor (then `seed` seeds the per-step noise). Returns
    (output latent, denoised-output latent: the last x0 estimate)."""
    latent_image = fix_empty_latent_channels(model, latent["samples"])
    latent = dict(latent)
    latent["samples"] = latent_image
    if isinstance(noise, torch.Tensor):
        noise_tensor = noise
    else:
        noise_tensor = noise.generate_noise(latent)
        seed = noise.seed if seed is None else seed
    x0_box = {}
    total = max(sigmas.shape[-1] - 1, 0)

    def hook(i, x0, x, n):
        x0_box["x0"] = x0
        if callback is not None:
            callback(i + 1, total, x0)

    samples = sample(model, noise_tensor, positive, negative, cfg, sampler, sigmas, latent_image,
                     latent.get("noise_mask"), hook, seed)
    out = dict(latent)
    out["samples"] = samples.cpu()
    out_denoised = out
    if "x0" in x0_box:
        out_denoised = dict(latent)
        out_denoised["samples"] = model.process_latent_out(x0_box["x0"].cpu())
    return out, out_denoised


__all__ = [
    "SAMPLER_NAMES", "SCHEDULER_NAMES", "CFGDenoiser", "InpaintDenoiser", "Sampler", "RandomNoise", "DisableNoise",
    "basic_scheduler", "calc_cond_batch", "convert_cond", "exponential_scheduler", "flip_sigmas", "karras_scheduler",
    "ksampler", "ksampler_select", "ksampler_sigmas", "prepare_mask", "process_conds", "sample", "sample_custom",
    "sd_turbo_scheduler", "slice_sigmas", "split_sigmas", "split_sigmas_denoise",
]
