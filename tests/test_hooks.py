"""The hooks nodes (CreateHookLora, keyframes, SetClipHooks, Cond/Pair set-props and default
combines, ConditioningTimestepsRange, ...) against ComfyUI and against independent references.

* Sampling parity: the workflows of tests/hook_cases.py (LoRA hook on the positive only, keyframe
  schedules, two hook groups switching every step, sampling ranges with masks and mask bounds,
  pair nodes with default conditioning, a checkpoint as a hook, hooks over a LoRA-patched MODEL,
  SetClipHooks with and without schedule_clip on a one-layer CLIP-L) must give ComfyUI's latents
  (tests/data/hooks/reference.safetensors, made by tests/data/hooks/make_reference.py, see its
  docstring). Tolerance: 1e-4 of the reference latent's largest magnitude (float32, four Euler
  steps at CFG 6 on a random network whose latents reach 350-6000). Measured: every case within
  4.2e-6 of it, as the unhooked baselines are. Each hooked case must differ from its baseline (the
  unhooked run; for the scheduled CLIP, the unscheduled one) by at least 100 times the tolerance,
  and the keyframed run from the unkeyframed one, so a hook that is dropped, applied to the wrong
  prompt or at the wrong strength fails.
* CLIP hooks: SetClipHooks encodes as LoraLoader's CLIP at the same strength (each scheduled
  range at strength x its keyframe), and the plain CLIP encodes as before afterwards.
* A workflow on the CLI: a LoRA hook on a CLIP used for both prompts (apply_to_conds) is the LoRA
  everywhere, so it must sample LoraLoader's latent.
"""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffusion.ksampler import common_ksampler
from diffusion.model_management import load_models_gpu
from diffusion.model_patcher import ModelPatcher
from tests import hook_cases as cases
from tests.node_helpers import checkpoint_session
from tests.paths import REPO, read_reference

REFERENCE = REPO / "tests" / "data" / "hooks" / "reference.safetensors"
RTOL = 1e-4


REF, META = read_reference(REFERENCE)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("hooks")
    paths = cases.write_files(base / "models" / "checkpoints")
    (base / "models" / "loras").mkdir()
    shutil.move(paths[cases.LORA], base / "models" / "loras" / cases.LORA)
    paths[cases.LORA] = base / "models" / "loras" / cases.LORA
    for name, path in paths.items():
        tensors = load_file(str(path)).values()
        mine = [float(sum(t.double().sum() for t in tensors)), float(sum((t.double() ** 2).sum() for t in tensors))]
        assert mine == pytest.approx(META["files"][name], rel=1e-9), \
            f"{name} differs from the file ComfyUI was given (torch's generator changed?)"
    return base


@pytest.fixture(scope="module")
def env(base):
    return checkpoint_session(base, cases.CKPT_A)


def run_node(env, name, **inputs):
    out = env.node(name, **inputs)
    return out["result"] if isinstance(out, dict) else out


def sample(env, positive, negative, model=None) -> torch.Tensor:
    s = cases.SETTINGS
    with torch.inference_mode():
        return common_ksampler(model or env.model, s["seed"], s["steps"], s["cfg"], s["sampler"], s["scheduler"],
                               positive, negative, {"samples": torch.zeros(s["latent"])})["samples"]


def sample_case(env, name: str) -> torch.Tensor:
    model, positive, negative = cases.inputs(cases.CASES[name], env.model, env.clip,
                                             lambda n, **kw: run_node(env, n, **kw), cases.placeholders())
    return sample(env, positive, negative, model)


def tolerance(reference: torch.Tensor) -> float:
    return RTOL * reference.abs().max().item()


@pytest.mark.parametrize("name", list(cases.CASES))
def test_hooked_sampling_matches_comfyui(env, name):
    assert set(META["cases"]) == set(cases.CASES)
    reference = REF[name]
    ours = sample_case(env, name)
    err = (ours - reference).abs().max().item()
    assert err <= tolerance(reference), f"{name}: max difference {err} from ComfyUI's latent"
    if name not in ("plain", "clip_plain"):
        baseline = cases.CASES[name].get("baseline", "plain")
        effect = (reference - REF[baseline]).abs().max().item()
        assert effect >= 100 * tolerance(reference), f"{name} barely differs from {baseline}"


