"""Draws the example input pictures (run from the repository root: python examples/draw_inputs.py).

example_input.png: a 512x512 landscape (sky, sun, hills, a lake) with a transparent oval in
the meadow; Load Image gives that oval as the MASK, which the inpaint example repaints.
controlnet_hint.png: the landscape's edges (Canny, as the Canny node computes them), white on
black, the kind of hint a canny ControlNet follows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 512


def landscape() -> Image.Image:
    y = np.linspace(0.0, 1.0, SIZE)[:, None, None]
    sky = (1 - y) * np.array([90, 150, 230]) + y * np.array([250, 210, 170])
    img = Image.fromarray(np.broadcast_to(sky, (SIZE, SIZE, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((330, 70, 410, 150), fill=(255, 230, 120))
    draw.polygon([(0, 300), (120, 200), (260, 290), (380, 180), (512, 280), (512, 512), (0, 512)], fill=(70, 120, 80))
    draw.polygon([(0, 360), (200, 300), (512, 350), (512, 512), (0, 512)], fill=(110, 170, 90))
    draw.ellipse((-60, 420, 300, 560), fill=(60, 110, 170))
    return img


def main() -> None:
    img = landscape()
    rgba = img.convert("RGBA")
    hole = Image.new("L", (SIZE, SIZE), 255)
    ImageDraw.Draw(hole).ellipse((300, 330, 440, 430), fill=0)
    rgba.putalpha(hole)
    rgba.save(HERE / "example_input.png", optimize=True)

    from kornia.filters import canny

    gray = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]
    _, edges = canny(gray, low_threshold=0.1, high_threshold=0.2)
    hint = (edges[0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(hint, "L").convert("RGB").save(HERE / "controlnet_hint.png", optimize=True)


if __name__ == "__main__":
    main()
