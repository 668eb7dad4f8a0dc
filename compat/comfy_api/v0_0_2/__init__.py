"""`comfy_api.v0_0_2`: the 0.0.2 version of ComfyUI's plugin API (the same calls as latest)."""
from comfy_api.latest import ComfyAPI_latest, ComfyAPISync_latest, ComfyExtension, Input, io, ui  # noqa: F401


class ComfyAPIAdapter_v0_0_2(ComfyAPI_latest):
    VERSION = "0.0.2"
    STABLE = False


class ComfyAPISyncAdapter_v0_0_2(ComfyAPISync_latest):
    VERSION = "0.0.2"
    STABLE = False


ComfyAPI = ComfyAPIAdapter_v0_0_2
ComfyAPISync = ComfyAPISyncAdapter_v0_0_2

__all__ = ["ComfyAPI", "ComfyAPISync", "Input", "ComfyExtension", "io", "ui"]
