"""ComfyUI's `comfy.sd1_clip`: one CLIP text encoder (SDClipModel), SD1's model (SD1ClipModel) and
their tokenizers, with ComfyUI's methods (encode_token_weights, set_clip_options,
tokenize_with_weights(text, return_word_ids), ...); the prompt-weight helpers."""
from __future__ import annotations

from diffusion.prompt_weights import _escape as escape_important
from diffusion.prompt_weights import _unescape as unescape_important
from diffusion.prompt_weights import _weigh as token_weights
from diffusion.text_encoders import ClipTextTower as SDClipModel
from diffusion.text_encoders import SD1TextEncoder as SD1ClipModel
from diffusion.tokenizer import FamilyTokenizer as SD1Tokenizer
from diffusion.tokenizer import TowerTokenizer as SDTokenizer


class ClipTokenWeightEncoder:
    """ComfyUI's mix-in name; our encoders implement encode_token_weights themselves."""

    def encode_token_weights(self, token_weight_pairs):
        raise NotImplementedError


def gen_empty_tokens(special_tokens: dict, length: int) -> list:
    """A window with only start and end tokens, padded to `length`."""
    start, end, pad = special_tokens.get("start"), special_tokens.get("end"), special_tokens.get("pad")
    out = [t for t in (start, end) if t is not None]
    return out + [pad] * (length - len(out))


__all__ = ["ClipTokenWeightEncoder", "SD1ClipModel", "SD1Tokenizer", "SDClipModel", "SDTokenizer",
           "escape_important", "gen_empty_tokens", "token_weights", "unescape_important"]
