"""ComfyUI's `comfy.cli_args` for plugins: `args` answers with the running engine's flags.

Flags LatentGraph shares with ComfyUI (same names) read the bound runtime's values; ComfyUI's
other flags read ComfyUI's defaults. Setting an attribute sets it on the runtime's flags.
Without a bound runtime (a plugin's own unit tests, say) every flag has ComfyUI's default.
"""
from __future__ import annotations

import enum
from typing import Any

from app import compat


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"
    AutoTune = "autotune"


# ComfyUI a125cd84's flags and their defaults (`python main.py` with no arguments).
DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1", "port": 8188, "tls_keyfile": None, "tls_certfile": None,
    "enable_cors_header": None, "max_upload_size": 100, "base_directory": None,
    "extra_model_paths_config": None, "output_directory": None, "temp_directory": None,
    "input_directory": None, "user_directory": None, "auto_launch": False, "disable_auto_launch": False,
    "cuda_device": None, "default_device": None, "cuda_malloc": False, "disable_cuda_malloc": False,
    "force_fp32": False, "force_fp16": False, "fp32_unet": False, "fp64_unet": False, "bf16_unet": False,
    "fp16_unet": False, "fp8_e4m3fn_unet": False, "fp8_e5m2_unet": False, "fp8_e8m0fnu_unet": False,
    "fp16_vae": False, "fp32_vae": False, "bf16_vae": False, "cpu_vae": False,
    "fp8_e4m3fn_text_enc": False, "fp8_e5m2_text_enc": False, "fp16_text_enc": False,
    "fp32_text_enc": False, "bf16_text_enc": False, "force_channels_last": False, "directml": None,
    "oneapi_device_selector": None, "disable_ipex_optimize": False, "supports_fp8_compute": False,
    "preview_method": LatentPreviewMethod.NoPreviews, "preview_size": 512, "cache_classic": False,
    "cache_lru": 0, "cache_none": False, "use_split_cross_attention": False,
    "use_quad_cross_attention": False, "use_pytorch_cross_attention": False, "use_sage_attention": False,
    "use_flash_attention": False, "disable_xformers": False, "force_upcast_attention": False,
    "dont_upcast_attention": False, "gpu_only": False, "highvram": False, "normalvram": False,
    "lowvram": False, "novram": False, "cpu": False, "reserve_vram": None, "async_offload": False,
    "force_non_blocking": False, "default_hashing_function": "sha256", "disable_smart_memory": False,
    "deterministic": False, "fast": set(), "mmap_torch_files": False, "disable_mmap": False,
    "dont_print_server": False, "quick_test_for_ci": False, "windows_standalone_build": False,
    "disable_metadata": False, "disable_all_custom_nodes": False, "whitelist_custom_nodes": [],
    "disable_api_nodes": False, "multi_user": False, "verbose": "INFO", "log_stdout": False,
    "front_end_version": "comfyanonymous/ComfyUI@latest", "front_end_root": None,
    "comfy_api_base": "https://api.comfy.org", "database_url": None,
    "enable_compress_response_body": False,
}


def _path(value) -> str | None:
    return None if value is None else str(value)


def _cache(kind: str):
    def read(ours) -> Any:
        policy = getattr(ours, "cache", "classic") or "classic"
        if kind == "lru":
            return int(policy.split(":", 1)[1]) if policy.startswith("lru:") else 0
        return policy == kind
    return read


# ComfyUI's name -> how to read it from our flags, where they differ in form.
_TRANSLATED = {
    "base_directory": lambda ours: _path(ours.base_directory),
    "output_directory": lambda ours: _path(ours.output_directory),
    "input_directory": lambda ours: _path(ours.input_directory),
    "temp_directory": lambda ours: _path(ours.temp_directory),
    "user_directory": lambda ours: _path(ours.user_directory),
    "extra_model_paths_config": lambda ours: [str(p) for p in ours.extra_model_paths_config] or None,
    "preview_method": lambda ours: LatentPreviewMethod(ours.preview_method),
    "cache_classic": _cache("classic"),
    "cache_lru": _cache("lru"),
    "cache_none": _cache("none"),
}


class _Args:
    """ComfyUI's argparse Namespace, read live from the bound runtime's flags."""

    def _ours(self):
        return compat.bound().args if compat.is_bound() else None

    def __getattr__(self, name: str) -> Any:
        ours = self._ours()
        if ours is not None:
            if name in _TRANSLATED:
                try:
                    return _TRANSLATED[name](ours)
                except AttributeError:
                    pass
            elif name in vars(ours):
                return vars(ours)[name]
        if name in DEFAULTS:
            value = DEFAULTS[name]
            return value.copy() if isinstance(value, (list, set)) else value
        raise AttributeError(f"'Namespace' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        ours = self._ours()
        if ours is None:
            raise RuntimeError("comfy.cli_args.args cannot be changed before LatentGraph's runtime starts")
        if isinstance(value, enum.Enum):
            value = value.value
        setattr(ours, name, value)

    def __contains__(self, name: str) -> bool:
        return name in DEFAULTS or (self._ours() is not None and name in vars(self._ours()))

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={getattr(self, k)!r}' for k in DEFAULTS)})"


args = _Args()
