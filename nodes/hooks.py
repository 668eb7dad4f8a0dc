"""The hooks nodes (ComfyUI's comfy_extras/nodes_hooks.py): LoRAs and whole models as HOOKS that
only the conditioning they are attached to sees, keyframe schedules of a hook's strength, CLIP
hooks, and conditioning edits that attach hooks, masks and sampling ranges to prompts.

The hook logic lives in diffusion/hooks.py (what a hook is), diffusion/model_patcher.py (weights
per hook group) and diffusion/ksampler.py (entries batched by hook group); see docs/hooks.md.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from diffusion import hooks as hk
from diffusion.checkpoint import read_state_dict
from graph.contract import Boolean, Combo, Float, Int, Node, Output, Socket
from nodes.loaders import load_checkpoint, model_file

log = logging.getLogger(__name__)

EXTRAS = "comfy_extras.nodes_hooks"


class _HookNode(Node):
    EXPERIMENTAL = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.comfy_module = EXTRAS  # read off each class itself by the registry


def _strength(name: str, lo: float = -20.0, hi: float = 20.0, step: float = 0.01) -> Float:
    return Float(name, 1.0, min=lo, max=hi, step=step)


def _percent(name: str, default: float) -> Float:
    return Float(name, default, min=0.0, max=1.0, step=0.001)


def _prev_hooks() -> Socket:
    return Socket("prev_hooks", "HOOKS", optional=True)


def _prev_kf() -> Socket:
    return Socket("prev_hook_kf", "HOOK_KEYFRAMES", optional=True)


def _props() -> tuple:
    """The strength, area mode and optional mask / hooks / range of the set-properties nodes."""
    return (Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
            Combo("set_cond_area", ["default", "mask bounds"]),
            Socket("mask", "MASK", optional=True), Socket("hooks", "HOOKS", optional=True),
            Socket("timesteps", "TIMESTEPS_RANGE", optional=True))


# ---------------------------------------------------------------------------------------------
# attaching hooks, masks and ranges to conditioning


class PairConditioningSetProperties(_HookNode):
    display_name = "Cond Pair Set Props"
    comfy_function = "set_properties"
    category = "advanced/hooks/cond pair"
    inputs = (Socket("positive_NEW", "CONDITIONING"), Socket("negative_NEW", "CONDITIONING"), *_props())
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx, positive_NEW, negative_NEW, strength, set_cond_area, mask=None, hooks=None, timesteps=None):
        return tuple(hk.set_conds_props([positive_NEW, negative_NEW], strength, set_cond_area, mask=mask,
                                        hooks=hooks, timesteps_range=timesteps))


class PairConditioningSetPropertiesAndCombine(_HookNode):
    display_name = "Cond Pair Set Props Combine"
    comfy_function = "set_properties"
    category = "advanced/hooks/cond pair"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("positive_NEW", "CONDITIONING"), Socket("negative_NEW", "CONDITIONING"), *_props())
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx, positive, negative, positive_NEW, negative_NEW, strength, set_cond_area, mask=None,
            hooks=None, timesteps=None):
        return tuple(hk.set_conds_props_and_combine([positive, negative], [positive_NEW, negative_NEW], strength,
                                                       set_cond_area, mask=mask, hooks=hooks,
                                                       timesteps_range=timesteps))


class ConditioningSetProperties(_HookNode):
    display_name = "Cond Set Props"
    comfy_function = "set_properties"
    category = "advanced/hooks/cond single"
    inputs = (Socket("cond_NEW", "CONDITIONING"), *_props())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, cond_NEW, strength, set_cond_area, mask=None, hooks=None, timesteps=None):
        return tuple(hk.set_conds_props([cond_NEW], strength, set_cond_area, mask=mask, hooks=hooks,
                                           timesteps_range=timesteps))


class ConditioningSetPropertiesAndCombine(_HookNode):
    display_name = "Cond Set Props Combine"
    comfy_function = "set_properties"
    category = "advanced/hooks/cond single"
    inputs = (Socket("cond", "CONDITIONING"), Socket("cond_NEW", "CONDITIONING"), *_props())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, cond, cond_NEW, strength, set_cond_area, mask=None, hooks=None, timesteps=None):
        return tuple(hk.set_conds_props_and_combine([cond], [cond_NEW], strength, set_cond_area, mask=mask,
                                                       hooks=hooks, timesteps_range=timesteps))


class PairConditioningCombine(_HookNode):
    display_name = "Cond Pair Combine"
    comfy_function = "combine"
    category = "advanced/hooks/cond pair"
    inputs = (Socket("positive_A", "CONDITIONING"), Socket("negative_A", "CONDITIONING"),
              Socket("positive_B", "CONDITIONING"), Socket("negative_B", "CONDITIONING"))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx, positive_A, negative_A, positive_B, negative_B):
        return tuple(hk.set_conds_props_and_combine([positive_A, negative_A], [positive_B, negative_B]))


class PairConditioningSetDefaultCombine(_HookNode):
    """The DEFAULT conditioning acts wherever the other entries of its prompt do not reach."""

    display_name = "Cond Pair Set Default Combine"
    comfy_function = "set_default_and_combine"
    category = "advanced/hooks/cond pair"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("positive_DEFAULT", "CONDITIONING"), Socket("negative_DEFAULT", "CONDITIONING"),
              Socket("hooks", "HOOKS", optional=True))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx, positive, negative, positive_DEFAULT, negative_DEFAULT, hooks=None):
        return tuple(hk.set_default_conds_and_combine([positive, negative], [positive_DEFAULT, negative_DEFAULT],
                                                         hooks=hooks))


class ConditioningSetDefaultCombine(_HookNode):
    """The DEFAULT conditioning acts wherever the other entries of its prompt do not reach."""

    display_name = "Cond Set Default Combine"
    comfy_function = "set_default_and_combine"
    category = "advanced/hooks/cond single"
    inputs = (Socket("cond", "CONDITIONING"), Socket("cond_DEFAULT", "CONDITIONING"),
              Socket("hooks", "HOOKS", optional=True))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, cond, cond_DEFAULT, hooks=None):
        return tuple(hk.set_default_conds_and_combine([cond], [cond_DEFAULT], hooks=hooks))


class SetClipHooks(_HookNode):
    """The text encoder applies the hooks' LoRAs (CLIP strengths) when encoding; with
    apply_to_conds the encoded conditioning carries the hooks to the sampler; with schedule_clip
    the hooks' keyframes split the encoding into sampling ranges."""

    display_name = "Set CLIP Hooks"
    comfy_function = "apply_hooks"
    category = "advanced/hooks/clip"
    inputs = (Socket("clip", "CLIP"), Boolean("apply_to_conds", True), Boolean("schedule_clip", False),
              Socket("hooks", "HOOKS", optional=True))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip, schedule_clip, apply_to_conds, hooks=None):
        if hooks is None:
            return (clip,)
        clip = clip.clone()
        if apply_to_conds:
            clip.apply_hooks_to_conds = hooks
        clip.patcher.forced_hooks = hooks.clone()
        clip.use_clip_schedule = schedule_clip
        if not schedule_clip:
            clip.patcher.forced_hooks.set_keyframes_on_hooks(None)
        clip.patcher.register_all_hook_patches(hooks, hk.create_target_dict(hk.EnumWeightTarget.Clip))
        return (clip,)