def test_keyframes_change_the_strength_mid_sampling():
    # the schedule (1.0, then 0.2 from half way) gives neither the full-strength run nor the unhooked one
    for other in ("lora_positive", "plain"):
        assert (REF["keyframes"] - REF[other]).abs().max() >= 100 * tolerance(REF["keyframes"])


def test_hook_weights_are_computed_once_per_group_and_the_originals_come_back(env, monkeypatch):
    load_models_gpu([env.model])  # the network as the plain MODEL has it (another test may have patched it)
    before = {k: v.clone() for k, v in env.model.model.state_dict().items()}
    computed = []
    original = ModelPatcher.patch_hook_weight_to_device

    def counting(self, hooks, combined, key, originals, memory_counter=None):
        computed.append(key)
        return original(self, hooks, combined, key, originals)

    monkeypatch.setattr(ModelPatcher, "patch_hook_weight_to_device", counting)
    sample_case(env, "lora_positive")  # groups: the LoRA hook (positive) and none (negative), 4 steps
    assert computed, "the hook's weights were never computed"
    assert len(computed) == len(set(computed)), "hook weights were recomputed although the group was cached"
    after = env.model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a hooked weight stayed on the model"


def test_strength_zero_returns_the_previous_hooks_and_ranges_split_the_run(env):
    (prev,) = run_node(env, "CreateHookLora", lora_name=cases.LORA, strength_model=1.0, strength_clip=1.0)
    (same,) = run_node(env, "CreateHookLora", lora_name=cases.LORA, strength_model=0.0, strength_clip=0.0,
                       prev_hooks=prev)
    assert same is prev
    (both,) = run_node(env, "CreateHookLora", lora_name=cases.LORA, strength_model=0.5, strength_clip=0.0,
                       prev_hooks=prev)
    assert len(both) == 2 and both.hooks[0] == prev.hooks[0]
    assert run_node(env, "ConditioningTimestepsRange", start_percent=0.25, end_percent=0.6) == \
        ((0.25, 0.6), (0.0, 0.25), (0.6, 1.0))
    (combined,) = run_node(env, "CombineHooks8", hooks_C=prev)
    assert combined is prev
    (none,) = run_node(env, "CombineHooks4")
    assert none is None


