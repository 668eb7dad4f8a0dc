"""ComfyUI's `comfy.model_management` for plugins, answered by the runtime's model-lifetime service
(diffusion.model_management.ModelManagement, one per runtime; `runtime.env.models`).

Module-level names that are globals in ComfyUI (vram_state, current_loaded_models, ...) read the
service as it is now. Functions a plugin replaces on this module (load_models_gpu, free_memory,
get_free_memory, ...) are what the engine calls from then on: the sampler, CLIP and VAE reach
them through this module's attributes (diffusion/overrides.py).
"""
from __future__ import annotations

import logging
import platform
import sys
from typing import Any

import torch

from diffusion.model_management import CPUState, LoadedModel, VRAMState
from diffusion.model_patcher import module_size
from diffusion.patches import cast_to_device as _cast_to_device
from graph.context import Interrupted

log = logging.getLogger(__name__)

OOM_EXCEPTION = torch.OutOfMemoryError
InterruptProcessingException = Interrupted  # what the executor reports as an interrupted prompt
lowvram_available = True
xpu_available = False
npu_available = False
mlu_available = False
directml_enabled = False
ENABLE_PYTORCH_ATTENTION = True
FORCE_FP32 = False
PRIORITIZE_FP16 = False
MIN_WEIGHT_MEMORY_RATIO = 0.4
WINDOWS = platform.system() == "Windows"
XFORMERS_IS_AVAILABLE = False
XFORMERS_ENABLED_VAE = False
XFORMERS_VERSION = ""

__all__ = ["CPUState", "InterruptProcessingException", "LoadedModel", "OOM_EXCEPTION", "VRAMState",
           "cast_to", "cast_to_device", "cleanup_models", "cleanup_models_gc", "cpu_mode", "dtype_size",
           "extra_reserved_memory", "free_memory", "get_free_memory", "get_torch_device", "get_torch_device_name",
           "get_total_memory", "intermediate_device", "interrupt_current_processing", "is_device_cpu",
           "is_device_cuda", "is_device_mps", "load_model_gpu", "load_models_gpu", "loaded_models",
           "minimum_inference_memory", "module_size", "processing_interrupted", "should_use_bf16",
           "should_use_fp16", "soft_empty_cache", "text_encoder_device", "text_encoder_dtype",
           "text_encoder_offload_device", "throw_exception_if_processing_interrupted", "unet_dtype",
           "unet_inital_load_device", "unet_offload_device", "unload_all_models", "vae_device", "vae_dtype",
           "vae_offload_device"]


def _runtime():
    from app import compat
    return compat.bound()


def _service():
    return _runtime().env.models


def _service_of(models) -> Any:
    """The service that owns these patchers (the loaders set `.manager`), else the bound one's."""
    for m in models or ():
        manager = getattr(m, "manager", None)
        if manager is not None:
            return manager
    return _service()


_LIVE = {
    "vram_state": lambda: _service().vram_state,
    "set_vram_to": lambda: _service().vram_state,
    "cpu_state": lambda: CPUState.CPU if _service().get_torch_device().type == "cpu" else CPUState.GPU,
    "current_loaded_models": lambda: _service().current_loaded_models,
    "DISABLE_SMART_MEMORY": lambda: not _service().options.smart_memory,
    "EXTRA_RESERVED_VRAM": lambda: _service().extra_reserved_memory(),
    "total_vram": lambda: get_total_memory(get_torch_device()) / (1024 * 1024),
    "total_ram": lambda: get_total_memory(torch.device("cpu")) / (1024 * 1024),
    "interrupt_processing": lambda: processing_interrupted(),
}


def __getattr__(name: str):
    if name in _LIVE:
        return _LIVE[name]()
    raise AttributeError(f"module 'comfy.model_management' has no attribute {name!r}")


# -- devices -----------------------------------------------------------------------------------

def get_torch_device() -> torch.device:
    return _service().get_torch_device()


def get_torch_device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)} : native"
    return device.type


def intermediate_device() -> torch.device:
    return _service().intermediate_device()


def unet_offload_device() -> torch.device:
    return _service().unet_offload_device()


def unet_inital_load_device(parameters=0, dtype=None) -> torch.device:
    return _service().unet_inital_load_device(parameters, dtype)


def text_encoder_device() -> torch.device:
    return _service().text_encoder_device()


def text_encoder_offload_device() -> torch.device:
    return _service().text_encoder_offload_device()


def text_encoder_initial_device(load_device, offload_device, model_size=0) -> torch.device:
    return load_device if torch.device(load_device) == get_torch_device() else offload_device


def vae_device() -> torch.device:
    return _service().vae_device()


def vae_offload_device() -> torch.device:
    return _service().vae_offload_device()


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None) -> torch.dtype:
    return _service().unet_dtype()


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    """None: our weights compute in their own dtype (no per-layer casting)."""
    return None


def text_encoder_dtype(device=None) -> torch.dtype:
    return _service().text_encoder_dtype()


