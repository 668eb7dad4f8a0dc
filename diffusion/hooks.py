"""Hooks: changes to the model that only some conditioning entries see (ComfyUI's comfy.hooks).

A HOOKS value is a `HookGroup` of `Hook`s. Attached to conditioning entries (their "hooks" key),
a group makes the sampler run those entries with the group applied: `calc_cond_batch` batches
entries by hook group, and before each group's model call the MODEL's ModelPatcher puts that
group's weights in place (`ModelPatcher.apply_hooks`), so a LoRA given as a hook changes the
prediction of the hooked prompt only. The weights are computed once per group and strength and
cached while sampling switches between groups; the originals come back when sampling ends.

* `WeightHook` carries a LoRA file's tensors (registered on the MODEL with the UNet's key map,
  on a CLIP with the text encoder's) or a whole model's weights ("model_as_lora": the hook adds
  strength * (its weight - the model's own)).
* `HookKeyframeGroup` schedules a hook's strength over sampling: each `HookKeyframe` multiplies
  the hook's strength from its start_percent on (at least `guarantee_steps` steps once reached).
* `TransformerOptionsHook` / `AdditionalModelsHook` are the plugin-facing kinds: transformer
  options (patches, wrappers) for hooked entries, or extra models to load with the MODEL.

The helpers at the end (`set_conds_props`, `set_default_conds_and_combine`, ...) are the bodies
of the hooks conditioning nodes; they copy entries rather than editing them.
"""
from __future__ import annotations

import enum
import itertools
import logging
import math
from typing import ClassVar

import torch

from . import patcher_extension as pe

log = logging.getLogger(__name__)


class EnumHookMode(enum.Enum):
    """MinVram: weights are recomputed whenever the hook group changes; MaxSpeed: each group's
    weights are kept while sampling switches between groups."""
    MinVram = "minvram"
    MaxSpeed = "maxspeed"


class EnumHookType(enum.Enum):
    Weight = "weight"
    ObjectPatch = "object_patch"
    AdditionalModels = "add_models"
    TransformerOptions = "transformer_options"
    Injections = "add_injections"


class EnumWeightTarget(enum.Enum):
    Model = "model"
    Clip = "clip"


class EnumHookScope(enum.Enum):
    """AllConditioning: the hook affects every entry of the sampling; HookedOnly: only its own."""
    AllConditioning = "all_conditioning"
    HookedOnly = "hooked_only"


class _HookRef:
    """Identity shared by a hook and its clones: patches registered for a hook are found by it."""


def default_should_register(hook, model, model_options: dict, target_dict: dict, registered) -> bool:
    return True


def create_target_dict(target: EnumWeightTarget | None = None, **kwargs) -> dict:
    d = {} if target is None else {"target": target}
    d.update(kwargs)
    return d


# ---------------------------------------------------------------------------------------------
# keyframes


class HookKeyframe:
    """From `start_percent` of sampling on, the hook's strength is multiplied by `strength`."""

    def __init__(self, strength: float, start_percent: float = 0.0, guarantee_steps: int = 1):
        self.strength = strength
        self.start_percent = float(start_percent)
        self.start_t = 999999999.9  # sigma of start_percent, set when sampling starts
        self.guarantee_steps = guarantee_steps

    def get_effective_guarantee_steps(self, max_sigma) -> int:
        """A keyframe that starts before this sampling's first sigma guarantees nothing."""
        return 0 if self.start_t > max_sigma else self.guarantee_steps

    def clone(self) -> HookKeyframe:
        c = HookKeyframe(self.strength, self.start_percent, self.guarantee_steps)
        c.start_t = self.start_t
        return c


def get_sorted_list_via_attr(objects: list, attr: str) -> list:
    """Stable sort by an attribute (equal values keep their order)."""
    return sorted(objects, key=lambda o: getattr(o, attr)) if objects else objects


