"""Test instruments for the model-lifetime service, as a custom node pack (ComfyUI's classic
contract): a digest of a MODEL's weights as loaded for use, and a report of which models hold
their weights in memory."""
import hashlib
import math

import comfy.model_management


def _digest(patcher) -> str:
    comfy.model_management.load_models_gpu([patcher])
    h = hashlib.sha256()
    for key, tensor in sorted(patcher.model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ModelWeightsDigest:
    """sha256 of every tensor of the MODEL's network (and the CLIP's, when given) while they are
    the ones loaded (their weight patches applied), in key order."""
    CATEGORY = "testing/models"
    FUNCTION = "digest"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}, "optional": {"clip": ("CLIP",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return math.nan  # measure on every run

    def digest(self, model, clip=None):
        text = _digest(model)
        clip_text = _digest(clip.patcher) if clip is not None else ""
        return {"ui": {"text": [text], "clip": [clip_text]}, "result": (text,)}


class ModelMemoryReport:
    """Which registered networks hold their weights (resident) and which were released."""
    CATEGORY = "testing/models"
    FUNCTION = "report"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"after": ("*",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return math.nan

    def report(self, after=None):
        from app import compat
        service = compat.bound().env.models
        resident = sorted(r.name for r in service._residents.values() if r.ref() is not None and not r.dropped)
        released = sorted(r.name for r in service._residents.values() if r.ref() is not None and r.dropped)
        resident_bytes = sum(r.size for r in service._residents.values() if r.ref() is not None and not r.dropped)
        return {"ui": {"resident": resident, "released": released, "drops": [service.drops],
                       "rebuilds": [service.rebuilds], "resident_bytes": [resident_bytes]}}


NODE_CLASS_MAPPINGS = {"ModelWeightsDigest": ModelWeightsDigest, "ModelMemoryReport": ModelMemoryReport}