def vae_dtype(device=None, allowed_dtypes=()) -> torch.dtype:
    return _service().vae_dtype()


def is_device_type(device, kind: str) -> bool:
    return getattr(device, "type", None) == kind


def is_device_cpu(device) -> bool:
    return is_device_type(device, "cpu")


def is_device_mps(device) -> bool:
    return is_device_type(device, "mps")


def is_device_cuda(device) -> bool:
    return is_device_type(device, "cuda")


def is_device_xpu(device) -> bool:
    return is_device_type(device, "xpu")


def cpu_mode() -> bool:
    return get_torch_device().type == "cpu"


def mps_mode() -> bool:
    return get_torch_device().type == "mps"


def is_nvidia() -> bool:
    return torch.cuda.is_available() and torch.version.cuda is not None and get_torch_device().type == "cuda"


def is_amd() -> bool:
    return torch.cuda.is_available() and getattr(torch.version, "hip", None) is not None


def is_intel_xpu() -> bool:
    return False


def is_directml_enabled() -> bool:
    return False


def get_autocast_device(dev) -> str:
    return getattr(dev, "type", "cuda")


def supports_dtype(device, dtype) -> bool:
    return dtype == torch.float32 or not is_device_cpu(device) or dtype == torch.bfloat16


def supports_cast(device, dtype) -> bool:
    return True


def pick_weight_dtype(dtype, fallback_dtype, device=None):
    if dtype is None or (dtype_size(dtype) > dtype_size(fallback_dtype)) or not supports_cast(device, dtype):
        return fallback_dtype
    return dtype


def device_supports_non_blocking(device) -> bool:
    return is_device_cuda(device)


def device_should_use_non_blocking(device) -> bool:
    return False


def force_channels_last() -> bool:
    return False


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def pytorch_attention_enabled_vae() -> bool:
    return True


def pytorch_attention_flash_attention() -> bool:
    return is_nvidia()


def sage_attention_enabled() -> bool:
    return False


def flash_attention_enabled() -> bool:
    return False


def force_upcast_attention_dtype():
    return None


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    device = torch.device(device) if device is not None else get_torch_device()
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    device = torch.device(device) if device is not None else get_torch_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _service().unet_dtype() == torch.bfloat16


def supports_fp8_compute(device=None) -> bool:
    return False


def extended_fp16_support() -> bool:
    return True


def get_supported_float8_types() -> list:
    return [t for t in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2")) if t is not None]


def maximum_vram_for_weights(device=None):
    return get_total_memory(device) * 0.88 - minimum_inference_memory()


# -- memory ------------------------------------------------------------------------------------

def get_total_memory(dev=None, torch_total_too=False):
    return _service().get_total_memory(dev, torch_total_too)


def get_free_memory(dev=None, torch_free_too=False):
    return _service().get_free_memory(dev, torch_free_too)


def dtype_size(dtype) -> int:
    if dtype in (torch.float16, torch.bfloat16):
        return 2
    if dtype == torch.float32:
        return 4
    return getattr(dtype, "itemsize", 4)


def extra_reserved_memory() -> int:
    return _service().extra_reserved_memory()


def minimum_inference_memory() -> int:
    return _service().minimum_inference_memory()


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    _service_of(models).load_models_gpu(models, memory_required=memory_required,
                                        force_patch_weights=force_patch_weights,
                                        minimum_memory_required=minimum_memory_required,
                                        force_full_load=force_full_load)


def load_model_gpu(model) -> None:
    return sys.modules[__name__].load_models_gpu([model])


def loaded_models(only_currently_used: bool = False) -> list:
    return _service().loaded_models(only_currently_used)


def free_memory(memory_required, device, keep_loaded=()) -> list:
    return _service().free_memory(memory_required, device, keep_loaded)


def unload_all_models() -> None:
    _service().unload_all_models()


def cleanup_models() -> None:
    _service().cleanup_models()


def cleanup_models_gc() -> None:
    _service().cleanup_models_gc()


def soft_empty_cache(force: bool = False) -> None:
    _service().soft_empty_cache(force)


def offloaded_memory(loaded, device) -> int:
    return sum(m.model_offloaded_memory() for m in loaded if m.device == device)


def use_more_memory(extra_memory, loaded, device) -> None:
    for m in loaded:
        if m.device == device:
            extra_memory -= m.model_use_more_vram(extra_memory)
            if extra_memory <= 0:
                break


def cast_to(weight, dtype=None, device=None, non_blocking=False, copy=False, stream=None):
    return weight.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=copy)


def cast_to_device(tensor, device, dtype, copy=False):
    return _cast_to_device(tensor, device, dtype, copy)


# -- interrupts --------------------------------------------------------------------------------

def interrupt_current_processing(value: bool = True) -> None:
    flag = _runtime().executor.interrupt_flag
    flag.set() if value else flag.clear()


def processing_interrupted() -> bool:
    return _runtime().executor.interrupt_flag.is_set()


def throw_exception_if_processing_interrupted() -> None:
    if processing_interrupted():
        raise InterruptProcessingException("interrupted")