class HookKeyframeGroup:
    """A hook's strength schedule: keyframes sorted by start_percent, and the one in force."""

    def __init__(self):
        self.keyframes: list[HookKeyframe] = []
        self._current_keyframe: HookKeyframe | None = None
        self._current_used_steps = 0
        self._current_index = 0
        self._current_strength = None
        self._curr_t = -1.0

    @property
    def strength(self) -> float:
        return self._current_keyframe.strength if self._current_keyframe is not None else 1.0

    def reset(self) -> None:
        self._current_keyframe = None
        self._current_used_steps = 0
        self._current_index = 0
        self._current_strength = None
        # ComfyUI resets a misspelt `curr_t` here, so the last sigma seen survives a reset; kept,
        # since a schedule whose first sigma equals the previous run's last one must step alike.
        self.curr_t = -1.0
        self._set_first_as_current()

    def add(self, keyframe: HookKeyframe) -> None:
        self.keyframes = get_sorted_list_via_attr(self.keyframes + [keyframe], "start_percent")
        self._set_first_as_current()

    def _set_first_as_current(self) -> None:
        self._current_keyframe = self.keyframes[0] if self.keyframes else None

    def has_guarantee_steps(self) -> bool:
        return any(kf.guarantee_steps > 0 for kf in self.keyframes)

    def has_index(self, index: int) -> bool:
        return 0 <= index < len(self.keyframes)

    def is_empty(self) -> bool:
        return not self.keyframes

    def clone(self) -> HookKeyframeGroup:
        c = HookKeyframeGroup()
        c.keyframes = [kf.clone() for kf in self.keyframes]
        c._set_first_as_current()
        return c

    def initialize_timesteps(self, model) -> None:
        for kf in self.keyframes:
            kf.start_t = model.model_sampling.percent_to_sigma(kf.start_percent)

    def prepare_current_keyframe(self, curr_t, transformer_options: dict) -> bool:
        """Advance to the keyframe in force at sigma `curr_t` (once per sigma); True when the
        strength changed, so weights computed for the old one are stale."""
        if self.is_empty() or curr_t == self._curr_t:
            return False
        max_sigma = torch.max(transformer_options["sample_sigmas"])
        prev_index, prev_strength = self._current_index, self._current_strength
        if self._current_used_steps >= self._current_keyframe.get_effective_guarantee_steps(max_sigma):
            # sigmas fall as sampling goes, so a keyframe has started once its sigma is >= curr_t
            for i in range(self._current_index + 1, len(self.keyframes)):
                candidate = self.keyframes[i]
                if candidate.start_t < curr_t:
                    break
                self._current_index, self._current_strength = i, candidate.strength
                self._current_keyframe, self._current_used_steps = candidate, 0
                if candidate.get_effective_guarantee_steps(max_sigma) > 0:
                    break
        self._current_used_steps += 1
        self._curr_t = curr_t
        return prev_index != self._current_index and prev_strength != self._current_strength


class InterpolationMethod:
    LINEAR = "linear"
    EASE_IN = "ease_in"
    EASE_OUT = "ease_out"
    EASE_IN_OUT = "ease_in_out"

    _LIST: ClassVar[list[str]] = [LINEAR, EASE_IN, EASE_OUT, EASE_IN_OUT]

    @classmethod
    def get_weights(cls, num_from: float, num_to: float, length: int, method: str, reverse=False) -> torch.Tensor:
        """`length` values from num_from to num_to (float32, as ComfyUI computes them)."""
        diff = num_to - num_from
        t = torch.linspace(0, 1, length)
        if method == cls.LINEAR:
            weights = torch.linspace(num_from, num_to, length)
        elif method == cls.EASE_IN:
            weights = diff * t.pow(2) + num_from
        elif method == cls.EASE_OUT:
            weights = diff * (1 - (1 - t).pow(2)) + num_from
        elif method == cls.EASE_IN_OUT:
            weights = diff * ((1 - torch.cos(t * math.pi)) / 2) + num_from
        else:
            raise ValueError(f"Unrecognized interpolation method '{method}'.")
        return weights.flip(dims=(0,)) if reverse else weights


# ---------------------------------------------------------------------------------------------
# hooks


