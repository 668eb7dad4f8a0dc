"""ComfyUI's `comfy.conds`: the model-input wrappers conditioning entries carry (diffusion.conds)."""
from diffusion.conds import CONDConstant, CONDCrossAttn, CONDList, CONDNoiseShape, CONDRegular

__all__ = ["CONDConstant", "CONDCrossAttn", "CONDList", "CONDNoiseShape", "CONDRegular"]