def test_interpolated_keyframes_follow_the_easing(env):
    (kf,) = run_node(env, "CreateHookKeyframesInterpolated", strength_start=2.0, strength_end=0.0,
                     interpolation="ease_in", start_percent=0.2, end_percent=0.8, keyframes_count=4,
                     print_keyframes=False)
    t = [0.0, 1 / 3, 2 / 3, 1.0]
    assert [k.start_percent for k in kf.keyframes] == pytest.approx([0.2 + 0.6 * x for x in t], abs=1e-6)
    assert [k.strength for k in kf.keyframes] == pytest.approx([2.0 - 2.0 * x * x for x in t], abs=1e-6)
    assert [k.guarantee_steps for k in kf.keyframes] == [1, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# CLIP hooks


def encode(env, clip, text="a red house"):
    (cond,) = env.node("CLIPTextEncode", text=text, clip=clip)
    return cond


def lora_clip(env, strength_clip):
    out = run_node(env, "LoraLoader", model=env.model, clip=env.clip, lora_name=cases.LORA, strength_model=0.0,
                   strength_clip=strength_clip)
    return out[1]


def test_clip_hooks_encode_as_the_lora_and_travel_with_the_conditioning(env):
    plain = encode(env, env.clip)
    (hooks,) = run_node(env, "CreateHookLora", lora_name=cases.LORA, strength_model=1.0, strength_clip=0.8)
    (hooked_clip,) = run_node(env, "SetClipHooks", clip=env.clip, apply_to_conds=True, schedule_clip=False,
                              hooks=hooks)
    hooked = encode(env, hooked_clip)
    expected = encode(env, lora_clip(env, 0.8))
    assert len(hooked) == 1 and hooked[0][1]["hooks"] is hooks
    err = (hooked[0][0] - expected[0][0]).abs().max().item()
    assert err <= 1e-5 * expected[0][0].abs().max().item(), err
    assert (hooked[0][0] - plain[0][0]).abs().max() > 1e-2
    again = encode(env, env.clip)
    assert torch.equal(again[0][0], plain[0][0]), "the plain CLIP kept the hook's weights"
    (quiet_clip,) = run_node(env, "SetClipHooks", clip=env.clip, apply_to_conds=False, schedule_clip=False,
                             hooks=hooks)
    assert "hooks" not in encode(env, quiet_clip)[0][1]


def test_scheduled_clip_encodes_once_per_keyframe_range(env):
    (hooks,) = run_node(env, "CreateHookLora", lora_name=cases.LORA, strength_model=1.0, strength_clip=0.8)
    (kf,) = run_node(env, "CreateHookKeyframe", strength_mult=0.5, start_percent=0.5,
                     prev_hook_kf=run_node(env, "CreateHookKeyframe", strength_mult=1.0, start_percent=0.0)[0])
    (scheduled,) = run_node(env, "SetHookKeyframes", hooks=hooks, hook_kf=kf)
    (clip,) = run_node(env, "SetClipHooks", clip=env.clip, apply_to_conds=True, schedule_clip=True, hooks=scheduled)
    entries = encode(env, clip)
    assert [(e[1]["clip_start_percent"], e[1]["clip_end_percent"]) for e in entries] == [(0.0, 0.5), (0.5, 1.0)]
    for entry, strength in zip(entries, (0.8, 0.4)):
        expected = encode(env, lora_clip(env, strength))[0][0]
        err = (entry[0] - expected).abs().max().item()
        assert err <= 1e-5 * expected.abs().max().item(), (strength, err)
    # unscheduled, the keyframes are dropped from the CLIP's copy: full strength throughout
    (unscheduled,) = run_node(env, "SetClipHooks", clip=env.clip, apply_to_conds=True, schedule_clip=False,
                              hooks=scheduled)
    (single,) = encode(env, unscheduled)
    assert (single[0] - encode(env, lora_clip(env, 0.8))[0][0]).abs().max() <= 1e-5 * single[0].abs().max()


# ---------------------------------------------------------------------------------------------
# a workflow on the CLI


def _workflow(lora_node: dict, clip_ref: list, model_ref: list) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cases.CKPT_A}},
        **lora_node,
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red house", "clip": clip_ref}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip_ref}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": model_ref, "seed": 5, "steps": 3, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/hooks"}},
    }


def test_a_hooks_workflow_runs_on_the_cli_and_equals_the_lora_everywhere(base, env, tmp_path):
    hooked = _workflow({
        "2": {"class_type": "CreateHookLora", "inputs": {"lora_name": cases.LORA, "strength_model": 0.9,
                                                         "strength_clip": 0.7}},
        "8": {"class_type": "SetClipHooks", "inputs": {"clip": ["1", 1], "apply_to_conds": True,
                                                       "schedule_clip": False, "hooks": ["2", 0]}},
    }, ["8", 0], ["1", 0])
    workflow = tmp_path / "hooks_workflow.json"
    workflow.write_text(json.dumps(hooked))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(base), str(workflow)],
                          check=False, capture_output=True, text=True, timeout=240, cwd=base)
    assert proc.returncode == 0, proc.stderr
    (written,) = [line for line in proc.stdout.splitlines() if line.strip()]
    ours = load_file(written)["latent_tensor"]
    assert ours.shape == (1, 4, 8, 8)
    lora_everywhere = _workflow({
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": cases.LORA,
                                                     "strength_model": 0.9, "strength_clip": 0.7}},
    }, ["2", 1], ["2", 0])
    assert env.runtime.executor.run(lora_everywhere).ok
    (reference,) = sorted((base / "output" / "latents").glob("hooks_*.latent"))[-1:]
    expected = load_file(str(reference))["latent_tensor"]
    assert str(reference) != written
    err = (ours - expected).abs().max().item()
    assert err <= RTOL * expected.abs().max().item(), f"hooked workflow differs from LoraLoader's by {err}"
    plain = _workflow({}, ["1", 1], ["1", 0])
    assert env.runtime.executor.run(plain).ok
    (unhooked,) = sorted((base / "output" / "latents").glob("hooks_*.latent"))[-1:]
    assert (load_file(str(unhooked))["latent_tensor"] - ours).abs().max() > 100 * RTOL * expected.abs().max()