class ConditioningTimestepsRange(_HookNode):
    """A sampling range (fractions of the run) and the two ranges before and after it."""

    display_name = "Timesteps Range"
    comfy_function = "create_range"
    category = "advanced/hooks"
    inputs = (_percent("start_percent", 0.0), _percent("end_percent", 1.0))
    outputs = (Output("TIMESTEPS_RANGE"), Output("TIMESTEPS_RANGE", "BEFORE_RANGE"),
               Output("TIMESTEPS_RANGE", "AFTER_RANGE"))

    def run(self, ctx, start_percent, end_percent):
        return ((start_percent, end_percent), (0.0, start_percent), (end_percent, 1.0))


# ---------------------------------------------------------------------------------------------
# creating hooks


def _with_new(prev, new):
    return (prev if prev is not None else hk.HookGroup()).clone_and_combine(new)


class CreateHookLora(_HookNode):
    display_name = "Create Hook LoRA"
    comfy_function = "create_hook"
    category = "advanced/hooks/create"
    inputs = (Combo("lora_name", lambda env: env.folders.filenames("loras")), _strength("strength_model"),
              _strength("strength_clip"), _prev_hooks())
    outputs = (Output("HOOKS"),)

    def run(self, ctx, lora_name, strength_model, strength_clip, prev_hooks=None):
        if strength_model == 0 and strength_clip == 0:
            return (prev_hooks if prev_hooks is not None else hk.HookGroup(),)
        lora = read_state_dict(model_file(ctx, "loras", lora_name))
        return (_with_new(prev_hooks, hk.create_hook_lora(lora, strength_model, strength_clip)),)