class Hook:
    def __init__(self, hook_type: EnumHookType | None = None, hook_ref: _HookRef | None = None,
                 hook_id: str | None = None, hook_keyframe: HookKeyframeGroup | None = None,
                 hook_scope=EnumHookScope.AllConditioning):
        self.hook_type = hook_type
        self.hook_ref = hook_ref if hook_ref else _HookRef()
        self.hook_id = hook_id
        self.hook_keyframe = hook_keyframe if hook_keyframe else HookKeyframeGroup()
        self.hook_scope = hook_scope
        self.custom_should_register = default_should_register

    @property
    def strength(self) -> float:
        return self.hook_keyframe.strength

    def initialize_timesteps(self, model) -> None:
        self.reset()
        self.hook_keyframe.initialize_timesteps(model)

    def reset(self) -> None:
        self.hook_keyframe.reset()

    def clone(self):
        c = self.__class__()
        c.hook_type, c.hook_ref, c.hook_id = self.hook_type, self.hook_ref, self.hook_id
        c.hook_keyframe, c.hook_scope = self.hook_keyframe, self.hook_scope
        c.custom_should_register = self.custom_should_register
        return c

    def should_register(self, model, model_options: dict, target_dict: dict, registered) -> bool:
        return self.custom_should_register(self, model, model_options, target_dict, registered)

    def add_hook_patches(self, model, model_options: dict, target_dict: dict, registered) -> bool:
        raise NotImplementedError(f"{type(self).__name__} does not define add_hook_patches")

    def __eq__(self, other) -> bool:
        return self.__class__ == other.__class__ and self.hook_ref == other.hook_ref

    def __hash__(self) -> int:
        return hash(self.hook_ref)


class WeightHook(Hook):
    """Weight patches for the entries it is attached to (its scope is always HookedOnly).
    `weights` is a LoRA state dict (need_weight_init: mapped to the target's keys when
    registered) or ready patches; `weights_clip` the text encoder's ready patches."""

    def __init__(self, strength_model: float = 1.0, strength_clip: float = 1.0):
        super().__init__(hook_type=EnumHookType.Weight, hook_scope=EnumHookScope.HookedOnly)
        self.weights: dict | None = None
        self.weights_clip: dict | None = None
        self.need_weight_init = True
        self._strength_model = strength_model
        self._strength_clip = strength_clip

    @property
    def strength_model(self) -> float:
        return self._strength_model * self.strength

    @property
    def strength_clip(self) -> float:
        return self._strength_clip * self.strength

    def add_hook_patches(self, model, model_options: dict, target_dict: dict, registered) -> bool:
        if not self.should_register(model, model_options, target_dict, registered):
            return False
        clip = target_dict.get("target") == EnumWeightTarget.Clip
        if self.need_weight_init:
            from .lora import load_lora, model_lora_keys_clip, model_lora_keys_unet
            key_map = (model_lora_keys_clip if clip else model_lora_keys_unet)(model.model, {})
            weights = load_lora(self.weights, key_map, log_missing=False)
        else:
            weights = self.weights_clip if clip else self.weights
        model.add_hook_patches(hook=self, patches=weights or {},
                               strength_patch=self._strength_clip if clip else self._strength_model)
        registered.add(self)
        return True

    def clone(self):
        c = super().clone()
        c.weights, c.weights_clip, c.need_weight_init = self.weights, self.weights_clip, self.need_weight_init
        c._strength_model, c._strength_clip = self._strength_model, self._strength_clip
        return c


class ObjectPatchHook(Hook):
    def __init__(self, object_patches: dict | None = None, hook_scope=EnumHookScope.AllConditioning):
        super().__init__(hook_type=EnumHookType.ObjectPatch)
        self.object_patches = object_patches
        self.hook_scope = hook_scope

    def clone(self):
        c = super().clone()
        c.object_patches = self.object_patches
        return c

    def add_hook_patches(self, model, model_options, target_dict, registered):
        raise NotImplementedError("ObjectPatchHook is not supported (nor is it in ComfyUI).")


class AdditionalModelsHook(Hook):
    """Models to load along with the MODEL while sampling (scope: all conditioning)."""

    def __init__(self, models: list | None = None, key: str | None = None):
        super().__init__(hook_type=EnumHookType.AdditionalModels)
        self.models = models
        self.key = key

    def clone(self):
        c = super().clone()
        c.models = list(self.models) if self.models else self.models
        c.key = self.key
        return c

    def add_hook_patches(self, model, model_options, target_dict, registered) -> bool:
        if not self.should_register(model, model_options, target_dict, registered):
            return False
        registered.add(self)
        return True


