"""ComfyUI's `comfy.sdxl_clip`: SDXL's text models (CLIP-L + bigG, and the refiner's bigG alone)
and tokenizer. `clip.cond_stage_model` of an SDXL checkpoint is an SDXLClipModel (clip_l, clip_g,
encode_token_weights({"l": ..., "g": ...})); a refiner's is an SDXLRefinerClipModel."""
from diffusion.text_encoders import ClipTextTower
from diffusion.text_encoders import SDXLRefinerTextEncoder as SDXLRefinerClipModel
from diffusion.text_encoders import SDXLTextEncoder as SDXLClipModel
from diffusion.tokenizer import FamilyTokenizer as SDXLTokenizer
from diffusion.tokenizer import TowerTokenizer


class SDXLClipG(ClipTextTower):
    """A stand-alone bigG text model (only as a class for isinstance checks: an SDXL CLIP's bigG
    is its `clip_g` tower)."""


class SDXLClipGTokenizer(TowerTokenizer):
    pass


__all__ = ["SDXLClipG", "SDXLClipGTokenizer", "SDXLClipModel", "SDXLRefinerClipModel", "SDXLTokenizer"]
