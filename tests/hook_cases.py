"""Workflows of the hooks nodes run by tests/test_hooks.py here and, for its reference latents,
by tests/data/hooks/make_reference.py in ComfyUI (which imports this file: keep it free of
LatentGraph imports beyond tests.models_tiny).

Each case is a small graph of node calls (`N(class name, inputs)`, `N(...)[i]` for output i)
giving the MODEL (default: checkpoint A's) and the positive and negative conditioning of one
KSampler run (SETTINGS); "baseline" names the case it must differ from (default: "plain").
Placeholders: "<POS>", "<NEG>", "<POS2>", "<POS3>", "<NEG2>" are seeded random prompts
[1, 77, 768], "<MODEL>" / "<CLIP>" checkpoint A's MODEL and CLIP (a one-layer CLIP-L),
"<MASK_LEFT>" / "<MASK_TOP>" pixel masks, "<LORA>" the LoRA file, "<CKPT_B>" checkpoint B.
"""
from __future__ import annotations

from pathlib import Path

import torch

SETTINGS = {"steps": 4, "cfg": 6.0, "sampler": "euler", "scheduler": "normal", "seed": 42, "latent": [1, 4, 16, 16]}
LORA = "hook_lora.safetensors"
CKPT_A, CKPT_B = "hooks_a.safetensors", "hooks_b.safetensors"
RANK = 4
PROMPT_SEEDS = {"<POS>": 1, "<NEG>": 2, "<POS2>": 3, "<POS3>": 4, "<NEG2>": 5}


class N:
    """One node call; evaluated once per workflow however many inputs use it."""

    def __init__(self, node: str, **inputs):
        self.node, self.inputs = node, inputs

    def __getitem__(self, index: int) -> Out:
        return Out(self, index)


class Out:
    def __init__(self, call: N, index: int):
        self.call, self.index = call, index


def prompt(seed: int) -> list:
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


def masks() -> dict:
    left = torch.zeros(1, 128, 128)
    left[:, :, :64] = 1.0
    top = torch.zeros(1, 128, 128)
    top[:, :40, 10:100] = 1.0  # off the 8-pixel grid: the latent-size mask is fractional at its edges
    return {"<MASK_LEFT>": left, "<MASK_TOP>": top}


def placeholders() -> dict:
    return {**{k: prompt(s) for k, s in PROMPT_SEEDS.items()}, **masks(), "<LORA>": LORA, "<CKPT_B>": CKPT_B}


def run_call(call: N, run_node, values: dict, memo: dict) -> tuple:
    if id(call) not in memo:
        memo[id(call)] = tuple(run_node(call.node, **{k: evaluate(v, run_node, values, memo)
                                                     for k, v in call.inputs.items()}))
    return memo[id(call)]


def evaluate(value, run_node, values: dict, memo: dict):
    """An input's value: a node's output (run through run_node(name, **inputs) -> tuple), a
    placeholder's value, or the value itself."""
    if isinstance(value, Out):
        return run_call(value.call, run_node, values, memo)[value.index]
    if isinstance(value, N):
        return run_call(value, run_node, values, memo)[0]
    if isinstance(value, str) and value.startswith("<"):
        return values[value]
    return value


def inputs(case: dict, model, clip, run_node, values: dict) -> tuple:
    """(MODEL, positive, negative) of a case; `model` and `clip` are checkpoint A's ("<MODEL>",
    "<CLIP>")."""
    memo: dict = {}
    values = {**values, "<MODEL>": model, "<CLIP>": clip}
    return tuple(evaluate(case.get(k, "<MODEL>"), run_node, values, memo) for k in ("model", "positive", "negative"))


