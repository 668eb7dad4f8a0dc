"""KSampler semantics around a guider: conditioning to model inputs, classifier-free guidance with
the hooks plugins set on a MODEL, inpainting masks, seeds, denoise and step windows.

Layers, innermost first (names and call shapes are ComfyUI's comfy.samplers, since plugins
subclass and replace them):
* `calc_cond_batch(model, conds, x, sigma, model_options)` runs the UNet (`model.apply_model`,
  or the MODEL's "model_function_wrapper") on every conditioning entry active at this sigma,
  batching entries whose inputs can share a call, and averages the area/mask-weighted outputs.
  The MODEL's transformer_options (attention/block patches) travel with every call.
* `sampling_function` / `cfg_function`: D = uncond + cfg * (cond - uncond), with the MODEL's
  pre-cfg, cfg and post-cfg functions; at cfg == 1 uncond is skipped unless a hook disables that.
* `CFGGuider`: holds MODEL, conditioning and cfg; `sample(noise, latent, sampler, sigmas, ...)`
  loads the model through the model-lifetime service, prepares the conditioning and runs a
  sampler. `KSamplerX0Inpaint` pins the unmasked region of a noise-masked latent.
* `KSAMPLER` wraps a k-diffusion style function from `samplers`; `sampler_object(name)` makes one.
* `KSampler` (sigmas from scheduler, steps, denoise) and `sample` are ComfyUI's entry points;
  `common_ksampler` / `sample_custom` are the KSampler / SamplerCustom nodes' bodies.

Conditioning is ComfyUI's: a list of [cond_tensor, extras] with extras such as "pooled_output",
SDXL sizes, "area" (h, w, y, x in latent units, or ("percentage", h, w, y, x)), "strength",
"mask", "mask_strength", "set_area_to_bounds", "start_percent"/"end_percent" and "control".
"""

from __future__ import annotations

import collections
import math
import uuid

import torch
import torch.nn.functional as F

from . import patcher_extension as pe
from . import samplers as _samplers
from . import schedules as _schedules
from .conds import repeat_to_batch_size
from .device import release_freed_memory
from .hooks import EnumHookMode, EnumHookType, EnumWeightTarget, HookGroup, create_target_dict
from .model_management import use_models
from .model_patcher import create_model_options_clone
from .noise import DisableNoise, RandomNoise, prepare_noise
from .overrides import comfy_function

SAMPLER_NAMES = _samplers.SAMPLER_NAMES
SCHEDULER_NAMES = _schedules.SCHEDULER_NAMES
KSAMPLER_NAMES = [n for n in SAMPLER_NAMES if n not in ("ddim", "uni_pc", "uni_pc_bh2")]


def _replaceable(name: str, ours):
    return comfy_function("comfy.samplers", name, ours)


# ---------------------------------------------------------------------------------------------
# conditioning preparation


def convert_cond(cond) -> list[dict]:
    """[[tensor, extras], ...] -> entries {**extras, "cross_attn", "model_conds", "uuid"} (own copies)."""
    out = []
    for tensor, extras in cond:
        entry = dict(extras)
        entry["model_conds"] = entry.get("model_conds", {})
        if tensor is not None:
            entry["cross_attn"] = tensor
        entry["uuid"] = uuid.uuid4()
        out.append(entry)
    return out


