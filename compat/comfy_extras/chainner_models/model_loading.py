"""`comfy_extras.chainner_models.model_loading` (WAS Node Suite and Comfyroll import it): upscale
models from a state dict through spandrel, which detects the architecture from the weights."""
from __future__ import annotations


def load_state_dict(state_dict: dict):
    """A spandrel model descriptor (callable on [B, C, H, W] in 0..1, with `.scale`), in eval mode."""
    from spandrel import ModelLoader

    return ModelLoader().load_from_state_dict(state_dict).eval()