def _cases() -> dict:
    lora = N("CreateHookLora", lora_name="<LORA>", strength_model=1.0, strength_clip=1.0)
    lora_neg = N("CreateHookLoraModelOnly", lora_name="<LORA>", strength_model=-0.7)
    props = {"strength": 1.0, "set_cond_area": "default"}
    cases = {"plain": {"positive": "<POS>", "negative": "<NEG>"}}

    # a LoRA on the positive prompt only: cond and uncond run with different weights
    cases["lora_positive"] = {"positive": N("ConditioningSetProperties", cond_NEW="<POS>", hooks=lora, **props),
                              "negative": "<NEG>"}

    # keyframes: full strength, then 0.2 from half way; and an interpolated schedule on the
    # positive with another hook group on the negative (the sampler switches groups every step)
    kf = N("CreateHookKeyframe", strength_mult=0.2, start_percent=0.5,
           prev_hook_kf=N("CreateHookKeyframe", strength_mult=1.0, start_percent=0.0))
    cases["keyframes"] = {"positive": N("ConditioningSetProperties", cond_NEW="<POS>", **props,
                                        hooks=N("SetHookKeyframes", hooks=lora, hook_kf=kf)),
                          "negative": "<NEG>"}
    interp = N("CreateHookKeyframesInterpolated", strength_start=1.5, strength_end=0.0, interpolation="ease_in_out",
               start_percent=0.0, end_percent=1.0, keyframes_count=4, print_keyframes=False)
    floats = N("CreateHookKeyframesFromFloats", floats_strength=[0.3, 1.0, 2.0], start_percent=0.2, end_percent=0.8,
               print_keyframes=False)
    cases["keyframes_two_groups"] = {
        "positive": N("ConditioningSetProperties", cond_NEW="<POS>", **props,
                      hooks=N("SetHookKeyframes", hooks=lora, hook_kf=interp)),
        "negative": N("ConditioningSetProperties", cond_NEW="<NEG>", **props,
                      hooks=N("SetHookKeyframes", hooks=lora_neg, hook_kf=floats))}

    # sampling ranges: one prompt before 0.3, a masked, hooked one between 0.3 and 0.7, the
    # first again after
    ranges = N("ConditioningTimestepsRange", start_percent=0.3, end_percent=0.7)
    before = N("ConditioningSetProperties", cond_NEW="<POS>", **props, timesteps=ranges[1])
    middle = N("ConditioningSetPropertiesAndCombine", cond=before, cond_NEW="<POS2>", strength=0.7,
               set_cond_area="mask bounds", mask="<MASK_TOP>", hooks=lora, timesteps=ranges[0])
    after = N("ConditioningSetPropertiesAndCombine", cond=middle, cond_NEW="<POS>", **props, timesteps=ranges[2])
    cases["timesteps_range"] = {"positive": after, "negative": "<NEG>"}

    # pairs: a masked hooked pair, a second pair in a box for part of the run, combined, and a
    # hooked default pair that covers what the others leave
    a = N("PairConditioningSetProperties", positive_NEW="<POS>", negative_NEW="<NEG>", strength=1.0,
          set_cond_area="default", mask="<MASK_LEFT>", hooks=lora)
    b = N("PairConditioningSetProperties", positive_NEW="<POS2>", negative_NEW="<NEG2>", strength=0.8,
          set_cond_area="mask bounds", mask="<MASK_TOP>", timesteps=(0.0, 0.6))
    both = N("PairConditioningCombine", positive_A=a[0], negative_A=a[1], positive_B=b[0], negative_B=b[1])
    final = N("PairConditioningSetDefaultCombine", positive=both[0], negative=both[1], positive_DEFAULT="<POS3>",
              negative_DEFAULT="<NEG>", hooks=lora_neg)
    cases["pairs_default"] = {"positive": final[0], "negative": final[1]}
    with_props = N("PairConditioningSetPropertiesAndCombine", positive="<POS>", negative="<NEG>",
                   positive_NEW="<POS2>", negative_NEW="<NEG2>", strength=0.5, set_cond_area="default",
                   mask="<MASK_LEFT>", hooks=N("CombineHooks2", hooks_A=lora, hooks_B=lora_neg))
    single_default = N("ConditioningSetDefaultCombine", cond=with_props[0], cond_DEFAULT="<POS3>", hooks=lora)
    cases["pair_props_combine"] = {"positive": single_default, "negative": with_props[1]}

    # a whole checkpoint as a hook (B's weights minus A's, at 0.6) on the positive
    as_lora = N("CreateHookModelAsLoraModelOnly", ckpt_name="<CKPT_B>", strength_model=0.6)
    cases["model_as_lora"] = {"positive": N("ConditioningSetProperties", cond_NEW="<POS>", hooks=as_lora, **props),
                              "negative": "<NEG>"}

    # hooks over a MODEL that already carries a LoRA: hook weights go on top of the patched ones,
    # and a checkpoint hook still measures against the unpatched weights
    cases["hooks_over_lora_model"] = {
        "model": N("LoraLoaderModelOnly", model="<MODEL>", lora_name="<LORA>", strength_model=0.5),
        "positive": N("ConditioningSetProperties", cond_NEW="<POS>", hooks=lora_neg, **props),
        "negative": N("ConditioningSetProperties", cond_NEW="<NEG>", hooks=as_lora, **props)}

    # CLIP hooks: the text encoder encodes the positive with the LoRA (CLIP strength 0.8) and the
    # conditioning carries the hook to the sampler; scheduled, once per keyframe range
    clip_lora = N("CreateHookLora", lora_name="<LORA>", strength_model=1.0, strength_clip=0.8)
    negative = N("CLIPTextEncode", text="blurry, low quality", clip="<CLIP>")
    hooked_clip = N("SetClipHooks", clip="<CLIP>", apply_to_conds=True, schedule_clip=False, hooks=clip_lora)
    cases["clip_plain"] = {"positive": N("CLIPTextEncode", text="a red house by a lake", clip="<CLIP>"),
                           "negative": negative}
    cases["clip_hooks"] = {"positive": N("CLIPTextEncode", text="a red house by a lake", clip=hooked_clip),
                           "negative": negative, "baseline": "clip_plain"}
    kf_clip = N("CreateHookKeyframe", strength_mult=0.3, start_percent=0.5,
                prev_hook_kf=N("CreateHookKeyframe", strength_mult=1.0, start_percent=0.0))
    scheduled_clip = N("SetClipHooks", clip="<CLIP>", apply_to_conds=True, schedule_clip=True,
                       hooks=N("SetHookKeyframes", hooks=clip_lora, hook_kf=kf_clip))
    cases["clip_scheduled"] = {"positive": N("CLIPTextEncode", text="a red house by a lake", clip=scheduled_clip),
                               "negative": negative, "baseline": "clip_hooks"}
    return cases