def add_area_dims(area, num_dims: int):
    while len(area) // 2 < num_dims:
        area = [2147483648] + area[:len(area) // 2] + [0] + area[len(area) // 2:]
    return area


def get_mask_aabb(masks: torch.Tensor):
    """Per mask, the (x0, y0, x1, y1) box of its nonzero pixels and whether it is empty."""
    b = masks.shape[0]
    boxes = torch.zeros((b, 4), device=masks.device, dtype=torch.int)
    empty = torch.zeros((b,), device=masks.device, dtype=torch.bool)
    for i in range(b):
        ys, xs = torch.where(masks[i] != 0)
        if ys.numel() == 0:
            empty[i] = True
            continue
        boxes[i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).int()
    return boxes, empty


def resolve_areas_and_cond_masks_multidim(conditions: list[dict], dims, device) -> None:
    """Percentage areas to latent cells, masks to the latent's size and device (in place), once
    before sampling so opposite areas of equal size can be made."""
    dims = tuple(dims)
    for i, c in enumerate(conditions):
        area = c.get("area")
        if area is not None and area[0] == "percentage":
            a = area[1:]
            half = len(a) // 2
            c = dict(c)
            c["area"] = tuple(max(1, round(a[d] * dims[d])) for d in range(len(dims))) + \
                tuple(round(a[d + half] * dims[d]) for d in range(len(dims)))
            conditions[i] = c
        if "mask" in c:
            mask = c["mask"].to(device=device)
            c = dict(c)
            if mask.ndim == len(dims):
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != dims:
                mask = F.interpolate(mask.unsqueeze(1).float(), size=dims, mode="bilinear").squeeze(1)
            if c.get("set_area_to_bounds", False):
                bounds = torch.max(torch.abs(mask), dim=0).values.unsqueeze(0)
                boxes, empty = get_mask_aabb(bounds)
                if empty[0]:
                    c["area"] = (8, 8, 0, 0)  # an all-zero mask contributes nothing; keep it cheap
                else:
                    x0, y0, x1, y1 = (int(v) for v in boxes[0])
                    c["area"] = (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)
            c["mask"] = mask
            conditions[i] = c


def _area_inside(a, b) -> bool:
    a = add_area_dims(list(a), len(b) // 2)
    b = add_area_dims(list(b), len(a) // 2)
    na, nb = len(a) // 2, len(b) // 2
    for i in range(min(na, nb)):
        if a[na + i] < b[nb + i] or a[i] + a[na + i] > b[i] + b[nb + i]:
            return False
    return True


def create_cond_with_same_area_if_none(conds: list[dict], c: dict) -> None:
    """Give `conds` (the other prompt) an entry over c's area, so every area-restricted entry has
    an opposite of equal size; it borrows the model inputs of the smallest entry covering it."""
    if "area" not in c:
        return
    smallest = None
    for x in conds:
        if "area" in x:
            if _area_inside(c["area"], x["area"]):
                a = x["area"]
                if smallest is None or "area" not in smallest or \
                        math.prod(smallest["area"][:len(smallest["area"]) // 2]) > math.prod(a[:len(a) // 2]):
                    smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None or smallest.get("area") == c["area"]:
        return
    out = dict(c)
    out["model_conds"] = dict(smallest["model_conds"])
    conds.append(out)


def calculate_start_end_timesteps(model, conds: list[dict]) -> None:
    ms = model.model_sampling
    for t, x in enumerate(conds):
        start = end = None
        if "clip_start_percent" in x:
            start = ms.percent_to_sigma(max(x["clip_start_percent"], x.get("start_percent", 0.0)))
            end = ms.percent_to_sigma(min(x["clip_end_percent"], x.get("end_percent", 1.0)))
        else:
            if "start_percent" in x:
                start = ms.percent_to_sigma(x["start_percent"])
            if "end_percent" in x:
                end = ms.percent_to_sigma(x["end_percent"])
        if start is not None or end is not None:
            n = dict(x)
            if start is not None:
                n["timestep_start"] = start
            if end is not None:
                n["timestep_end"] = end
            conds[t] = n


def pre_run_control(model, conds: list[dict]) -> None:
    ms = model.model_sampling
    for x in conds:
        if x.get("control") is not None:
            x["control"].pre_run(model, lambda a: ms.percent_to_sigma(a))


def apply_empty_x_to_equal_area(conds, uncond, name, uncond_fill_func) -> None:
    """Share `name` (control, gligen) of the full-image positive entries with the negative prompt's
    full-image entries that lack one (round robin), unless the negative prompt has its own."""
    cond_cnets = [x[name] for x in conds if "area" not in x and x.get(name) is not None]
    if any("area" not in x and x.get(name) is not None for x in uncond):
        return
    uncond_other = [(x, t) for t, x in enumerate(uncond) if "area" not in x and x.get(name) is None]
    for i in range(len(cond_cnets)):
        if not uncond_other:
            return
        o, t = uncond_other[i % len(uncond_other)]
        n = dict(o)
        n[name] = uncond_fill_func(cond_cnets, i)
        if o.get(name) is not None:
            uncond.append(n)
        else:
            uncond[t] = n


def encode_model_conds(model_function, conds: list[dict], noise, device, prompt_type, **kwargs):
    """Each entry's model inputs from `model_function(**entry, noise, device, width, height, ...)`."""
    for t, x in enumerate(conds):
        params = dict(x)
        params["device"] = device
        params["noise"] = noise
        params["width"] = params.get("width", noise.shape[3] * 8 if noise.ndim >= 4 else None)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        for k, v in kwargs.items():
            params.setdefault(k, v)
        out = model_function(**params)
        x = dict(x)
        x["model_conds"] = {**x["model_conds"], **out}
        conds[t] = x
    return conds


def process_conds(model, noise, conds: dict, device, latent_image=None, denoise_mask=None, seed=None) -> dict:
    """Resolve areas and masks at the latent's size, sigma ranges and each entry's model inputs."""
    for k in conds:
        conds[k] = list(conds[k])
        resolve_areas_and_cond_masks_multidim(conds[k], noise.shape[2:], device)
    for k in conds:
        calculate_start_end_timesteps(model, conds[k])
    if hasattr(model, "extra_conds"):
        for k in conds:
            conds[k] = encode_model_conds(model.extra_conds, conds[k], noise, device, k, latent_image=latent_image,
                                          denoise_mask=denoise_mask, seed=seed)
    for k in conds:
        for c in list(conds[k]):
            for kk in conds:
                if k != kk:
                    create_cond_with_same_area_if_none(conds[kk], c)
    for entries in conds.values():
        for c in entries:
            for hook in (c["hooks"].hooks if c.get("hooks") is not None else []):
                hook.initialize_timesteps(model)
    for k in conds:
        pre_run_control(model, conds[k])
    if "positive" in conds:
        positive = conds["positive"]
        for k in conds:
            if k != "positive":
                apply_empty_x_to_equal_area([c for c in positive if c.get("control_apply_to_uncond", False)],
                                            conds[k], "control", lambda cnets, x: cnets[x])
                apply_empty_x_to_equal_area(positive, conds[k], "gligen", lambda cnets, x: cnets[x])
    return conds


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """A noise mask [B?, H?, W?] resized (bilinear) to the latent [B, C, h, w]."""
    mask = noise_mask.reshape((-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat((1, shape[1], 1, 1))[:, :shape[1]]
    return repeat_to_batch_size(mask, shape[0]).to(device)


# ---------------------------------------------------------------------------------------------
# model evaluation and guidance

CondObj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches",
                                              "uuid", "hooks"])


def get_area_and_mult(conds: dict, x_in: torch.Tensor, timestep_in: torch.Tensor):
    """The input crop, blend weights and model inputs of one entry at this sigma, or None when it
    is inactive (ConditioningSetTimestepRange)."""
    dims = tuple(x_in.shape[2:])
    if "timestep_start" in conds and timestep_in[0] > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and timestep_in[0] < conds["timestep_end"]:
        return None
    area = None
    if "area" in conds:
        area = add_area_dims(list(conds["area"]), len(dims))
        if len(area) // 2 > len(dims):
            area = area[:len(dims)] + area[len(area) // 2:len(area) // 2 + len(dims)]
    strength = conds.get("strength", 1.0)
    input_x = x_in
    if area is not None:
        for i in range(len(dims)):
            area[i] = min(input_x.shape[i + 2] - area[len(dims) + i], area[i])
            input_x = input_x.narrow(i + 2, area[len(dims) + i], area[i])
    if "mask" in conds:
        mask = conds["mask"][:input_x.shape[0]]
        if area is not None:
            for i in range(len(dims)):
                mask = mask.narrow(i + 1, area[len(dims) + i], area[i])
        mask = mask * conds.get("mask_strength", 1.0)
        mask = mask.unsqueeze(1).repeat((input_x.shape[0] // mask.shape[0], input_x.shape[1]) + (1,) * (mask.ndim - 1))
    else:
        mask = torch.ones_like(input_x)
    mult = mask * strength
    if "mask" not in conds and area is not None:
        # Feather the inner edges of an area over up to 8 latent cells so areas blend.
        for i in range(len(dims)):
            rr = min(8, mult.shape[2 + i] // 4)
            if area[len(dims) + i] != 0:
                for t in range(rr):
                    mult.narrow(i + 2, t, 1).mul_((1.0 / rr) * (t + 1))
            if area[i] + area[len(dims) + i] < x_in.shape[i + 2]:
                for t in range(rr):
                    mult.narrow(i + 2, area[i] - 1 - t, 1).mul_((1.0 / rr) * (t + 1))
    conditioning = {k: v.process_cond(batch_size=x_in.shape[0], area=area) for k, v in conds["model_conds"].items()}
    patches = None
    if "gligen" in conds:
        kind, gligen_model = conds["gligen"][0], conds["gligen"][1]
        if kind == "position":
            patch = gligen_model.model.set_position(input_x.shape, conds["gligen"][2], input_x.device)
        else:
            patch = gligen_model.model.set_empty(input_x.shape, input_x.device)
        patches = {"middle_patch": [patch]}
    return CondObj(input_x, mult, conditioning, area, conds.get("control"), patches, conds["uuid"], conds.get("hooks"))


def cond_equal_size(c1: dict, c2: dict) -> bool:
    if c1 is c2:
        return True
    return c1.keys() == c2.keys() and all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1: CondObj, c2: CondObj) -> bool:
    if c1.input_x.shape != c2.input_x.shape:
        return False

    def same(a, b):
        return (a is None) == (b is None) and (a is None or a is b)

    return same(c1.control, c2.control) and same(c1.patches, c2.patches) and \
        cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list: list[dict]) -> dict:
    grouped: dict[str, list] = {}
    for x in c_list:
        for k, v in x.items():
            grouped.setdefault(k, []).append(v)
    return {k: v[0].concat(v[1:]) for k, v in grouped.items()}


def _batch_fits(model, input_shape, cond_shapes, device) -> bool:
    """Whether a batch of this shape fits in free memory. On the CPU every compatible entry is
    batched, whatever the machine's load, so the result never depends on it."""
    if torch.device(device).type == "cpu":
        return True
    free = comfy_function("comfy.model_management", "get_free_memory", _free_memory_of(model))(device)
    return model.memory_required(input_shape, cond_shapes=cond_shapes) * 1.5 < free


def _free_memory_of(model):
    patcher = getattr(model, "current_patcher", None)
    manager = getattr(patcher, "manager", None)
    if manager is not None:
        return manager.get_free_memory
    from .device import free_memory
    return free_memory


def finalize_default_conds(model, hooked_to_run: dict, default_conds: list, x_in, timestep, model_options) -> None:
    """Entries marked "default" cover what the other entries of their prompt leave uncovered."""
    default_mults = [torch.ones_like(x_in) for _ in default_conds]
    for to_run in hooked_to_run.values():
        for cond_obj, i in to_run:
            if not default_conds[i]:
                continue
            if cond_obj.area is not None:
                m = default_mults[i]
                dims = len(cond_obj.area) // 2
                for d in range(dims):
                    m = m.narrow(d + 2, cond_obj.area[d + dims], cond_obj.area[d])
                m -= cond_obj.mult
            else:
                default_mults[i] -= cond_obj.mult
    for i, mult in enumerate(default_mults):
        if not default_conds[i]:
            continue
        torch.nn.functional.relu(mult, inplace=True)
        if torch.max(mult) == 0.0:
            continue
        for x in default_conds[i]:
            p = get_area_and_mult(x, x_in, timestep)
            if p is None:
                continue
            if p.hooks is not None:
                model.current_patcher.prepare_hook_patches_current_keyframe(timestep, p.hooks, model_options)
            hooked_to_run.setdefault(p.hooks, []).append((p._replace(mult=mult), i))


def calc_cond_batch(model, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> list:
    """Denoised predictions for each list in `conds` (None = skip), each the mult-weighted average
    of its entries' predictions over the areas they cover."""
    run = pe.wrapped(_calc_cond_batch, pe.WrappersMP.CALC_COND_BATCH, model_options, is_model_options=True)
    return run(model, conds, x_in, timestep, model_options)


def _calc_cond_batch(model, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> list:
    patcher = getattr(model, "current_patcher", None)
    out_conds, out_counts = [], []
    hooked_to_run: dict = {}
    default_conds = []
    has_default = False
    for i, cond in enumerate(conds):
        out_conds.append(torch.zeros_like(x_in))
        out_counts.append(torch.ones_like(x_in) * 1e-37)
        defaults = []
        for x in cond or []:
            if "default" in x:
                defaults.append(x)
                has_default = True
                continue
            p = get_area_and_mult(x, x_in, timestep)
            if p is not None:
                if p.hooks is not None:
                    # the hook's keyframe in force at this sigma sets its strength for this call
                    patcher.prepare_hook_patches_current_keyframe(timestep, p.hooks, model_options)
                hooked_to_run.setdefault(p.hooks, []).append((p, i))
        default_conds.append(defaults)
    if has_default:
        finalize_default_conds(model, hooked_to_run, default_conds, x_in, timestep, model_options)
    if patcher is not None:
        patcher.prepare_state(timestep)

    for hooks, to_run in hooked_to_run.items():
        while to_run:
            first = to_run[0][0]
            compatible = [j for j in range(len(to_run)) if can_concat_cond(to_run[j][0], first)]
            compatible.reverse()
            to_batch = compatible[:1]
            for div in range(1, len(compatible) + 1):
                amount = compatible[:len(compatible) // div]
                input_shape = [len(amount) * first.input_x.shape[0]] + list(first.input_x.shape[1:])
                cond_shapes = collections.defaultdict(list)
                for j in amount:
                    for k, v in to_run[j][0].conditioning.items():
                        cond_shapes[k].append(v.size())
                if _batch_fits(model, input_shape, cond_shapes, x_in.device):
                    to_batch = amount
                    break
            input_x, mult, c, cond_or_uncond, uuids, area = [], [], [], [], [], []
            control = patches = None
            for j in to_batch:  # descending indices, so popping keeps the rest in place
                p, idx = to_run.pop(j)
                input_x.append(p.input_x)
                mult.append(p.mult)
                c.append(p.conditioning)
                area.append(p.area)
                cond_or_uncond.append(idx)
                uuids.append(p.uuid)
                control, patches = p.control, p.patches
            chunks = len(cond_or_uncond)
            input_x = torch.cat(input_x)
            c = cond_cat(c)
            timestep_ = torch.cat([timestep] * chunks)

            transformer_options = patcher.apply_hooks(hooks=hooks) if patcher is not None else {}
            if "transformer_options" in model_options:
                transformer_options = pe.merge_nested_dicts(transformer_options, model_options["transformer_options"],
                                                            copy_dict1=False)
            if patches is not None:
                merged = dict(transformer_options.get("patches", {}))
                for name, plist in patches.items():
                    merged[name] = merged.get(name, []) + plist
                transformer_options["patches"] = merged
            transformer_options["cond_or_uncond"] = cond_or_uncond[:]
            transformer_options["uuids"] = uuids[:]
            transformer_options["sigmas"] = timestep
            c["transformer_options"] = transformer_options
            if control is not None:
                c["control"] = control.get_control(input_x, timestep_, c, chunks, transformer_options)

            if "model_function_wrapper" in model_options:
                output = model_options["model_function_wrapper"](
                    model.apply_model, {"input": input_x, "timestep": timestep_, "c": c,
                                        "cond_or_uncond": cond_or_uncond}).chunk(chunks)
            else:
                output = model.apply_model(input_x, timestep_, **c).chunk(chunks)

            for o in range(chunks):
                idx, a = cond_or_uncond[o], area[o]
                if a is None:
                    out_conds[idx] += output[o] * mult[o]
                    out_counts[idx] += mult[o]
                else:
                    out_c, out_cts = out_conds[idx], out_counts[idx]
                    dims = len(a) // 2
                    for d in range(dims):
                        out_c = out_c.narrow(d + 2, a[d + dims], a[d])
                        out_cts = out_cts.narrow(d + 2, a[d + dims], a[d])
                    out_c += output[o] * mult[o]
                    out_cts += mult[o]
    for i in range(len(out_conds)):
        out_conds[i] /= out_counts[i]
    return out_conds


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    return tuple(_replaceable("calc_cond_batch", calc_cond_batch)(model, [cond, uncond], x_in, timestep, model_options))


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options=None, cond=None, uncond=None):
    """Classifier-free guidance (Ho & Salimans 2022) D = uncond + cfg * (cond - uncond), or the
    MODEL's cfg function (which works on noise predictions x - D), then its post-cfg functions."""
    model_options = model_options or {}
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options, "input_cond": cond, "input_uncond": uncond}
        result = x - model_options["sampler_cfg_function"](args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        result = fn({"denoised": result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                     "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                     "model_options": model_options, "input": x})
    return result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options=None, seed=None):
    """The guided denoiser every sampler calls (through CFGGuider.predict_noise)."""
    model_options = model_options or {}
    uncond_ = None if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False) \
        else uncond
    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        out = model_options["sampler_calc_cond_batch_function"](
            {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options})
    else:
        out = _replaceable("calc_cond_batch", calc_cond_batch)(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                  "sigma": timestep, "model": model, "model_options": model_options})
    return _replaceable("cfg_function", cfg_function)(model, out[0], out[1], cond_scale, x, timestep,
                                                      model_options=model_options, cond=cond, uncond=uncond_)


class KSamplerX0Inpaint:
    """The denoiser samplers see: for a noise-masked latent, the unmasked region of the input is
    the original latent noised to the current sigma and the output there is the original latent
    (mask 1 = generate). `denoise_mask_function` (DifferentialDiffusion) may reshape the mask."""

    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas
        self.latent_image = None
        self.noise = None

    @property
    def model_sampling(self):
        return self.inner_model.inner_model.model_sampling

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        model_options = model_options or {}
        if denoise_mask is not None:
            if "denoise_mask_function" in model_options:
                denoise_mask = model_options["denoise_mask_function"](
                    sigma, denoise_mask, extra_options={"model": self.inner_model, "sigmas": self.sigmas})
            latent_mask = 1.0 - denoise_mask
            x = x * denoise_mask + self.inner_model.inner_model.scale_latent_inpaint(
                x=x, sigma=sigma, noise=self.noise, latent_image=self.latent_image) * latent_mask
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * latent_mask
        return out


# ---------------------------------------------------------------------------------------------
# samplers


class Sampler:
    def sample(self, *args, **kwargs):
        raise NotImplementedError

    def max_denoise(self, model_wrap, sigmas) -> bool:
        sigma_max = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max


class KSAMPLER(Sampler):
    """A k-diffusion style function `fn(model, x, sigmas, extra_args, callback, disable, **opts)`
    as a SAMPLER. inpaint_options {"random": True} re-noises the kept region with noise of
    seed + 1 instead of the initial noise (what ComfyUI's "ddim" does)."""

    def __init__(self, sampler_function, extra_options=None, inpaint_options=None):
        self.sampler_function = sampler_function
        self.extra_options = dict(extra_options or {})
        self.inpaint_options = dict(inpaint_options or {})

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        if self.inpaint_options.get("random", False):
            generator = torch.manual_seed(extra_args.get("seed", 41) + 1)
            model_k.noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
        else:
            model_k.noise = noise
        ms = model_wrap.inner_model.model_sampling
        noise = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        total = len(sigmas) - 1
        k_callback = None if callback is None else (lambda d: callback(d["i"], d["denoised"], d["x"], total))
        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        return ms.inverse_noise_scaling(sigmas[-1], samples)

    @property
    def name(self) -> str:
        return getattr(self.sampler_function, "__name__", "sampler").removeprefix("sample_")

    def __repr__(self) -> str:
        return f"KSAMPLER({self.name!r})"


def ksampler(sampler_name: str, extra_options=None, inpaint_options=None) -> KSAMPLER:
    """The KSAMPLER of a k-diffusion sampler name (not ddim / uni_pc: see sampler_object)."""
    if sampler_name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler_name!r}")
    return KSAMPLER(_samplers.sampler_function(sampler_name), extra_options, inpaint_options)


def sampler_object(name: str) -> KSAMPLER:
    """KSamplerSelect: the sampler object for a name (ddim gets its inpainting-noise rule)."""
    if name == "ddim":
        return _replaceable("ksampler", ksampler)("euler", inpaint_options={"random": True})
    return _replaceable("ksampler", ksampler)(name)


# ---------------------------------------------------------------------------------------------
# the guider


def get_models_from_cond(cond, model_type: str) -> list:
    models = []
    for c in cond:
        if model_type in c:
            models += c[model_type] if isinstance(c[model_type], list) else [c[model_type]]
    return models


def get_additional_models(conds: dict, dtype):
    """ControlNets' and other conditioning models' patchers, and the working memory they need."""
    cnets, gligen, extra = [], [], []
    for k in conds:
        cnets += get_models_from_cond(conds[k], "control")
        gligen += get_models_from_cond(conds[k], "gligen")
        extra += get_models_from_cond(conds[k], "additional_models")
    memory, models = 0, []
    for m in set(cnets):
        models += m.get_models() if hasattr(m, "get_models") else []
        memory += m.inference_memory_requirements(dtype) if hasattr(m, "inference_memory_requirements") else 0
    return models + [x[1] for x in gligen] + extra, memory


def estimate_memory(model, noise_shape, conds):
    cond_shapes = collections.defaultdict(list)
    memory = model.model.memory_required([noise_shape[0] * 2] + list(noise_shape[1:]), cond_shapes=cond_shapes)
    minimum = model.model.memory_required([noise_shape[0]] + list(noise_shape[1:]), cond_shapes=cond_shapes)
    return memory, minimum


def prepare_sampling(model, noise_shape, conds, model_options=None):
    """Load the MODEL (and the models its conditioning needs) for sampling; returns
    (the DiffusionModel, conds, the other models)."""
    def _prepare(model, noise_shape, conds, model_options=None):
        models, inference_memory = get_additional_models(conds, model.model_dtype())
        models += get_additional_models_from_model_options(model_options)
        models += model.get_nested_additional_models()
        memory, minimum = estimate_memory(model, noise_shape, conds)
        use_models([model] + models, memory_required=memory + inference_memory,
                   minimum_memory_required=minimum + inference_memory)
        return model.model, conds, models

    run = pe.wrapped(_prepare, pe.WrappersMP.PREPARE_SAMPLING, model_options, is_model_options=True)
    return run(model, noise_shape, conds, model_options=model_options)


def cleanup_models(conds, models) -> None:
    for m in list(models) + list(set(c for k in conds for c in get_models_from_cond(conds[k], "control"))):
        if hasattr(m, "cleanup"):
            m.cleanup()


def _extra_hooks(control) -> list:
    """The hook groups a ControlNet chain brings (a plugin's control object may have none)."""
    get = getattr(control, "get_extra_hooks", None)
    return get() if get is not None else []


def get_hooks_from_cond(cond: list, full_hooks):
    """Add the hooks of the entries, and those their ControlNets bring, to `full_hooks`."""
    cnets = []
    for c in cond:
        if c.get("hooks") is not None:
            for hook in c["hooks"].hooks:
                full_hooks.add(hook)
        if c.get("control") is not None:
            cnets.append(c["control"])
    extra = HookGroup.combine_all_hooks([g for cnet in cnets for g in _extra_hooks(cnet)])
    for hook in (extra.hooks if extra is not None else []):
        full_hooks.add(hook)
    return full_hooks


def get_additional_models_from_model_options(model_options: dict | None) -> list:
    """Models that registered AdditionalModelsHooks ask to be loaded with the MODEL."""
    registered = (model_options or {}).get("registered_hooks")
    if registered is None:
        return []
    return [m for hook in registered.get_type(EnumHookType.AdditionalModels) for m in hook.models or []]


def prepare_model_patcher(model, conds, model_options: dict) -> dict:
    """Put the MODEL's wrappers and callbacks into this sampling's transformer_options and
    register the hooks the conditioning carries (weight hooks on the MODEL itself)."""
    hooks = HookGroup()
    for entries in conds.values():
        get_hooks_from_cond(entries, hooks)
    to = model_options.setdefault("transformer_options", {})
    pe.merge_nested_dicts(to.setdefault("wrappers", {}), model.wrappers, copy_dict1=False)
    pe.merge_nested_dicts(to.setdefault("callbacks", {}), model.callbacks, copy_dict1=False)
    registered = HookGroup()
    target = create_target_dict(EnumWeightTarget.Model)
    for kind in (EnumHookType.TransformerOptions, EnumHookType.AdditionalModels):
        for hook in hooks.get_type(kind):
            hook.add_hook_patches(model, model_options, target, registered)
    model.register_all_hook_patches(hooks, target, model_options, registered)
    if len(registered) > 0:
        model_options["registered_hooks"] = registered
    to_load = model_options.setdefault("to_load_options", {})
    for name in ("wrappers", "callbacks"):
        pe.merge_nested_dicts(to_load.setdefault(name, {}), to[name], copy_dict1=False)
    return to_load


def preprocess_conds_hooks(conds: dict) -> None:
    """Entries with a ControlNet that brings hooks get those hooks joined to their own (one
    combined group per ControlNet and group, so such entries still batch together)."""
    replacement: dict = {}
    for entries in conds.values():
        for c in entries:
            control = c.get("control")
            if control is not None and _extra_hooks(control):
                replacement.setdefault((control, c.get("hooks")), []).append(c)
    for (control, hooks), entries in replacement.items():
        combined = HookGroup.combine_all_hooks(_extra_hooks(control) + [hooks])
        if combined is not None:
            for c in entries:
                c["hooks"] = combined


def filter_registered_hooks_on_conds(conds: dict, model_options: dict) -> None:
    """Keep on each entry only the hooks that were registered for this sampling."""
    registered = model_options.get("registered_hooks")
    if registered is None:
        for entries in conds.values():
            for c in entries:
                c.pop("hooks", None)
        return
    replacement: dict = {}
    for entries in conds.values():
        for c in entries:
            hooks = c.get("hooks")
            if hooks is not None and not hooks.is_subset_of(registered):
                replacement.setdefault(hooks, []).append(c)
    for hooks, entries in replacement.items():
        kept = hooks.new_with_common_hooks(registered)
        for c in entries:
            c["hooks"] = kept if len(kept) > 0 else None


def get_total_hook_groups_in_conds(conds: dict) -> int:
    return len({id(c["hooks"]) if c.get("hooks") is not None else None for entries in conds.values() for c in entries})


def cast_to_load_options(model_options: dict, device=None, dtype=None) -> None:
    """Move wrapper and patch objects that can move (`.to`) with the model."""
    if not model_options or "to_load_options" not in model_options:
        return
    casts = [c for c in (device, dtype) if c is not None]
    for group in model_options["to_load_options"].values():
        for value in group.values():
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, item in list(items):
                if isinstance(item, list):
                    for i, obj in enumerate(item):
                        for cast in casts:
                            if hasattr(obj, "to"):
                                item[i] = obj = obj.to(cast)
                elif hasattr(item, "to"):
                    for cast in casts:
                        value[k] = item = item.to(cast)


class CFGGuider:
    """The GUIDER of the custom-sampling nodes and the core of KSampler: MODEL + conditioning + cfg.
    Samplers call it as the denoiser: guider(x, sigma, model_options=..., seed=...) -> x0."""

    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds: dict = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg):
        self.cfg = cfg

    def inner_set_conds(self, conds: dict):
        convert = comfy_function("comfy.sampler_helpers", "convert_cond", convert_cond)
        for k, v in conds.items():
            self.original_conds[k] = convert(v)

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options=None, seed=None):
        run = pe.wrapped(self.predict_noise, pe.WrappersMP.PREDICT_NOISE, self.model_options, is_model_options=True,
                         class_obj=self)
        return run(x, timestep, model_options if model_options is not None else {}, seed)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        return _replaceable("sampling_function", sampling_function)(
            self.inner_model, x, timestep, self.conds.get("negative"), self.conds.get("positive"), self.cfg,
            model_options=model_options if model_options is not None else {}, seed=seed)

    @property
    def model_sampling(self):
        return self.inner_model.model_sampling

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            # An empty latent stays exactly zero: formats with a shift would otherwise move it.
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed)
        extra_model_options = create_model_options_clone(self.model_options)
        extra_model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": extra_model_options, "seed": seed}
        run = pe.wrapped(sampler.sample, pe.WrappersMP.SAMPLER_SAMPLE, extra_model_options, is_model_options=True,
                         class_obj=sampler)
        samples = run(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None):
        prepare = comfy_function("comfy.sampler_helpers", "prepare_sampling", prepare_sampling)
        self.inner_model, self.conds, self.loaded_models = prepare(self.model_patcher, noise.shape, self.conds,
                                                                   self.model_options)
        device = self.model_patcher.load_device
        if denoise_mask is not None:
            denoise_mask = prepare_mask(denoise_mask, noise.shape, device)
        noise = noise.to(device=device, dtype=torch.float32)
        latent_image = latent_image.to(device=device, dtype=torch.float32)
        sigmas = sigmas.to(device)
        cast_to_load_options(self.model_options, device=device, dtype=self.model_patcher.model_dtype())
        try:
            self.model_patcher.pre_run()
            output = self.inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                       disable_pbar, seed)
        finally:
            self.model_patcher.cleanup()
        cleanup_models(self.conds, self.loaded_models)
        del self.inner_model
        del self.loaded_models
        release_freed_memory(device)
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: [dict(a) for a in v] for k, v in self.original_conds.items()}
        preprocess_conds_hooks(self.conds)
        original_options = self.model_options
        original_hook_mode = self.model_patcher.hook_mode
        try:
            self.model_options = create_model_options_clone(self.model_options)
            if get_total_hook_groups_in_conds(self.conds) <= 1:
                # one group's weights never change between steps: nothing to cache
                self.model_patcher.hook_mode = EnumHookMode.MinVram
            comfy_function("comfy.sampler_helpers", "prepare_model_patcher", prepare_model_patcher)(
                self.model_patcher, self.conds, self.model_options)
            filter_registered_hooks_on_conds(self.conds, self.model_options)
            run = pe.wrapped(self.outer_sample, pe.WrappersMP.OUTER_SAMPLE, self.model_options,
                             is_model_options=True, class_obj=self)
            output = run(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            cast_to_load_options(self.model_options, device=self.model_patcher.offload_device)
            self.model_options = original_options
            self.model_patcher.hook_mode = original_hook_mode
            self.model_patcher.restore_hook_patches()
        del self.conds
        return output


def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, model_options=None, latent_image=None,
           denoise_mask=None, callback=None, disable_pbar=False, seed=None):
    """ComfyUI's comfy.samplers.sample: a CFGGuider over MODEL run with `sampler` over `sigmas`."""
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


# ---------------------------------------------------------------------------------------------
# sigmas


def calculate_sigmas(model_sampling, scheduler_name: str, steps: int) -> torch.Tensor:
    return _schedules.calculate_sigmas(model_sampling, scheduler_name, steps)


def _ms(model):
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return getattr(model, "model_sampling", model)


class KSampler:
    """ComfyUI's comfy.samplers.KSampler: sigmas for a scheduler, steps and denoise, then `sample`."""

    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = set(_samplers.DISCARD_PENULTIMATE_SIGMA_SAMPLERS)

    def __init__(self, model, steps, device, sampler=None, scheduler=None, denoise=None, model_options=None):
        self.model = model
        self.device = device
        self.scheduler = scheduler if scheduler in self.SCHEDULERS else self.SCHEDULERS[0]
        self.sampler = sampler if sampler in self.SAMPLERS else self.SAMPLERS[0]
        self.set_steps(steps, denoise)
        self.denoise = denoise
        self.model_options = model_options if model_options is not None else {}

    def calculate_sigmas(self, steps: int) -> torch.Tensor:
        discard = self.sampler in self.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = _replaceable("calculate_sigmas", calculate_sigmas)(_ms(self.model), self.scheduler,
                                                                    steps + 1 if discard else steps)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    def set_steps(self, steps: int, denoise=None):
        """`steps` steps; with denoise < 1, the last steps + 1 sigmas of int(steps / denoise) steps."""
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            self.sigmas = self.calculate_sigmas(steps).to(self.device)
        elif denoise <= 0.0:
            self.sigmas = torch.FloatTensor([])
        else:
            self.sigmas = self.calculate_sigmas(int(steps / denoise)).to(self.device)[-(steps + 1):]

    def sample(self, noise, positive, negative, cfg, latent_image=None, start_step=None, last_step=None,
               force_full_denoise=False, denoise_mask=None, sigmas=None, callback=None, disable_pbar=False, seed=None):
        """KSamplerAdvanced's step window: ending early keeps the leftover noise unless
        force_full_denoise; a start past the end returns the latent unchanged."""
        sigmas = self.sigmas if sigmas is None else sigmas
        if last_step is not None and last_step < len(sigmas) - 1:
            sigmas = sigmas[:last_step + 1]
            if force_full_denoise:
                sigmas[-1] = 0
        if start_step is not None:
            if start_step < len(sigmas) - 1:
                sigmas = sigmas[start_step:]
            else:
                return latent_image if latent_image is not None else torch.zeros_like(noise)
        sampler = _replaceable("sampler_object", sampler_object)(self.sampler)
        return _replaceable("sample", sample)(self.model, noise, positive, negative, cfg, self.device, sampler, sigmas,
                                              self.model_options, latent_image=latent_image,
                                              denoise_mask=denoise_mask, callback=callback,
                                              disable_pbar=disable_pbar, seed=seed)


# ---------------------------------------------------------------------------------------------
# comfy.sample and the nodes' bodies


def fix_empty_latent_channels(model, latent_image: torch.Tensor) -> torch.Tensor:
    """An empty latent made for another family gets this model's channel count."""
    latent_format = model.get_model_object("latent_format") if hasattr(model, "get_model_object") \
        else model.latent_format
    if latent_format.latent_channels != latent_image.shape[1] and torch.count_nonzero(latent_image) == 0:
        latent_image = repeat_to_batch_size(latent_image, latent_format.latent_channels, dim=1)
    if getattr(latent_format, "latent_dimensions", 2) == 3 and latent_image.ndim == 4:
        latent_image = latent_image.unsqueeze(2)
    return latent_image


def sample_latent(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
                  disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
                  sigmas=None, callback=None, disable_pbar=False, seed=None) -> torch.Tensor:
    """ComfyUI's comfy.sample.sample: KSampler over MODEL; the result on the CPU."""
    sampler = _replaceable("KSampler", KSampler)(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                                 scheduler=scheduler, denoise=denoise,
                                                 model_options=model.model_options)
    samples = sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, start_step=start_step,
                             last_step=last_step, force_full_denoise=force_full_denoise, denoise_mask=noise_mask,
                             sigmas=sigmas, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to(torch.device("cpu"))


def sample_custom_latent(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                         callback=None, disable_pbar=False, seed=None) -> torch.Tensor:
    """ComfyUI's comfy.sample.sample_custom."""
    samples = _replaceable("sample", sample)(model, noise, positive, negative, cfg, model.load_device, sampler, sigmas,
                                             model_options=model.model_options, latent_image=latent_image,
                                             denoise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar,
                                             seed=seed)
    return samples.to(torch.device("cpu"))


def _comfy_sample(name: str, ours):
    return comfy_function("comfy.sample", name, ours)


def common_ksampler(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive,
                    negative, latent: dict, denoise: float = 1.0, disable_noise: bool = False, start_step=None,
                    last_step=None, force_full_denoise: bool = False, callback=None) -> dict:
    """KSampler / KSamplerAdvanced (ComfyUI's nodes.common_ksampler, returning the latent dict rather
    than a 1-tuple), through comfy.sample's functions so a plugin that replaces one changes these
    nodes too. `callback(step, total, x0)` per finished step."""
    latent_image = _comfy_sample("fix_empty_latent_channels", fix_empty_latent_channels)(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        noise = _comfy_sample("prepare_noise", prepare_noise)(latent_image, seed, latent.get("batch_index"))
    samples = _comfy_sample("sample", sample_latent)(
        model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=denoise,
        disable_noise=disable_noise, start_step=start_step, last_step=last_step,
        force_full_denoise=force_full_denoise, noise_mask=latent.get("noise_mask"),
        callback=_progress(callback, steps), disable_pbar=True, seed=seed)
    out = dict(latent)
    out.pop("downscale_ratio_spacial", None)
    out["samples"] = samples
    return out


def _progress(callback, total):
    """Adapts the per-step (i, x0, x, n) hook to `callback(step, total, x0)`; `step` counts finished
    steps from 1. The callback may raise to interrupt sampling."""
    if callback is None:
        return None
    return lambda i, x0, x, n: callback(i + 1, total, x0)


def sample_custom(model, noise, cfg: float, sampler, sigmas, positive, negative, latent: dict,
                  seed: int | None = None, callback=None):
    """SamplerCustom with a CFG guider. `noise` is a NOISE object (RandomNoise / DisableNoise) or a
    tensor (then `seed` seeds the per-step noise). Returns (output latent, denoised output: the
    last x0 estimate)."""
    latent_image = _comfy_sample("fix_empty_latent_channels", fix_empty_latent_channels)(model, latent["samples"])
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

    samples = _comfy_sample("sample_custom", sample_custom_latent)(
        model, noise_tensor, cfg, sampler, sigmas, positive, negative, latent_image,
        noise_mask=latent.get("noise_mask"), callback=hook, disable_pbar=True, seed=seed)
    out = dict(latent)
    out["samples"] = samples
    out_denoised = out
    if "x0" in x0_box:
        out_denoised = dict(latent)
        out_denoised["samples"] = model.model.process_latent_out(x0_box["x0"].cpu())
    return out, out_denoised


# ---------------------------------------------------------------------------------------------
# custom-sampling building blocks


def ksampler_select(name: str, **options) -> KSAMPLER:
    """KSamplerSelect: the sampler object for a name."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}")
    if options:
        return ksampler("euler" if name == "ddim" else name, options,
                        {"random": True} if name == "ddim" else None)
    return _replaceable("sampler_object", sampler_object)(name)


def ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float | None = 1.0):
    """KSampler's schedule (see KSampler.set_steps), on the CPU."""
    return KSampler(model, steps, "cpu", sampler_name, scheduler, denoise).sigmas


def slice_sigmas(sigmas: torch.Tensor, start_step=None, last_step=None, force_full_denoise=False):
    """KSamplerAdvanced's step window; None when start_step leaves nothing to do."""
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
    """SplitSigmasDenoise node: the last round(steps * denoise) steps go to the second half."""
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


__all__ = [
    "CFGGuider", "DisableNoise", "KSAMPLER", "KSampler", "KSamplerX0Inpaint", "RandomNoise", "SAMPLER_NAMES",
    "SCHEDULER_NAMES", "Sampler", "basic_scheduler", "calc_cond_batch", "calculate_sigmas", "cfg_function",
    "common_ksampler", "convert_cond", "exponential_scheduler", "fix_empty_latent_channels", "flip_sigmas",
    "karras_scheduler", "ksampler", "ksampler_select", "ksampler_sigmas", "prepare_mask", "prepare_sampling",
    "process_conds",
    "sample", "sample_custom", "sample_custom_latent", "sample_latent", "sampler_object", "sampling_function",
    "sd_turbo_scheduler", "slice_sigmas", "split_sigmas", "split_sigmas_denoise",
]
