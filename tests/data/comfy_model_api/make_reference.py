"""Reference values for tests/test_compat_model_modules.py, computed by ComfyUI itself.

    /work/ref/venv/bin/python tests/data/comfy_model_api/make_reference.py tests/data/comfy_model_api/reference.json

(ComfyUI a125cd84 at /work/ref/ComfyUI, CPU torch 2.13.0.) For each case of cases.py it records
comfy.lora.calculate_weight on a float32 copy of the weight; for the sampling tables ComfyUI's
comfy.model_sampling classes (ModelSamplingDiscrete + EPS / V_PREDICTION, zero terminal SNR,
ModelSamplingDiscreteFlow + CONST, ModelSamplingFlux + CONST): sigma_min / sigma_max,
timestep(SIGMAS), percent_to_sigma(PERCENTS), calculate_input / calculate_denoised / noise_scaling
on a fixed tensor; and ComfyUI's SD1 tokenizer with return_word_ids on PROMPTS.
"""
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMFY = Path(os.environ.get("COMFYUI", "/work/ref/ComfyUI"))


def main(out: str) -> None:
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(COMFY))
    sys.path.insert(0, str(HERE))
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.lora
    import comfy.model_sampling as ms
    import comfy.sd1_clip
    import comfy.weight_adapter as wa
    import cases

    adapters = {"lora": wa.LoRAAdapter, "loha": wa.LoHaAdapter, "lokr": wa.LoKrAdapter, "glora": wa.GLoRAAdapter}
    weights = {}
    for name, weight, patches in cases.weight_cases():
        converted = []
        for strength, (kind, value), strength_model, offset in patches:
            patch = adapters[kind](set(), value) if kind in adapters else (kind, value)
            converted.append((strength, patch, strength_model, offset, None))
        out_w = comfy.lora.calculate_weight(converted, weight.clone(), name)
        weights[name] = out_w.flatten().tolist()

    class Discrete(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    class DiscreteV(ms.ModelSamplingDiscrete, ms.V_PREDICTION):
        pass

    class Flow(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    class Flux(ms.ModelSamplingFlux, ms.CONST):
        pass

    def config(settings):
        return type("Config", (), {"sampling_settings": settings})()

    made = {"discrete_eps": Discrete(), "discrete_v": DiscreteV(), "discrete_zsnr": Discrete(config({"zsnr": True})),
            "flow": Flow(config({"shift": 3.0})), "flux": Flux(config({"shift": 1.15}))}
    x = cases.t(40, 2, 4, 3, 3, scale=1.0)
    out_x = cases.t(41, 2, 4, 3, 3, scale=1.0)
    sampling = {}
    for name, s in made.items():
        sigma = torch.tensor([0.5, 0.8] if name in ("flow", "flux") else [3.0, 0.7])
        sampling[name] = {
            "sigma_min": float(s.sigma_min), "sigma_max": float(s.sigma_max),
            "timestep": s.timestep(torch.tensor(cases.SIGMAS if name not in ("flow", "flux") else [0.9, 0.5, 0.1])).tolist(),
            "percent_to_sigma": [float(s.percent_to_sigma(p)) for p in cases.PERCENTS],
            "calculate_input": s.calculate_input(sigma, x).flatten().tolist(),
            "calculate_denoised": s.calculate_denoised(sigma, out_x, x).flatten().tolist(),
            "noise_scaling": s.noise_scaling(sigma, out_x, x).flatten().tolist(),
        }
    tokenizer = comfy.sd1_clip.SD1Tokenizer()
    tokens = {p: [[[int(tok), float(w), int(i)] for tok, w, i in window]
                  for window in tokenizer.tokenize_with_weights(p, return_word_ids=True)["l"]] for p in cases.PROMPTS}
    Path(out).write_text(json.dumps({"weights": weights, "sampling": sampling, "tokens": tokens}))


if __name__ == "__main__":
    main(sys.argv[1])