class CreateHookLoraModelOnly(CreateHookLora):
    display_name = "Create Hook LoRA (MO)"
    comfy_function = "create_hook_model_only"
    inputs = (Combo("lora_name", lambda env: env.folders.filenames("loras")), _strength("strength_model"),
              _prev_hooks())

    def run(self, ctx, lora_name, strength_model, prev_hooks=None):
        return super().run(ctx, lora_name, strength_model, 0, prev_hooks)


class CreateHookModelAsLora(_HookNode):
    """A checkpoint as a hook: where it applies, the model's weights move towards the
    checkpoint's by the strength (its weights minus the model's own, added)."""

    display_name = "Create Hook Model as LoRA"
    comfy_function = "create_hook"
    category = "advanced/hooks/create"
    inputs = (Combo("ckpt_name", lambda env: env.folders.filenames("checkpoints")), _strength("strength_model"),
              _strength("strength_clip"), _prev_hooks())
    outputs = (Output("HOOKS"),)

    def run(self, ctx, ckpt_name, strength_model, strength_clip, prev_hooks=None):
        loaded = load_checkpoint(ctx, ckpt_name)
        weights_model = hk.get_patch_weights_from_model(loaded.model)
        weights_clip = hk.get_patch_weights_from_model(loaded.clip.patcher if loaded.clip else None)
        new = hk.create_hook_model_as_lora(weights_model, weights_clip, strength_model, strength_clip)
        return (_with_new(prev_hooks, new),)


class CreateHookModelAsLoraModelOnly(CreateHookModelAsLora):
    display_name = "Create Hook Model as LoRA (MO)"
    comfy_function = "create_hook_model_only"
    inputs = (Combo("ckpt_name", lambda env: env.folders.filenames("checkpoints")), _strength("strength_model"),
              _prev_hooks())

    def run(self, ctx, ckpt_name, strength_model, prev_hooks=None):
        return super().run(ctx, ckpt_name, strength_model, 0.0, prev_hooks)


# ---------------------------------------------------------------------------------------------
# scheduling hooks


class SetHookKeyframes(_HookNode):
    display_name = "Set Hook Keyframes"
    comfy_function = "set_hook_keyframes"
    category = "advanced/hooks/scheduling"
    inputs = (Socket("hooks", "HOOKS"), Socket("hook_kf", "HOOK_KEYFRAMES", optional=True))
    outputs = (Output("HOOKS"),)

    def run(self, ctx, hooks, hook_kf=None):
        if hook_kf is not None:
            hooks = hooks.clone()
            hooks.set_keyframes_on_hooks(hook_kf=hook_kf)
        return (hooks,)


class CreateHookKeyframe(_HookNode):
    display_name = "Create Hook Keyframe"
    comfy_function = "create_hook_keyframe"
    category = "advanced/hooks/scheduling"
    inputs = (_strength("strength_mult"), _percent("start_percent", 0.0), _prev_kf())
    outputs = (Output("HOOK_KEYFRAMES", "HOOK_KF"),)

    def run(self, ctx, strength_mult, start_percent, prev_hook_kf=None):
        kf = (prev_hook_kf if prev_hook_kf is not None else hk.HookKeyframeGroup()).clone()
        kf.add(hk.HookKeyframe(strength=strength_mult, start_percent=start_percent))
        return (kf,)


def _keyframes_over(prev, percents, strengths, print_keyframes: bool):
    """Keyframes at `percents` with `strengths`; only the first guarantees a step."""
    kf = (prev if prev is not None else hk.HookKeyframeGroup()).clone()
    for i, (percent, strength) in enumerate(zip(percents, strengths)):
        percent, strength = float(percent), float(strength)
        kf.add(hk.HookKeyframe(strength=strength, start_percent=percent, guarantee_steps=1 if i == 0 else 0))
        if print_keyframes:
            log.info("Hook Keyframe - start_percent:%s = %s", percent, strength)
    return kf