class TransformerOptionsHook(Hook):
    """Transformer options (patches, wrappers, callbacks) for the hooked entries, or, with scope
    AllConditioning, for the whole sampling."""

    def __init__(self, transformers_dict: dict | None = None, hook_scope=EnumHookScope.AllConditioning):
        super().__init__(hook_type=EnumHookType.TransformerOptions)
        self.transformers_dict = transformers_dict
        self.hook_scope = hook_scope
        self._skip_adding = False  # already in the sampling's own options (AllConditioning)

    def clone(self):
        c = super().clone()
        c.transformers_dict, c._skip_adding = self.transformers_dict, self._skip_adding
        return c

    def add_hook_patches(self, model, model_options: dict, target_dict: dict, registered) -> bool:
        if not self.should_register(model, model_options, target_dict, registered):
            return False
        self._skip_adding = self.hook_scope == EnumHookScope.AllConditioning
        add = {"to_load_options": self.transformers_dict}
        if self._skip_adding:
            add["transformer_options"] = self.transformers_dict
        registered.add(self)
        pe.merge_nested_dicts(model_options, add, copy_dict1=False)
        return True

    def on_apply_hooks(self, model, transformer_options: dict) -> None:
        if not self._skip_adding:
            pe.merge_nested_dicts(transformer_options, self.transformers_dict, copy_dict1=False)


WrapperHook = TransformerOptionsHook


class InjectionsHook(Hook):
    def __init__(self, key: str | None = None, injections: list | None = None,
                 hook_scope=EnumHookScope.AllConditioning):
        super().__init__(hook_type=EnumHookType.Injections)
        self.key = key
        self.injections = injections
        self.hook_scope = hook_scope

    def clone(self):
        c = super().clone()
        c.key = self.key
        c.injections = list(self.injections) if self.injections else self.injections
        return c

    def add_hook_patches(self, model, model_options, target_dict, registered):
        raise NotImplementedError("InjectionsHook is not supported (nor is it in ComfyUI).")


class HookGroup:
    """An ordered set of hooks (equal hooks, i.e. clones, are kept once). Groups are compared by
    identity: entries sharing one group object are batched together when sampling."""

    def __init__(self):
        self.hooks: list[Hook] = []
        self._hook_dict: dict[EnumHookType, list[Hook]] = {}

    def __len__(self) -> int:
        return len(self.hooks)

    def add(self, hook: Hook) -> None:
        if hook not in self.hooks:
            self.hooks.append(hook)
            self._hook_dict.setdefault(hook.hook_type, []).append(hook)

    def remove(self, hook: Hook) -> None:
        if hook in self.hooks:
            self.hooks.remove(hook)
            self._hook_dict[hook.hook_type].remove(hook)

    def get_type(self, hook_type: EnumHookType) -> list:
        return self._hook_dict.get(hook_type, [])

    def contains(self, hook: Hook) -> bool:
        return hook in self.hooks

    def is_subset_of(self, other: HookGroup) -> bool:
        return set(self.hooks).issubset(set(other.hooks))

    def new_with_common_hooks(self, other: HookGroup) -> HookGroup:
        c = HookGroup()
        for hook in self.hooks:
            if other.contains(hook):
                c.add(hook.clone())
        return c

    def clone(self) -> HookGroup:
        c = HookGroup()
        for hook in self.hooks:
            c.add(hook.clone())
        return c

    def clone_and_combine(self, other: HookGroup | None) -> HookGroup:
        c = self.clone()
        for hook in (other.hooks if other is not None else []):
            c.add(hook.clone())
        return c

    def set_keyframes_on_hooks(self, hook_kf: HookKeyframeGroup | None) -> None:
        hook_kf = HookKeyframeGroup() if hook_kf is None else hook_kf.clone()
        for hook in self.hooks:
            hook.hook_keyframe = hook_kf

    def get_hooks_for_clip_schedule(self) -> list:
        """[((start, end) percent range, [(weight hook, its keyframe in force or None)])] over 0..1,
        split wherever some hook's strength changes: the text encoder runs once per range."""
        schedules: dict[WeightHook, list] = {}
        for hook in self.get_type(EnumHookType.Weight):
            kfs = hook.hook_keyframe.keyframes
            if not kfs:
                schedules[hook] = [((0.0, 1.0), None)]
                continue
            ranges, prev = [], kfs[0]
            for kf in kfs:
                if kf.start_percent > prev.start_percent and not math.isclose(kf.strength, prev.strength):
                    ranges.append(((prev.start_percent, kf.start_percent), prev))
                    prev = kf
                elif kf.start_percent == prev.start_percent:
                    prev = kf
            if not math.isclose(prev.start_percent, 1.0):
                ranges.append(((prev.start_percent, 1.0), prev))
            schedules[hook] = ranges
        bounds = sorted({0.0} | {p for ranges in schedules.values() for r, _ in ranges for p in r})
        out = []
        for start, end in itertools.pairwise(bounds):
            in_force = []
            for hook, ranges in schedules.items():
                kf = next((k for (a, b), k in ranges if a < end and b > start), None)
                in_force.append((hook, kf))
            out.append(((start, end), in_force))
        return out

    def reset(self) -> None:
        for hook in self.hooks:
            hook.reset()

    @staticmethod
    def combine_all_hooks(hooks_list: list, require_count: int = 0) -> HookGroup | None:
        actual = [g for g in hooks_list if g is not None]
        if len(actual) < require_count:
            raise ValueError(f"Need at least {require_count} hooks to combine, but only had {len(actual)}.")
        if not actual:
            return None
        if len(actual) == 1:
            return actual[0]
        combined = actual[0].clone()
        for group in actual[1:]:
            combined = combined.clone_and_combine(group)
        return combined


