"""ComfyUI's comfy_extras.nodes_eps: the "Epsilon Scaling" node, also under its Python class name."""
import sys

from comfy_extras import fill
from nodes.guidance import EpsilonScaling

fill(sys.modules[__name__])

__all__ = ["EpsilonScaling"]
