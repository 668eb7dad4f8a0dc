"""The captioned shapes data set the built-in model is trained on, and how its pictures are judged.

Every picture is one flat-coloured shape on a flat background, drawn anti-aliased (4x
supersampled) at `IMAGE_SIZE` pixels, with a caption naming what was drawn:
"a small red circle at the top left on a blue background". Parts of the caption are sometimes
left out (size, position, background) so that a short prompt still makes a picture, and some
captions are empty so that classifier-free guidance has an unconditional model to steer from.

`HELD_OUT_SHAPES` and `HELD_OUT_BACKGROUNDS` are combinations never drawn for training: the
evaluation asks for them to see whether the model composes what it learnt separately.

`judge()` measures a generated picture against its `Scene` with no learnt component: every pixel
is given the nearest palette colour, the shape's box must be mostly the named colour, the rest
mostly the background colour, and the named-colour blob's fill of its bounding box tells a square
(~1.0) from a circle (~0.79) from a triangle (~0.5).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "blue": (40, 80, 220), "purple": (140, 50, 180), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 14, "large": 24}           # side of the shape's box in pixels
SIZE_JITTER = {"small": 1, "large": 2}
# Box centres on a 3 x 3 grid (fractions of the side), and how the caption says each place.
GRID = (12 / 64, 0.5, 52 / 64)
POSITIONS: dict[str, tuple[int, int]] = {   # name -> (column, row)
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
POSITION_JITTER = 2  # pixels, each axis

HELD_OUT_SHAPES = frozenset({("red", "triangle"), ("blue", "square"), ("yellow", "circle"), ("white", "triangle")})
HELD_OUT_BACKGROUNDS = frozenset({("green", "purple"), ("black", "yellow"), ("orange", "blue")})  # (shape, bg)

# How often a training caption leaves out each part (the picture still has one, drawn at random).
OMIT = {"size": 0.1, "position": 0.1, "background": 0.1}
EMPTY_CAPTION = 0.1


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    background: str

    def caption(self, omit: frozenset[str] = frozenset()) -> str:
        words = ["a"]
        if "size" not in omit:
            words.append(self.size)
        words += [self.colour, self.shape]
        if "position" not in omit:
            words.append(POSITION_PHRASES[self.position])
        if "background" not in omit:
            words.append(f"on a {self.background} background")
        return " ".join(words)

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT_SHAPES or (self.colour, self.background) in HELD_OUT_BACKGROUNDS

    def box(self, size: int = IMAGE_SIZE) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the shape's nominal box in pixels of a `size` picture."""
        col, row = POSITIONS[self.position]
        scale = size / IMAGE_SIZE
        return GRID[col] * size, GRID[row] * size, SIZES[self.size] * scale


def all_scenes() -> list[Scene]:
    return [Scene(c, s, z, p, b) for c in COLOURS for s in SHAPES for z in SIZES for p in POSITIONS
            for b in COLOURS if b != c]


def training_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not s.held_out]


