"""Live previews while sampling: a latent (or an image a plugin hands over) to a small JPEG.

Two ways from latent to pixels: a per-family linear projection of the 4 latent channels to RGB
(instant, blurry, latent-sized), or a TAESD decoder when its weights sit in models/vae_approx
(sharper, full size, costs a small network pass). Frames are rate-limited per prompt because
samplers can report far faster than a browser can show, and encoding is not free.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from graph.context import LatentPreview
from nodes.image import tensor_to_pil
from server.taesd import TAESDDecoder, load_decoder
from server.ws import FORMAT_JPEG

log = logging.getLogger(__name__)

# Published latent-to-RGB factors (rows: latent channels; columns: R, G, B), applied to the
# latent as the sampler sees it. SD2 shares SD1's VAE and so its factors.
_SD1_FACTORS = ([0.3512, 0.2297, 0.3227],
                [0.3250, 0.4974, 0.2350],
                [-0.2829, 0.1762, 0.2721],
                [-0.2120, -0.2616, -0.7177])
_SDXL_FACTORS = ([0.3651, 0.4232, 0.4341],
                 [-0.2533, -0.0042, 0.1068],
                 [0.1076, 0.1111, -0.0362],
                 [-0.3165, -0.2492, -0.2188])
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)

LATENT_RGB: dict[str, tuple[tuple, tuple | None]] = {
    "sd1": (_SD1_FACTORS, None),
    "sd2": (_SD1_FACTORS, None),
    "sdxl": (_SDXL_FACTORS, _SDXL_BIAS),
}
TAESD_NAMES = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
TAESD_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt")
METHODS = ("none", "auto", "latent2rgb", "taesd")


def latent_to_rgb(samples: torch.Tensor, family: str) -> torch.Tensor | None:
    """[C, h, w] latent -> [h, w, 3] in [0, 1] by the family's linear factors; None if unknown."""
    if family not in LATENT_RGB:
        return None
    factors, bias = LATENT_RGB[family]
    weight = torch.tensor(factors, dtype=torch.float32, device=samples.device)
    if samples.shape[0] != weight.shape[0]:
        return None
    rgb = torch.einsum("chw,cr->hwr", samples.float(), weight)
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32, device=samples.device)
    return ((rgb + 1) / 2).clamp(0, 1)  # the projection lands in [-1, 1], like decoded pixels


def encode_jpeg(image: Image.Image, max_size: int, quality: int = 90) -> bytes:
    image = image.convert("RGB")
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Previewer:
    """Turns what a node passes to ctx.progress(..., preview=) into (format, bytes)."""

    def __init__(self, method: str, vae_approx_dirs: list[Path], max_size: int = 512):
        if method not in METHODS:
            raise ValueError(f"unknown preview method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.dirs = list(vae_approx_dirs)
        self.max_size = max_size
        self._decoders: dict[str, TAESDDecoder | None] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def decoder_path(self, family: str) -> Path | None:
        stem = TAESD_NAMES.get(family)
        if stem is None:
            return None
        for d in self.dirs:
            for suffix in TAESD_SUFFIXES:
                candidate = Path(d) / f"{stem}{suffix}"
                if candidate.is_file():
                    return candidate
        return None

    def _decoder(self, family: str) -> TAESDDecoder | None:
        with self._lock:
            if family not in self._decoders:
                path = self.decoder_path(family)
                decoder = None
                if path is not None:
                    try:
                        decoder = load_decoder(path)
                        log.info("live previews for %s latents use TAESD from %s", family, path)
                    except Exception as exc:  # a bad file must not break sampling
                        log.warning("cannot load TAESD decoder %s (%s); using latent2rgb previews", path, exc)
                elif self.method == "taesd":
                    log.warning("--preview-method taesd: no %s.* in %s; using latent2rgb previews",
                                TAESD_NAMES.get(family, "taesd_decoder"), ", ".join(map(str, self.dirs)))
                self._decoders[family] = decoder
            return self._decoders[family]

    def latent_image(self, preview: LatentPreview) -> Image.Image | None:
        samples = preview.samples
        if not isinstance(samples, torch.Tensor) or samples.dim() not in (3, 4) or samples.numel() == 0:
            return None
        first = samples[0] if samples.dim() == 4 else samples
        with torch.inference_mode():
            decoder = self._decoder(preview.family) if self.method in ("auto", "taesd") else None
            if decoder is not None and first.shape[0] == decoder.latent_channels:
                decoder.to(first.device)
                pixels = decoder(first[None].float())[0].clamp(0, 1).permute(1, 2, 0)
            else:
                pixels = latent_to_rgb(first, preview.family)
            return None if pixels is None else tensor_to_pil(pixels)

    def encode(self, preview: Any) -> tuple[int, bytes] | None:
        """(image format, bytes) for a preview, or None when there is nothing to show."""
        if not self.enabled:
            return None
        image: Image.Image | None = None
        max_size = self.max_size
        if isinstance(preview, LatentPreview):
            image = self.latent_image(preview)
        elif isinstance(preview, Image.Image):
            image = preview
        elif isinstance(preview, (tuple, list)) and len(preview) >= 2 and isinstance(preview[1], Image.Image):
            # ComfyUI plugins pass ("JPEG", PIL image, max_size)
            image = preview[1]
            if len(preview) >= 3 and isinstance(preview[2], int) and preview[2] > 0:
                max_size = min(max_size, preview[2])
        if image is None:
            return None
        return FORMAT_JPEG, encode_jpeg(image, max_size)


class RateLimiter:
    """Lets through at most one event per `interval` seconds per key (a prompt id)."""

    def __init__(self, interval: float, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
