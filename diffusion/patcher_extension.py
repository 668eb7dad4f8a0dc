"""Wrappers and callbacks that plugins hang on a MODEL (ComfyUI's comfy.patcher_extension).

A wrapper surrounds one stage of sampling (`WrappersMP`: outer_sample, sampler_sample,
predict_noise, calc_cond_batch, apply_model, diffusion_model, prepare_sampling); it is called
as `wrapper(executor, *args)` and continues the chain with `executor(*args)`. They live in
transformer_options["wrappers"][stage][key] as lists, in the order they were added; the first
added is outermost. Callbacks (`CallbacksMP`) are plain notifications from the ModelPatcher.
"""
from __future__ import annotations

from typing import Callable


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_APPLY_HOOKS = "on_apply_hooks"
    ON_REGISTER_ALL_HOOK_PATCHES = "on_register_all_hook_patches"
    ON_INJECT_MODEL = "on_inject_model"
    ON_EJECT_MODEL = "on_eject_model"

    @classmethod
    def init_callbacks(cls) -> dict[str, dict[str, list[Callable]]]:
        return {}


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> dict[str, dict[str, list[Callable]]]:
        return {}


def _registry(kind: str, options: dict, is_model_options: bool, create: bool) -> dict:
    if is_model_options:
        options = options.setdefault("transformer_options", {}) if create else options.get("transformer_options", {})
    return options.setdefault(kind, {}) if create else options.get(kind, {})


def add_callback(call_type: str, callback: Callable, transformer_options: dict, is_model_options=False):
    add_callback_with_key(call_type, None, callback, transformer_options, is_model_options)


def add_callback_with_key(call_type: str, key, callback: Callable, transformer_options: dict, is_model_options=False):
    _registry("callbacks", transformer_options, is_model_options, True).setdefault(call_type, {}) \
        .setdefault(key, []).append(callback)


def get_callbacks_with_key(call_type: str, key, transformer_options: dict, is_model_options=False) -> list:
    return list(_registry("callbacks", transformer_options, is_model_options, False).get(call_type, {}).get(key, []))


def get_all_callbacks(call_type: str, transformer_options: dict, is_model_options=False) -> list:
    found = _registry("callbacks", transformer_options, is_model_options, False).get(call_type, {})
    return [c for group in found.values() for c in group]


def add_wrapper(wrapper_type: str, wrapper: Callable, transformer_options: dict, is_model_options=False):
    add_wrapper_with_key(wrapper_type, None, wrapper, transformer_options, is_model_options)


def add_wrapper_with_key(wrapper_type: str, key, wrapper: Callable, transformer_options: dict, is_model_options=False):
    _registry("wrappers", transformer_options, is_model_options, True).setdefault(wrapper_type, {}) \
        .setdefault(key, []).append(wrapper)


def get_wrappers_with_key(wrapper_type: str, key, transformer_options: dict, is_model_options=False) -> list:
    return list(_registry("wrappers", transformer_options, is_model_options, False).get(wrapper_type, {}).get(key, []))


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options=False) -> list:
    found = _registry("wrappers", transformer_options or {}, is_model_options, False).get(wrapper_type, {})
    return [w for group in found.values() for w in group]


class WrapperExecutor:
    """One link of a wrapper chain: calling it runs the next wrapper, or the original at the end.
    `class_obj` is the instance whose method is wrapped (wrappers read it as executor.class_obj)."""

    def __init__(self, original: Callable, class_obj, wrappers: list[Callable], idx: int):
        self.original = original
        self.class_obj = class_obj
        self.wrappers = list(wrappers)
        self.idx = idx
        self.is_last = idx == len(self.wrappers)

    def __call__(self, *args, **kwargs):
        if self.idx + 1 > len(self.wrappers):
            raise RuntimeError("wrapper chain called past its end")
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    @classmethod
    def new_executor(cls, original: Callable, wrappers: list[Callable], idx: int = 0) -> "WrapperExecutor":
        return cls(original, None, wrappers, idx)

    @classmethod
    def new_class_executor(cls, original: Callable, class_obj, wrappers: list[Callable], idx: int = 0
                           ) -> "WrapperExecutor":
        return cls(original, class_obj, wrappers, idx)


def wrapped(original: Callable, stage: str, options: dict | None, is_model_options: bool = False, class_obj=None):
    """`original` behind the wrappers registered for `stage` in `options` (itself when none)."""
    wrappers = get_all_wrappers(stage, options or {}, is_model_options)
    if not wrappers:
        return original
    return WrapperExecutor(original, class_obj, wrappers, 0).execute


class PatcherInjection:
    def __init__(self, inject: Callable, eject: Callable):
        self.inject = inject
        self.eject = eject


def copy_nested_dicts(input_dict: dict) -> dict:
    """A copy whose nested dicts and lists are copies too (leaves shared)."""
    out = dict(input_dict)
    for key, value in input_dict.items():
        if isinstance(value, dict):
            out[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            out[key] = list(value)
    return out


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1: bool = True) -> dict:
    """dict2 merged into dict1: nested dicts merge, lists extend, other values from dict2 win."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(value, merged.setdefault(key, {}))
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged
