"""A loss curve drawn as a picture (Pillow only): the Plot Loss Graph node and the train command.

The layout follows ComfyUI's LossGraphNode (an 800 x 480 plot area with a 40-pixel margin, the
raw loss in blue, axes in black, the highest and lowest loss written at the top and bottom of the
y axis); a moving average is drawn over it in orange so the trend shows through per-step noise.
"""
from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 800, 480, 40


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_loss_plot(losses: Sequence[float], title: str | None = None) -> Image.Image:
    """The curve of `losses` (one value per step) as an RGB image."""
    if not losses:
        raise ValueError("no loss values to plot (the training ran no steps)")
    img = Image.new("RGB", (WIDTH + MARGIN, HEIGHT + MARGIN), "white")
    draw = ImageDraw.Draw(img)
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0   # a flat curve is drawn at the bottom, not divided by zero
    steps = len(losses)

    def point(i: int, value: float) -> tuple[int, int]:
        x = MARGIN + (int(i / (steps - 1) * WIDTH) if steps > 1 else 0)
        return x, HEIGHT - int((value - low) / span * HEIGHT)

    window = max(2, steps // 20)
    curves = [(losses, (110, 140, 255), 1 if steps > WIDTH // 2 else 2)]
    if steps > 2 * window:
        curves.append((moving_average(losses, window), "orange", 2))
    for series, colour, width in curves:
        points = [point(i, v) for i, v in enumerate(series)]
        if len(points) == 1:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        else:
            draw.line(points, fill=colour, width=width)
    draw.line([(MARGIN, 0), (MARGIN, HEIGHT)], fill="black", width=2)
    draw.line([(MARGIN, HEIGHT), (WIDTH + MARGIN, HEIGHT)], fill="black", width=2)
    font = ImageFont.load_default()
    draw.text((5, HEIGHT // 2), "Loss", font=font, fill="black")
    draw.text((WIDTH // 2, HEIGHT + 10), f"Steps ({steps})", font=font, fill="black")
    draw.text((2, 0), f"{high:.3g}", font=font, fill="black")
    draw.text((2, HEIGHT - 12), f"{low:.3g}", font=font, fill="black")
    if title:
        draw.text((MARGIN + 10, 5), title, font=font, fill="black")
    return img
