"""Model and CLIP merging and the attention multipliers: the weights a merged MODEL / CLIP is
loaded with equal the formula, bit for bit (the same float32 multiply and add on each weight);
the merge is weight patches on a clone (the inputs and the shared network are untouched until
the result is loaded, and put back after); merges see and compose with LoRA patches.

Sampling with merged models against ComfyUI's own results is in test_model_patch_parity.py.
"""
import pytest
import torch

from diffusion import text_encoders as te
from diffusion.handles import CLIP
from diffusion.model import DiffusionModel
from diffusion.model_management import load_models_gpu
from diffusion.model_patcher import ModelPatcher
from diffusion.patches import LoRAAdapter
from diffusion.unet import UNetConfig, UNetModel
from tests import model_patch_cases as cases
from tests.models_tiny import randomize_
from tests.node_helpers import builtin_registry, call_in_context

UNET = "diffusion_model."




@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return builtin_registry(tmp_path_factory.mktemp("merging"))


def tiny_model(seed: int) -> ModelPatcher:
    return ModelPatcher(DiffusionModel(randomize_(UNetModel(UNetConfig(**cases.UNET)), seed).eval()), "cpu", "cpu")


def tiny_clip(seed: int) -> CLIP:
    return CLIP(randomize_(te.SD1TextEncoder({"l": te.text_config(64, 2)}), seed))


def loaded(patcher) -> dict:
    """The network's tensors while `patcher` is the loaded one (its patches applied), copied."""
    load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def originals(patcher) -> dict:
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def assert_weights(actual: dict, expected_of, keys):
    for key in keys:
        expected = expected_of(key)
        assert torch.equal(actual[key], expected), f"{key}: max error {(actual[key] - expected).abs().max()}"


def test_model_merge_simple_is_a_weighted_sum_bit_for_bit(registry):
    m1, m2 = tiny_model(7), tiny_model(8)
    w1, w2 = originals(m1), originals(m2)
    (merged,) = call_in_context(registry, "ModelMergeSimple", model1=m1, model2=m2, ratio=0.3)
    assert merged is not m1 and not m1.patches and merged.model is m1.model
    assert all(torch.equal(v, w1[k]) for k, v in m1.model.state_dict().items()), "merging copied or wrote weights"
    assert sorted(merged.patches) == sorted(k for k in w1 if k.startswith(UNET))
    got = loaded(merged)
    assert_weights(got, lambda k: w1[k] * 0.3 + (1.0 - 0.3) * w2[k], [k for k in w1 if k.startswith(UNET)])
    assert not torch.equal(got[UNET + "out.2.weight"], w1[UNET + "out.2.weight"])
    assert all(torch.equal(v, w1[k]) for k, v in loaded(m1).items()), "the plain model was not restored"


def test_model_merge_blocks_takes_each_parts_ratio(registry):
    m1, m2 = tiny_model(7), tiny_model(8)
    w1, w2 = originals(m1), originals(m2)
    ratios = {"input": 0.2, "middle": 0.6, "out": 0.9}
    (merged,) = call_in_context(registry, "ModelMergeBlocks", model1=m1, model2=m2, **ratios)
    got = loaded(merged)

    def ratio(key):
        part = key[len(UNET):]
        if part.startswith("middle_block"):
            return 0.6
        if part.startswith("out"):  # output_blocks.* and the final out.* layers
            return 0.9
        return 0.2  # input_blocks.*, and time_embed.* take the first ratio

    keys = [k for k in w1 if k.startswith(UNET)]
    assert {ratio(k) for k in keys} == {0.2, 0.6, 0.9}
    assert any(k.startswith(UNET + "time_embed") for k in keys)
    assert_weights(got, lambda k: w1[k] * ratio(k) + (1.0 - ratio(k)) * w2[k], keys)


def test_model_merge_subtract_then_add_moves_a_difference_to_a_third_model(registry):
    base, tuned, other = tiny_model(7), tiny_model(8), tiny_model(9)
    wb, wt, wo = originals(base), originals(tuned), originals(other)
    (difference,) = call_in_context(registry, "ModelMergeSubtract", model1=tuned, model2=base, multiplier=0.4)
    got = loaded(difference)
    keys = [k for k in wb if k.startswith(UNET)]
    assert_weights(got, lambda k: wt[k] * 0.4 + (-0.4) * wb[k], keys)  # ComfyUI: (tuned - base) * multiplier
    (moved,) = call_in_context(registry, "ModelMergeAdd", model1=other, model2=difference)
    got = loaded(moved)
    assert_weights(got, lambda k: wo[k] + 1.0 * (wt[k] * 0.4 + (-0.4) * wb[k]), keys)


