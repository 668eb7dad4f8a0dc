"""Keep `import torchvision` working where torchvision's compiled ops cannot load.

spandrel (the upscale-model loader) depends on torchvision, and transformers imports torchvision
whenever it is installed. On a CPU-only torch next to a torchvision wheel built for CUDA (the only
build some package indexes serve for a given torch), torchvision's C++ library fails to load,
which torchvision tolerates, but its import then registers meta kernels for `torchvision::nms`
and `torchvision::qnms` and dies with "operator torchvision::nms does not exist". Nothing we run
needs those operators (non-maximum suppression of detection boxes), only the import: so where the
library cannot load we declare the two operator schemas, without kernels, before anything imports
torchvision. Where it loads, nothing is declared and torchvision registers its own.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_declared: torch.library.Library | None = None  # must stay referenced, or the schemas are dropped


def _extension(package_dir: Path) -> Path | None:
    return next(iter(sorted(package_dir.glob("_C.*"))), None)


def ensure_importable() -> None:
    global _declared
    if _declared is not None or "torchvision" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    library = _extension(Path(next(iter(spec.submodule_search_locations))))
    if library is not None:
        try:
            torch.ops.load_library(str(library))  # what torchvision itself does first
            return
        except (OSError, RuntimeError):
            pass
    declared = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        declared.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declared = declared
