"""Record ComfyUI's CPU attention outputs for tests/test_attention_parity.py.

    /work/ref/venv/bin/python tests/data/attention/make_attention_reference.py /work/ref/ComfyUI

(ComfyUI a125cd84, CPU torch 2.13.0, 2 threads.) Imports ComfyUI and calls the functions it uses
on the CPU: `attention_sub_quad` (the UNet's attention), `attention_basic` (the text encoders')
and the VAE's `normal_attention`. Inputs come from `attention_inputs` in
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
    out = {}
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


if __name__ == "__main__":
    main(sys.argv[1])