def draw(scene: Scene, rng: random.Random | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as uint8 [size, size, 3]; `rng` jitters the box (None: the nominal box)."""
    cx, cy, side = scene.box(size)
    if rng is not None:
        side += rng.uniform(-SIZE_JITTER[scene.size], SIZE_JITTER[scene.size]) * size / IMAGE_SIZE
        cx += rng.uniform(-POSITION_JITTER, POSITION_JITTER) * size / IMAGE_SIZE
        cy += rng.uniform(-POSITION_JITTER, POSITION_JITTER) * size / IMAGE_SIZE
    k = SUPERSAMPLE
    big = Image.new("RGB", (size * k, size * k), COLOURS[scene.background])
    pen = ImageDraw.Draw(big)
    left, top, right, bottom = ((cx - side / 2) * k, (cy - side / 2) * k, (cx + side / 2) * k, (cy + side / 2) * k)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((left, top, right, bottom), fill=fill)
    else:   # apex up
        pen.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return np.array(big.resize((size, size), Image.BOX))


def sample_caption(scene: Scene, rng: random.Random) -> str:
    if rng.random() < EMPTY_CAPTION:
        return ""
    return scene.caption(frozenset(part for part, p in OMIT.items() if rng.random() < p))


def training_stream(seed: int) -> Iterator[Scene]:
    """An endless, seeded stream of training scenes (held-out combinations never appear)."""
    scenes = training_scenes()
    rng = random.Random(seed)
    while True:
        yield rng.choice(scenes)


def make_batch(scenes: list[Scene], rng: random.Random) -> np.ndarray:
    """uint8 [B, H, W, 3] of jittered drawings."""
    return np.stack([draw(s, rng) for s in scenes])


# --- evaluation ------------------------------------------------------------------------------

def evaluation_scenes(seed: int = 0) -> list[Scene]:
    """One scene per (colour, shape) pair, 24 in all, plus one per held-out background pair.

    Size, position and background of each are drawn from `seed`, so every colour, shape, size
    and position appears; held-out pairs are included as they are (they are part of the 24).
    """
    rng = random.Random(seed)
    positions = list(POSITIONS)
    out = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        background = rng.choice([b for b in COLOURS if b != colour])
        if (colour, background) in HELD_OUT_BACKGROUNDS:
            background = next(b for b in COLOURS if b != colour and (colour, b) not in HELD_OUT_BACKGROUNDS)
        out.append(Scene(colour, shape, ("small", "large")[i % 2], positions[i % len(positions)], background))
    for j, (colour, background) in enumerate(sorted(HELD_OUT_BACKGROUNDS)):
        shape = next(s for s in SHAPES if (colour, s) not in HELD_OUT_SHAPES)
        out.append(Scene(colour, shape, "large", positions[(3 * j + 4) % len(positions)], background))
    return out


MIN_COVER = 0.3
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


def palette_labels(image: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for every pixel of uint8/float [H, W, 3] (0..255)."""
    pixels = np.asarray(image, dtype=np.float32)[..., None, :]
    return np.argmin(((pixels - _PALETTE) ** 2).sum(-1), axis=-1)


@dataclass(frozen=True)
class Judgement:
    colour_ok: bool        # named colour covers >= MIN_COVER of the shape's box and beats every other
                           # colour there but the background (a triangle fills half its box)
    background_ok: bool    # background colour is the most frequent colour outside it
    shape_ok: bool         # the named-colour blob near the box has the named shape's fill ratio
    colour_fraction: float
    background_fraction: float
    fill: float            # blob area / its bounding-box area (nan: no blob)
    seen_shape: str        # what the fill ratio says ("none" without a blob)

    @property
    def all_ok(self) -> bool:
        return self.colour_ok and self.background_ok and self.shape_ok


def shape_from_fill(fill: float) -> str:
    if math.isnan(fill):
        return "none"
    return "square" if fill >= 0.89 else "circle" if fill >= 0.64 else "triangle"


def judge(image: np.ndarray, scene: Scene) -> Judgement:
    """How `image` (uint8 [H, W, 3]) follows `scene`; see the module docstring."""
    h, w = image.shape[:2]
    labels = palette_labels(image)
    cx, cy, side = scene.box(w)
    colour, background = _NAMES.index(scene.colour), _NAMES.index(scene.background)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    half = side / 2
    inside = (abs(xs - cx) <= half) & (abs(ys - cy) <= half)
    margin = half + (POSITION_JITTER + SIZE_JITTER[scene.size] + 2) * w / IMAGE_SIZE
    near = (abs(xs - cx) <= margin) & (abs(ys - cy) <= margin)
    in_counts = np.bincount(labels[inside], minlength=len(_NAMES))
    out_counts = np.bincount(labels[~near], minlength=len(_NAMES))
    blob = (labels == colour) & near
    fill = float("nan")
    if blob.sum() >= 4:
        rows, cols = np.nonzero(blob)
        bbox = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill = float(blob.sum() / bbox)
    seen = shape_from_fill(fill)
    named = in_counts[colour] / max(1, inside.sum())
    others = np.delete(in_counts, [colour, background]) / max(1, inside.sum())
    return Judgement(
        colour_ok=bool(named >= MIN_COVER and named >= others.max()), background_ok=bool(out_counts.argmax() == background),
        shape_ok=seen == scene.shape, colour_fraction=float(named),
        background_fraction=float(out_counts[background] / max(1, (~near).sum())), fill=fill, seen_shape=seen)


def with_size(scene: Scene, size: str) -> Scene:
    return replace(scene, size=size)
