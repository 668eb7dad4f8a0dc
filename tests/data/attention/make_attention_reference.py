"""Record ComfyUI's CPU attention outputs for tests/test_attention_parity.py.

    /work/ref/venv/bin/python tests/data/attention/make_attention_reference.py /work/ref/ComfyUI

(ComfyUI a125cd84, CPU torch 2.13.0, 2 threads.) Imports ComfyUI and calls the functions it uses
on the CPU: `attention_sub_quad` (the UNet's attention), `attention_basic` (the text encoders')
and the VAE's `normal_attention`; and ComfyUI's whole UNetModel over the tiny SD2.1- and
SDXL-layout UNets. Inputs come from `attention_inputs` in
tests/test_attention_parity.py (seeded torch.randn), so only outputs are written:
tests/data/attention/comfyui_attention.safetensors. Nothing of ComfyUI is copied here.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
OUT = HERE / "comfyui_attention.safetensors"


def main(comfy_root: str) -> None:
    sys.path.insert(0, comfy_root)
    sys.path.append(str(REPO))   # after ComfyUI: our `diffusion` only makes the tiny UNets' weights
    import comfy.cli_args

    comfy.cli_args.args.cpu = True   # as `main.py --cpu`
    import torch
    from comfy.ldm.modules import attention as comfy_attention
    from comfy.ldm.modules.diffusionmodules import model as comfy_vae
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("attention_cases", REPO / "tests" / "attention_cases.py")
    cases = importlib.util.module_from_spec(spec)
    sys.modules["attention_cases"] = cases   # its dataclass looks its module up
    spec.loader.exec_module(cases)

    functions = {"sub_quad": comfy_attention.attention_sub_quad, "basic": comfy_attention.attention_basic}
    out = unets(cases)
    with torch.no_grad():
        for case in cases.CASES:
            q, k, v, mask = cases.inputs(case)
            if case.kind == "vae":
                out[case.name] = comfy_vae.normal_attention(q, k, v)
            else:
                out[case.name] = functions[case.kind](q, k, v, case.heads, mask=mask, attn_precision=case.precision,
                                                      skip_reshape=case.skip_reshape,
                                                      skip_output_reshape=case.skip_reshape)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT))
    print(f"wrote {len(out)} outputs to {OUT}")


def unets(cases) -> dict:
    """ComfyUI's UNetModel (config detected from the keys, heads as its SD2/SDXL configs set them)
    holding the tiny SD2.1-layout and SDXL-layout UNets of tests/models_tiny.py, one call each on
    the inputs of `cases.unet_inputs`."""
    import torch
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    spec = importlib.util.spec_from_file_location("lg_models_tiny", REPO / "tests" / "models_tiny.py")
    models_tiny = importlib.util.module_from_spec(spec)
    sys.modules["lg_models_tiny"] = models_tiny
    spec.loader.exec_module(models_tiny)
    prefix = "model.diffusion_model."
    out = {}
    for style in cases.UNET_STYLES:
        sd = models_tiny.tiny_unet_state_dict(style, seed=cases.UNET_SEED)
        config = comfy.model_detection.detect_unet_config(sd, prefix)
        config.update(num_heads=-1, num_head_channels=64)
        unet = UNetModel(**config, device="cpu", operations=comfy.ops.disable_weight_init)
        unet.load_state_dict({k[len(prefix):]: v for k, v in sd.items()})
        x, t, context, y = cases.unet_inputs(models_tiny.tiny_unet_config(style))
        with torch.no_grad():
            out[f"unet_{style}"] = unet.eval()(x, t, context=context, y=y)
    return out


if __name__ == "__main__":
    main(sys.argv[1])