# ---------------------------------------------------------------------------------------------
# making hooks


def create_transformer_options_from_hooks(model, hooks: HookGroup | None, transformer_options: dict | None = None
                                          ) -> dict:
    if hooks is None or model.is_clip:
        return {}
    transformer_options = {} if transformer_options is None else transformer_options
    for hook in hooks.get_type(EnumHookType.TransformerOptions):
        hook.on_apply_hooks(model, transformer_options)
    return transformer_options


def create_hook_lora(lora: dict, strength_model: float, strength_clip: float) -> HookGroup:
    group, hook = HookGroup(), WeightHook(strength_model=strength_model, strength_clip=strength_clip)
    hook.weights = lora
    group.add(hook)
    return group


def create_hook_model_as_lora(weights_model: dict | None, weights_clip: dict | None, strength_model: float,
                              strength_clip: float) -> HookGroup:
    group, hook = HookGroup(), WeightHook(strength_model=strength_model, strength_clip=strength_clip)

    def as_patches(weights):
        return None if weights is None else {k: ("model_as_lora", (v,)) for k, v in weights.items()}

    hook.weights, hook.weights_clip = as_patches(weights_model), as_patches(weights_clip)
    hook.need_weight_init = False
    group.add(hook)
    return group


def get_patch_weights_from_model(model, discard_model_sampling: bool = True) -> dict | None:
    """A patcher's network weights by state-dict key as its file has them (the noise schedule's
    buffers left out). The network may be shared with a loaded patcher whose LoRA or hook weights
    are on it right now: those keys come from the kept originals (ComfyUI reads a fresh copy)."""
    if model is None:
        return None
    return {k: entry[0][0] for k, entry in model.get_key_patches().items()
            if not (discard_model_sampling and k.startswith("model_sampling"))}


def load_hook_lora_for_models(model, clip, lora: dict, strength_model: float, strength_clip: float):
    """(MODEL clone, CLIP clone, HookGroup) with the LoRA registered as one hook on both."""
    from .lora import load_lora, model_lora_keys_clip, model_lora_keys_unet
    key_map: dict = {}
    if model is not None:
        model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        model_lora_keys_clip(clip.cond_stage_model, key_map)
    group, hook = HookGroup(), WeightHook()
    group.add(hook)
    loaded = load_lora(lora, key_map)
    new_model = new_clip = None
    taken: set = set()
    if model is not None:
        new_model = model.clone()
        taken |= set(new_model.add_hook_patches(hook=hook, patches=loaded, strength_patch=strength_model))
    if clip is not None:
        new_clip = clip.clone()
        taken |= set(new_clip.patcher.add_hook_patches(hook=hook, patches=loaded, strength_patch=strength_clip))
    for key in loaded:
        if key not in taken:
            log.warning("NOT LOADED %s", key)
    return new_model, new_clip, group


# ---------------------------------------------------------------------------------------------
# conditioning


def _set_values(conditioning: list, values: dict) -> list:
    return [[t, {**extras, **values}] for t, extras in conditioning]


def _combine_hooks_from_values(extras: dict, values: dict, cache: dict) -> None:
    """extras["hooks"] joined with values["hooks"], one combined group per pair of groups."""
    if "hooks" not in values:
        return
    if "hooks" not in extras:
        if values["hooks"] is not None:
            extras["hooks"] = values["hooks"]
        return
    pair = (extras["hooks"], values["hooks"])
    if pair not in cache:
        cache[pair] = pair[0].clone_and_combine(pair[1])
    extras["hooks"] = cache[pair]


