"""ComfyUI's `comfy.patcher_extension`: wrappers and callbacks on a MODEL (diffusion.patcher_extension)."""
from diffusion.patcher_extension import (CallbacksMP, PatcherInjection, WrapperExecutor, WrappersMP, add_callback,
                                         add_callback_with_key, add_wrapper, add_wrapper_with_key, copy_nested_dicts,
                                         get_all_callbacks, get_all_wrappers, get_callbacks_with_key,
                                         get_wrappers_with_key, merge_nested_dicts)

__all__ = ["CallbacksMP", "PatcherInjection", "WrapperExecutor", "WrappersMP", "add_callback",
           "add_callback_with_key", "add_wrapper", "add_wrapper_with_key", "copy_nested_dicts", "get_all_callbacks",
           "get_all_wrappers", "get_callbacks_with_key", "get_wrappers_with_key", "merge_nested_dicts"]
