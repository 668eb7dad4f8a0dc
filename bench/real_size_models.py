"""Real-size SD files with random weights, for the benchmarks (no weights can be downloaded).

    write_checkpoint(path, family, dtype) -> path   SD1.5, SD2.1 or SDXL base in the released layout
    write_sd15_checkpoint(path, dtype=torch.float32) -> path   the v1-5-pruned-emaonly layout:
        1131 tensors, 1.07e9 parameters (4.27 GB in fp32, like the released file), every key and
        shape of the real file; UNet, VAE and CLIP-L built by our own classes and filled by
        tests.models_tiny.randomize_ (1/sqrt(fan_in) matrices, norms near 1), so activations stay
        O(1) through all the layers and the decoded image is a real, unsaturated picture of noise.
    write_sd15_lora(path, rank=32) -> path   a kohya LoRA over every attention and MLP projection
        of that UNet and text encoder (the 264 modules of the layout in shared/spec/keys).

Files are written once and reused while their parameters match (safetensors metadata).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.models_tiny import randomize_
from tests.paths import SPEC_KEYS

FORMAT = "latentgraph-bench-v2"


def _up_to_date(path: Path, **params) -> bool:
    if not path.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:   # files appear only complete (written, then renamed)
        meta = f.metadata() or {}
    return meta == {"format": FORMAT, **{k: str(v) for k, v in params.items()}}


def _save(path: Path, sd: dict[str, torch.Tensor], **params) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(partial),
              metadata={"format": FORMAT, **{k: str(v) for k, v in params.items()}})
    partial.replace(path)
    return path


# family: (UNet config, text encoder class), the released architectures
FAMILIES = {"sd15": ("sd15", "SD1TextEncoder"), "sd21": ("sd21", "SD2TextEncoder"),
            "sdxl": ("sdxl_base", "SDXLTextEncoder")}


def write_checkpoint(path: str | Path, family: str = "sd15", dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> Path:
    """A whole checkpoint of `family` (FAMILIES) in its released file's layout: every key and shape
    of shared/spec/keys' v1-5, 768-v-ema (SD2.1) or sd_xl_base_1.0 listing."""
    from diffusion import text_encoders
    from diffusion.unet import UNET_PREFIX, UNetConfig, UNetModel
    from diffusion.vae import AutoencoderKL, VAEConfig

    path = Path(path)
    params = {"kind": "checkpoint", "family": family, "dtype": str(dtype), "seed": seed}
    if _up_to_date(path, **params):
        return path
    unet_config, text_class = FAMILIES[family]
    sd: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        # one component at a time, each cast to the file's dtype before the next is built
        unet = randomize_(UNetModel(getattr(UNetConfig, unet_config)()), seed)
        sd.update({UNET_PREFIX + k: v.to(dtype) for k, v in unet.state_dict().items()})
        del unet
        vae = randomize_(AutoencoderKL(VAEConfig.sd()), seed + 1)
        sd.update({"first_stage_model." + k: v.to(dtype) for k, v in vae.state_dict().items()})
        del vae
        text = randomize_(getattr(text_encoders, text_class)(), seed + 2)
        sd.update({k: v if not v.is_floating_point() else v.to(dtype)
                   for k, v in text.state_dict_original().items()})
        del text
    return _save(path, sd, **params)


def write_sd15_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    return write_checkpoint(path, "sd15", dtype, seed)


def write_sd15_lora(path: str | Path, rank: int = 32, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """kohya names for every Linear / 1x1 conv projection the SD1.5 layout's LoRAs patch."""
    import json

    path = Path(path)
    params = {"kind": "lora", "rank": rank, "dtype": str(dtype), "seed": seed}
    if _up_to_date(path, **params):
        return path
    rows = json.loads((SPEC_KEYS / "sd15_lora_kohya_full.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, _dtype in rows:
        if key.endswith(".alpha"):
            sd[key] = torch.tensor(float(rank), dtype=dtype)
            continue
        shape = list(shape)
        if key.endswith("lora_down.weight"):
            shape[0] = rank
        elif key.endswith("lora_up.weight"):
            shape[1] = rank
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        sd[key] = (torch.randn(shape, generator=gen) / fan_in ** 0.5 * (0.1 if "up" in key else 1.0)).to(dtype)
    return _save(path, sd, **params)
