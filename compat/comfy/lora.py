"""ComfyUI's `comfy.lora`: LoRA file keys to model keys, the patches a file holds, and
calculate_weight, the maths applying patches to a weight. The ModelPatcher applies weight patches
through this module's `calculate_weight` attribute, so a plugin that replaces it changes how every
MODEL and CLIP is patched, built-in LoRA nodes included."""
from __future__ import annotations

from diffusion.lora import load_lora, model_lora_keys_clip, model_lora_keys_unet
from diffusion.patches import calculate_weight, pad_tensor_to_shape, weight_decompose

LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}

__all__ = ["LORA_CLIP_MAP", "calculate_weight", "load_lora", "model_lora_keys_clip", "model_lora_keys_unet",
           "pad_tensor_to_shape", "weight_decompose"]