# ---------------------------------------------------------------------------------------------
# the plugin API (comfy.hooks)


def test_a_plugins_transformer_options_hook_reaches_only_the_entries_it_is_attached_to(env):
    import comfy.hooks

    seen = []

    def attn2_patch(n, context, value, extra_options):
        seen.append(tuple(extra_options["cond_or_uncond"]))
        return n, context, value

    hook = comfy.hooks.TransformerOptionsHook({"patches": {"attn2_patch": [attn2_patch]}},
                                              hook_scope=comfy.hooks.EnumHookScope.HookedOnly)
    group = comfy.hooks.HookGroup()
    group.add(hook)
    values = cases.placeholders()
    positive = comfy.hooks.set_hooks_for_conditioning(values["<POS>"], group)
    assert "hooks" not in values["<POS>"][0][1], "the input conditioning was modified"
    hooked = sample(env, positive, values["<NEG>"])
    assert seen and set(seen) == {(0,)}, f"the patch saw calls for {sorted(set(seen))}"
    # the patch changes nothing, so the result is the unhooked one
    assert (hooked - REF["plain"]).abs().max() <= tolerance(REF["plain"])
    seen.clear()
    everywhere = comfy.hooks.TransformerOptionsHook({"patches": {"attn2_patch": [attn2_patch]}})
    group = comfy.hooks.HookGroup()
    group.add(everywhere)
    sample(env, comfy.hooks.set_hooks_for_conditioning(values["<POS>"], group), values["<NEG>"])
    assert {0, 1} <= {i for call in seen for i in call}, "an AllConditioning hook must reach the negative too"


def test_comfy_extras_nodes_hooks_has_comfyuis_class_names():
    import comfy_extras.nodes_hooks as extras

    from nodes import hooks as ours

    assert extras.CombineHooks is ours.CombineHooks2 and extras.CombineHooksEight is ours.CombineHooks8
    assert extras.ConditioningSetDefaultAndCombine is ours.ConditioningSetDefaultCombine
    assert extras.NODE_CLASS_MAPPINGS["PairConditioningSetDefaultCombine"] is ours.PairConditioningSetDefaultCombine
    assert extras.NODE_DISPLAY_NAME_MAPPINGS["CreateHookLoraModelOnly"] == "Create Hook LoRA (MO)"
    assert len(extras.NODE_CLASS_MAPPINGS) == 20


def test_a_checkpoint_hook_takes_the_files_weights_even_while_a_lora_patches_that_network(env, base):
    (lora_model,) = run_node(env, "LoraLoaderModelOnly", model=env.model, lora_name=cases.LORA, strength_model=1.0)
    load_models_gpu([lora_model])  # checkpoint A's network now holds A + LoRA
    key = "diffusion_model.input_blocks.0.0.weight"
    on_network = env.model.model.state_dict()[key]
    in_file = load_file(str(base / "models" / "checkpoints" / cases.CKPT_A))["model." + key]
    assert not torch.equal(on_network, in_file), "the LoRA did not reach the weight this test reads"
    (group,) = run_node(env, "CreateHookModelAsLoraModelOnly", ckpt_name=cases.CKPT_A, strength_model=1.0)
    (kind, (weight,)) = group.hooks[0].weights[key]
    assert kind == "model_as_lora" and torch.equal(weight, in_file)
