"""Compute what ComfyUI makes of checkpoint marker keys, for tests/test_checkpoint_markers.py.

How the committed file was made (ComfyUI a125cd84 at /work/ref/ComfyUI, its venv, CPU torch 2.13.0):

    /work/ref/venv/bin/python tests/data/markers/make_marker_sigmas.py /work/ref/ComfyUI

For each case below, the marker tensors (and, for SD2, the probe tensor of the standard-deviation
rule) are handed to ComfyUI's own `model_type(state_dict)` of the family's class in
comfy/supported_models.py (SD15, SD20, SDXL, SDXLRefiner; configured from the real released
configs), and `comfy.model_base.model_sampling(config, model_type)` builds the model sampling
ComfyUI would use. Written to tests/data/markers/comfyui_marker_sigmas.safetensors:
`<case>.sigmas` (ComfyUI's `sigmas` buffer, float32, 1000 values), `<case>.in.<key>` the exact
marker/probe tensors given to ComfyUI, and in the metadata ("cases", JSON) per case the family,
ComfyUI's model type name, the model sampling's classes from comfy.model_sampling (time axis,
then prediction), sigma_data and the latent format's
class name. Nothing from ComfyUI is copied; this script imports and calls it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SD2_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def probe(sample_std: float) -> torch.Tensor:
    """320 values (the real norm1.bias width) with exactly this sample (n-1) standard deviation."""
    values = torch.linspace(-1.0, 1.0, 320) ** 3
    return values / values.std(unbiased=True) * sample_std


EMPTY = torch.tensor([])
# case -> (family, marker and probe tensors of the file)
CASES = {
    "sdxl_plain": ("sdxl", {}),
    "sdxl_v_pred": ("sdxl", {"v_pred": EMPTY}),
    "sdxl_v_pred_ztsnr": ("sdxl", {"v_pred": EMPTY, "ztsnr": EMPTY}),
    "sdxl_ztsnr_alone": ("sdxl", {"ztsnr": EMPTY}),
    "sdxl_playground_25": ("sdxl", {"edm_mean": torch.randn(1, 4, 1, 1, generator=torch.Generator().manual_seed(0)),
                                    "edm_std": torch.rand(1, 4, 1, 1, generator=torch.Generator().manual_seed(1))}),
    "sdxl_edm_vpred": ("sdxl", {"edm_vpred.sigma_max": torch.tensor(160.0), "edm_vpred.sigma_min": torch.tensor(0.01),
                                "v_pred": EMPTY}),
    "sdxl_edm_vpred_max_only": ("sdxl", {"edm_vpred.sigma_max": torch.tensor(200.0)}),
    "sd15_v_pred_ztsnr": ("sd15", {"v_pred": EMPTY, "ztsnr": EMPTY}),
    "sdxl_refiner_v_pred": ("sdxl_refiner", {"v_pred": EMPTY}),
    # SD2: population std 0.0899 < 0.09 < sample std 0.0901, so only the population rule says eps
    "sd2_std_between": ("sd2", {SD2_PROBE: probe(0.0901)}),
    "sd2_std_high": ("sd2", {SD2_PROBE: probe(0.12)}),
    "sd2_std_low_v_pred_marker": ("sd2", {SD2_PROBE: probe(0.03), "v_pred": EMPTY}),
}


def main(comfy_root: str) -> None:
    sys.path.insert(0, comfy_root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as `main.py --cpu`: this torch has no CUDA
    import comfy.model_base as model_base
    import comfy.supported_models as supported

    classes = {"sd15": supported.SD15, "sd2": supported.SD20, "sdxl": supported.SDXL,
               "sdxl_refiner": supported.SDXLRefiner}
    in_channels = {"sd15": 4, "sd2": 4, "sdxl": 4, "sdxl_refiner": 4}
    tensors, meta = {}, {}
    for case, (family, markers) in CASES.items():
        cls = classes[family]
        config = cls({**cls.unet_config, "in_channels": in_channels[family]})
        model_type = config.model_type(dict(markers), "model.diffusion_model.")
        sampling = model_base.model_sampling(config, model_type)
        tensors[f"{case}.sigmas"] = sampling.sigmas.float().contiguous()
        for key, value in markers.items():
            tensors[f"{case}.in.{key}"] = value.contiguous()
        meta[case] = {"family": family, "model_type": model_type.name,
                      "classes": [c.__name__ for c in type(sampling).__mro__ if c.__module__ == "comfy.model_sampling"],
                      "sigma_data": float(sampling.sigma_data),
                      "latent_format": type(config.latent_format).__name__,
                      "zsnr": bool(getattr(sampling, "zsnr", False))}
    from safetensors.torch import save_file

    out = Path(__file__).with_name("comfyui_marker_sigmas.safetensors")
    save_file(tensors, str(out), metadata={"cases": json.dumps(meta)})
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/ref/ComfyUI")
