"""The example workflows at a smaller pixel scale.

The SD1.5 examples are sized for that model (512 pixels). The tests run them on tiny models and
examples/render_results.py runs them on the built-in 64-pixel model, both with their pixel sizes
divided by one factor; this module is the one place that knows which inputs are pixel sizes.
"""
from __future__ import annotations

import json

SCALE = 8  # 512 pixels (SD1.5's scale) -> 64 (the built-in model's, and the tiny test models')
PIXEL_INPUTS = frozenset({"width", "height", "tile_size", "overlap", "left", "top", "right", "bottom",
                          "feathering", "grow_mask_by"})
SMALLEST = {"tile_size": 64}  # the tiled VAE nodes' minimum tile (ComfyUI's node specs)


def scale_pixels(prompt: dict, factor: int = SCALE) -> dict:
    """A copy of an API-format prompt with every literal pixel size divided by `factor`
    (links and other inputs untouched)."""
    doc = json.loads(json.dumps(prompt))
    for node in doc.values():
        for key, value in node["inputs"].items():
            if key in PIXEL_INPUTS and isinstance(value, int) and not isinstance(value, bool):
                node["inputs"][key] = max(value // factor, SMALLEST.get(key, 0))
    return doc