def conditioning_set_values_with_hooks(conditioning: list, values: dict | None = None, append_hooks: bool = True,
                                       cache: dict | None = None) -> list:
    values = values or {}
    cache = {} if cache is None else cache
    out = []
    for t, extras in conditioning:
        extras = dict(extras)
        for k, v in values.items():
            if append_hooks and k == "hooks":
                _combine_hooks_from_values(extras, values, cache)
            else:
                extras[k] = v
        out.append([t, extras])
    return out


def set_hooks_for_conditioning(cond: list, hooks: HookGroup | None, append_hooks: bool = True,
                               cache: dict | None = None) -> list:
    if hooks is None:
        return cond
    return conditioning_set_values_with_hooks(cond, {"hooks": hooks}, append_hooks=append_hooks, cache=cache)


def set_timesteps_for_conditioning(cond: list, timestep_range: tuple | None) -> list:
    if timestep_range is None:
        return cond
    return _set_values(cond, {"start_percent": timestep_range[0], "end_percent": timestep_range[1]})


def set_mask_for_conditioning(cond: list, mask: torch.Tensor | None, set_cond_area: str, strength: float) -> list:
    """The mask limits where the entries act; "mask bounds" also crops the model call to it.
    Without a mask, strength is not applied (as in ComfyUI)."""
    if mask is None:
        return cond
    if mask.ndim < 3:
        mask = mask.unsqueeze(0)
    return _set_values(cond, {"mask": mask, "set_area_to_bounds": set_cond_area != "default",
                              "mask_strength": strength})


def combine_conditioning(conds: list) -> list:
    return [entry for cond in conds for entry in cond]


def combine_with_new_conds(conds: list, new_conds: list) -> list:
    return [combine_conditioning([c, n]) for c, n in zip(conds, new_conds)]


def _with_props(cond, cache, strength, set_cond_area, mask, hooks, timesteps_range, append_hooks):
    cond = set_hooks_for_conditioning(cond, hooks, append_hooks=append_hooks, cache=cache)
    cond = set_mask_for_conditioning(cond, mask, set_cond_area, strength)
    return set_timesteps_for_conditioning(cond, timesteps_range)


def set_conds_props(conds: list, strength: float, set_cond_area: str, mask: torch.Tensor | None = None,
                    hooks: HookGroup | None = None, timesteps_range: tuple | None = None,
                    append_hooks: bool = True) -> list:
    cache: dict = {}
    return [_with_props(c, cache, strength, set_cond_area, mask, hooks, timesteps_range, append_hooks)
            for c in conds]


def set_conds_props_and_combine(conds: list, new_conds: list, strength: float = 1.0, set_cond_area: str = "default",
                                mask: torch.Tensor | None = None, hooks: HookGroup | None = None,
                                timesteps_range: tuple | None = None, append_hooks: bool = True) -> list:
    cache: dict = {}
    return [combine_conditioning([c, _with_props(n, cache, strength, set_cond_area, mask, hooks, timesteps_range,
                                                 append_hooks)])
            for c, n in zip(conds, new_conds)]


def set_default_conds_and_combine(conds: list, new_conds: list, hooks: HookGroup | None = None,
                                  timesteps_range: tuple | None = None, append_hooks: bool = True) -> list:
    """Each new conditioning marked "default": it covers what the other entries leave uncovered."""
    cache: dict = {}
    out = []
    for c, n in zip(conds, new_conds):
        n = set_hooks_for_conditioning(n, hooks, append_hooks=append_hooks, cache=cache)
        n = set_timesteps_for_conditioning(_set_values(n, {"default": True}), timesteps_range)
        out.append(combine_conditioning([c, n]))
    return out


__all__ = ["AdditionalModelsHook", "EnumHookMode", "EnumHookScope", "EnumHookType", "EnumWeightTarget", "Hook",
           "HookGroup", "HookKeyframe", "HookKeyframeGroup", "InjectionsHook", "InterpolationMethod",
           "ObjectPatchHook", "TransformerOptionsHook", "WeightHook", "WrapperHook", "combine_conditioning",
           "combine_with_new_conds", "conditioning_set_values_with_hooks", "create_hook_lora",
           "create_hook_model_as_lora", "create_target_dict", "create_transformer_options_from_hooks",
           "default_should_register", "get_patch_weights_from_model", "get_sorted_list_via_attr",
           "load_hook_lora_for_models", "set_conds_props", "set_conds_props_and_combine",
           "set_default_conds_and_combine", "set_hooks_for_conditioning", "set_mask_for_conditioning",
           "set_timesteps_for_conditioning"]