CASES = _cases()


# ---------------------------------------------------------------------------------------------
# files


def write_lora(path: Path, checkpoint: dict, seed: int = 7) -> dict:
    """A kohya LoRA (rank 4, alpha 4) for every linear and conv weight of the checkpoint's UNet and
    text encoder layers, up and down 0.1 * N(0, 1)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key in sorted(checkpoint):
        w = checkpoint[key]
        if not key.endswith(".weight") or w.ndim not in (2, 4):
            continue
        if key.startswith("model.diffusion_model."):
            name = "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
        elif key.startswith("cond_stage_model.transformer.text_model.encoder.layers."):
            name = "lora_te_" + key[len("cond_stage_model.transformer."):-len(".weight")].replace(".", "_")
        else:
            continue
        up_shape = (w.shape[0], RANK) + ((1, 1) if w.ndim == 4 else ())
        down_shape = (RANK, w.shape[1]) + tuple(w.shape[2:])
        sd[f"{name}.lora_up.weight"] = 0.1 * torch.randn(up_shape, generator=gen)
        sd[f"{name}.lora_down.weight"] = 0.1 * torch.randn(down_shape, generator=gen)
        sd[f"{name}.alpha"] = torch.tensor(float(RANK))
    save_file(sd, str(path))
    return sd


def write_files(folder: Path) -> dict[str, Path]:
    """Checkpoints A (seed 0) and B (seed 1) and the LoRA, in `folder`."""
    from safetensors.torch import load_file

    from tests.models_tiny import write_tiny_full_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    paths = {CKPT_A: folder / CKPT_A, CKPT_B: folder / CKPT_B, LORA: folder / LORA}
    write_tiny_full_checkpoint(paths[CKPT_A], "sd15", seed=0)
    write_tiny_full_checkpoint(paths[CKPT_B], "sd15", seed=1)
    write_lora(paths[LORA], load_file(str(paths[CKPT_A])))
    return paths
