"""ComfyUI's `comfy.model_patcher`: the MODEL object (diffusion.model_patcher.ModelPatcher) and its
helpers. A plugin that builds `ModelPatcher(model, load_device, offload_device)` itself gets one the
runtime's model-lifetime service loads like any other."""
from diffusion.model_patcher import (Backup, LowVramPatch, ModelPatcher, copy_to_param, create_model_options_clone,
                                     get_attr, module_size, set_attr, set_attr_param, set_model_options_patch_replace,
                                     set_model_options_post_cfg_function, set_model_options_pre_cfg_function,
                                     string_to_seed)
from diffusion.patcher_extension import CallbacksMP, PatcherInjection, WrappersMP


def get_key_weight(model, key):
    """(weight, set function, convert function) of a state-dict key; ours are plain tensors."""
    return get_attr(model, key), None, None


def wipe_lowvram_weight(m) -> None:
    if hasattr(m, "weight_function"):
        m.weight_function = []
    if hasattr(m, "bias_function"):
        m.bias_function = []


def move_weight_functions(m, device) -> int:
    memory = 0
    for f in getattr(m, "weight_function", []) + getattr(m, "bias_function", []):
        if hasattr(f, "move_to"):
            memory += f.move_to(device=device)
    return memory


__all__ = ["Backup", "CallbacksMP", "LowVramPatch", "ModelPatcher", "PatcherInjection", "WrappersMP",
           "copy_to_param", "create_model_options_clone", "get_attr", "get_key_weight", "module_size",
           "move_weight_functions", "set_attr", "set_attr_param", "set_model_options_patch_replace",
           "set_model_options_post_cfg_function", "set_model_options_pre_cfg_function", "string_to_seed",
           "wipe_lowvram_weight"]