def test_a_merge_uses_the_second_models_lora_and_a_lora_applies_on_top_of_a_merge(registry):
    m1, m2 = tiny_model(7), tiny_model(8)
    w1, w2 = originals(m1), originals(m2)
    key = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    gen = torch.Generator().manual_seed(4)
    up, down = torch.randn(w1[key].shape[0], 2, generator=gen), torch.randn(2, w1[key].shape[1], generator=gen)
    lora = LoRAAdapter(set(), (up, down, 4.0, None, None, None))  # alpha 4, rank 2: scale 2
    with_lora = m2.clone()
    with_lora.add_patches({key: lora}, 1.5)
    (merged,) = call_in_context(registry, "ModelMergeSimple", model1=m1, model2=with_lora, ratio=0.25)
    on_top = merged.clone()
    on_top.add_patches({key: lora}, -0.5)
    delta = (up.double() @ down.double()) * 2.0
    expected = w1[key].double() * 0.25 + 0.75 * (w2[key].double() + 1.5 * delta)
    got = loaded(merged)[key].double()
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    got = loaded(on_top)[key].double()
    assert (got - (expected - 0.5 * delta)).abs().max() <= 1e-5 * expected.abs().max()
    assert torch.equal(loaded(m2)[key], w2[key])


def test_clip_merges_leave_position_ids_and_logit_scale_and_encode_with_the_merged_weights(registry):
    c1, c2 = tiny_clip(3), tiny_clip(4)
    w1, w2 = originals(c1.patcher), originals(c2.patcher)
    (simple,) = call_in_context(registry, "CLIPMergeSimple", clip1=c1, clip2=c2, ratio=0.7)
    (subtract,) = call_in_context(registry, "CLIPMergeSubtract", clip1=c1, clip2=c2, multiplier=-2.0)
    (add,) = call_in_context(registry, "CLIPMergeAdd", clip1=c1, clip2=c2)
    keys = list(w1)
    for merged, formula in ((simple, lambda k: w1[k] * 0.7 + (1.0 - 0.7) * w2[k]),
                            (subtract, lambda k: w1[k] * -2.0 + 2.0 * w2[k]),
                            (add, lambda k: w1[k] + 1.0 * w2[k])):
        assert all(not k.endswith((".position_ids", ".logit_scale")) for k in merged.patcher.patches)
        assert_weights(loaded(merged.patcher), formula, keys)
    by_hand = tiny_clip(0)
    by_hand.cond_stage_model.load_state_dict({k: w1[k] * 0.7 + (1.0 - 0.7) * w2[k] for k in keys})
    tokens = simple.tokenize("a red house")
    assert torch.equal(simple.encode_from_tokens(tokens), by_hand.encode_from_tokens(tokens))
    assert not torch.equal(c1.encode_from_tokens(tokens), by_hand.encode_from_tokens(tokens))


def test_attention_multipliers_scale_exactly_the_named_projections(registry):
    model, clip = tiny_model(7), tiny_clip(3)
    wm, wc = originals(model), originals(clip.patcher)
    factors = {"q": 1.2, "k": 0.8, "v": 1.1, "out": 0.9}
    (self_attn,) = call_in_context(registry, "UNetSelfAttentionMultiply", model=model, **factors)
    (cross,) = call_in_context(registry, "UNetCrossAttentionMultiply", model=model, **factors)
    (text,) = call_in_context(registry, "CLIPAttentionMultiply", clip=clip, **factors)

    def factor_of(key, names):
        for name, factor in names.items():
            if key.endswith((name + ".weight", name + ".bias")):
                return factor
        return None

    def scaled(weights, names):
        return lambda k: weights[k] * factor_of(k, names) if factor_of(k, names) else weights[k]

    for patched, attn in ((self_attn, "attn1"), (cross, "attn2")):
        names = {f"{attn}.to_q": 1.2, f"{attn}.to_k": 0.8, f"{attn}.to_v": 1.1, f"{attn}.to_out.0": 0.9}
        got = loaded(patched)
        blocks = [k for k in wm if k.endswith(f"{attn}.to_q.weight")]
        assert len([k for k in wm if factor_of(k, names)]) == 5 * len(blocks) > 0  # q, k, v, out and out's bias
        assert_weights(got, scaled(wm, names), wm)
    names = {"self_attn.q_proj": 1.2, "self_attn.k_proj": 0.8, "self_attn.v_proj": 1.1, "self_attn.out_proj": 0.9}
    got = loaded(text.patcher)
    assert len([k for k in wc if factor_of(k, names)]) == 2 * 8  # two layers, weight and bias of four projections
    assert_weights(got, scaled(wc, names), wc)
