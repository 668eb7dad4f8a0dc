"""Inputs shared by make_reference.py (run under ComfyUI) and tests/test_compat_model_modules.py
(run under LatentGraph): every tensor comes from a seeded torch.Generator, so both sides build the
same values. Only torch is imported here."""
import torch


def t(seed: int, *shape, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def weight_cases():
    """(name, weight, [(strength, patch, strength_model, offset), ...]) with the patch in ComfyUI's
    legacy tuple form ("lora", weights) etc., which both sides accept."""
    w_lin = t(1, 8, 6, scale=1.0)
    w_conv = t(2, 8, 6, 3, 3, scale=1.0)
    return [
        ("lora_alpha", w_lin, [(0.7, ("lora", (t(3, 8, 2), t(4, 2, 6), 4.0, None, None, None)), 1.0, None)]),
        ("lora_no_alpha_two_patches", w_lin, [(1.0, ("lora", (t(5, 8, 3), t(6, 3, 6), None, None, None, None)), 1.0, None),
                                              (-0.5, ("lora", (t(7, 8, 3), t(8, 3, 6), 1.5, None, None, None)), 1.0, None)]),
        ("locon_conv", w_conv, [(1.2, ("lora", (t(9, 8, 2, 1, 1), t(10, 2, 6, 3, 3), 2.0, None, None, None)), 1.0, None)]),
        ("lora_tucker_mid", w_conv, [(0.9, ("lora", (t(11, 8, 2, 1, 1), t(12, 2, 6, 1, 1), 2.0, t(13, 2, 2, 3, 3), None,
                                                      None)), 1.0, None)]),
        ("lora_dora", w_lin, [(0.6, ("lora", (t(14, 8, 2), t(15, 2, 6), 2.0, None, t(16, 8, 1, scale=1.0).abs() + 0.5,
                                              None)), 1.0, None)]),
        ("loha", w_lin, [(0.8, ("loha", (t(17, 8, 2), t(18, 2, 6), 2.0, t(19, 8, 2), t(20, 2, 6), None, None, None)), 1.0,
                          None)]),
        ("loha_tucker", w_conv, [(1.0, ("loha", (t(21, 2, 8), t(22, 2, 6), 2.0, t(23, 2, 8), t(24, 2, 6), t(25, 2, 2, 3, 3),
                                                  t(26, 2, 2, 3, 3), None)), 1.0, None)]),
        ("lokr_full", w_lin, [(0.5, ("lokr", (t(27, 2, 3), t(28, 4, 2), None, None, None, None, None, None, None)), 1.0,
                               None)]),
        ("lokr_factored", w_conv, [(1.1, ("lokr", (t(29, 2, 2), None, 3.0, None, None, t(30, 4, 2), t(31, 2, 27), None,
                                                    None)), 1.0, None)]),
        ("glora", w_lin, [(0.9, ("glora", (t(32, 6, 2), t(33, 2, 6), t(34, 8, 2), t(35, 2, 6), 2.0, None)), 1.0, None)]),
        ("diff_and_strength_model", w_lin, [(0.5, ("diff", (t(36, 8, 6),)), 0.8, None)]),
        ("set", w_lin, [(1.0, ("set", (t(37, 8, 6),)), 1.0, None)]),
        ("diff_on_offset", w_lin, [(2.0, ("diff", (t(38, 3, 6),)), 1.0, (0, 2, 3))]),
    ]


SAMPLING = {"discrete_eps": {}, "discrete_v": {}, "discrete_zsnr": {"zsnr": True}, "flow": {"shift": 3.0},
            "flux": {"shift": 1.15}}
SIGMAS = [14.6, 3.0, 0.5, 0.03]
PERCENTS = [0.0, 0.25, 0.5, 0.9, 1.0]
PROMPTS = ["a photo of a cat", "a (red:1.3) house, ((blue sky))", "embedding:nothing here \\(escaped\\)",
           "a very " + "long " * 80 + "prompt"]
