"""ComfyUI's `comfy_api.torch_helpers.torch_compile` (diffusion.torch_compile)."""
from diffusion.torch_compile import (
                                     COMPILE_KEY,
                                     TORCH_COMPILE_KWARGS,
                                     apply_torch_compile_factory,
                                     set_torch_compile_wrapper,
)

__all__ = ["COMPILE_KEY", "TORCH_COMPILE_KWARGS", "apply_torch_compile_factory", "set_torch_compile_wrapper"]
