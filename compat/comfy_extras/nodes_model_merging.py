"""ComfyUI's comfy_extras.nodes_model_merging: our merge node classes, also under the Python class
names ComfyUI gives the ones whose node ids differ (ModelAdd is ModelMergeAdd's class, ...)."""
import sys

from comfy_extras import fill
from nodes.model_merging import CLIPMergeAdd as CLIPAdd
from nodes.model_merging import CLIPMergeSubtract as CLIPSubtract
from nodes.model_merging import ModelMergeAdd as ModelAdd
from nodes.model_merging import ModelMergeSubtract as ModelSubtract

fill(sys.modules[__name__])

__all__ = ["CLIPAdd", "CLIPSubtract", "ModelAdd", "ModelSubtract"]
