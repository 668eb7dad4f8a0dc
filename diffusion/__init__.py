"""Model code: networks, checkpoints, samplers."""
from diffusion.torchvision_ops import ensure_importable as _ensure_torchvision_importable

_ensure_torchvision_importable()