class CreateHookKeyframesInterpolated(_HookNode):
    display_name = "Create Hook Keyframes Interp."
    comfy_function = "create_hook_keyframes"
    category = "advanced/hooks/scheduling"
    inputs = (_strength("strength_start", 0.0, 10.0, 0.001), _strength("strength_end", 0.0, 10.0, 0.001),
              Combo("interpolation", hk.InterpolationMethod._LIST), _percent("start_percent", 0.0),
              _percent("end_percent", 1.0), Int("keyframes_count", 5, min=2, max=100, step=1),
              Boolean("print_keyframes", False), _prev_kf())
    outputs = (Output("HOOK_KEYFRAMES", "HOOK_KF"),)

    def run(self, ctx, strength_start, strength_end, interpolation, start_percent, end_percent, keyframes_count,
            print_keyframes=False, prev_hook_kf=None):
        method = hk.InterpolationMethod
        percents = method.get_weights(start_percent, end_percent, keyframes_count, method.LINEAR)
        strengths = method.get_weights(strength_start, strength_end, keyframes_count, interpolation)
        return (_keyframes_over(prev_hook_kf, percents, strengths, print_keyframes),)


class CreateHookKeyframesFromFloats(_HookNode):
    display_name = "Create Hook Keyframes From Floats"
    comfy_function = "create_hook_keyframes"
    category = "advanced/hooks/scheduling"
    inputs = (Socket("floats_strength", "FLOATS", default=-1, min=-1, step=0.001, forceInput=True),
              _percent("start_percent", 0.0), _percent("end_percent", 1.0), Boolean("print_keyframes", False),
              _prev_kf())
    outputs = (Output("HOOK_KEYFRAMES", "HOOK_KF"),)

    def run(self, ctx, floats_strength, start_percent, end_percent, prev_hook_kf=None, print_keyframes=False):
        if isinstance(floats_strength, (float, int)):
            floats_strength = [float(floats_strength)]
        elif not isinstance(floats_strength, Iterable):
            raise TypeError(f"floats_strength must be a float or a list of floats, not {type(floats_strength).__name__}")
        floats_strength = list(floats_strength)
        method = hk.InterpolationMethod
        percents = method.get_weights(start_percent, end_percent, len(floats_strength), method.LINEAR)
        return (_keyframes_over(prev_hook_kf, percents, floats_strength, print_keyframes),)


# ---------------------------------------------------------------------------------------------
# combining hooks


class CombineHooks2(_HookNode):
    """One group of all the hooks given (none given: nothing; one: that group itself)."""

    display_name = "Combine Hooks [2]"
    comfy_function = "combine_hooks"
    category = "advanced/hooks/combine"
    inputs = tuple(Socket(f"hooks_{x}", "HOOKS", optional=True) for x in "AB")
    outputs = (Output("HOOKS"),)

    def run(self, ctx, hooks_A=None, hooks_B=None):
        return (hk.HookGroup.combine_all_hooks([hooks_A, hooks_B]),)


class CombineHooks4(CombineHooks2):
    display_name = "Combine Hooks [4]"
    inputs = tuple(Socket(f"hooks_{x}", "HOOKS", optional=True) for x in "ABCD")

    def run(self, ctx, hooks_A=None, hooks_B=None, hooks_C=None, hooks_D=None):
        return (hk.HookGroup.combine_all_hooks([hooks_A, hooks_B, hooks_C, hooks_D]),)


class CombineHooks8(CombineHooks2):
    display_name = "Combine Hooks [8]"
    inputs = tuple(Socket(f"hooks_{x}", "HOOKS", optional=True) for x in "ABCDEFGH")

    def run(self, ctx, hooks_A=None, hooks_B=None, hooks_C=None, hooks_D=None, hooks_E=None, hooks_F=None,
            hooks_G=None, hooks_H=None):
        return (hk.HookGroup.combine_all_hooks([hooks_A, hooks_B, hooks_C, hooks_D, hooks_E, hooks_F, hooks_G,
                                                hooks_H]),)


NODES = [CreateHookLora, CreateHookLoraModelOnly, CreateHookModelAsLora, CreateHookModelAsLoraModelOnly,
         SetHookKeyframes, CreateHookKeyframe, CreateHookKeyframesInterpolated, CreateHookKeyframesFromFloats,
         CombineHooks2, CombineHooks4, CombineHooks8, ConditioningSetProperties, ConditioningSetPropertiesAndCombine,
         PairConditioningSetProperties, PairConditioningSetPropertiesAndCombine, ConditioningSetDefaultCombine,
         PairConditioningSetDefaultCombine, PairConditioningCombine, SetClipHooks, ConditioningTimestepsRange]
