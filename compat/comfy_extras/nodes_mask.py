"""ComfyUI's comfy_extras.nodes_mask: our mask node classes, and composite() as plugins call it."""
import sys

from comfy_extras import fill
from nodes.mask import paste as composite  # (destination, source, x, y, mask=None, multiplier=8, resize_source=False)

fill(sys.modules[__name__])

__all__ = ["composite"]
