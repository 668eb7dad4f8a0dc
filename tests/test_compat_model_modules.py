"""ComfyUI's model modules as plugins use them (comfy.sd, comfy.samplers, comfy.sample, comfy.lora,
comfy.model_management, comfy.model_sampling, comfy.sd1_clip, ...): results checked against ComfyUI's
own (tests/data/comfy_model_api/reference.json, made by running ComfyUI; see make_reference.py),
and replacements of module functions reaching the built-in nodes, as in ComfyUI."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import make_runtime

DATA = Path(__file__).parent / "data" / "comfy_model_api"
CKPT = "tiny_sd15.safetensors"


def _cases():
    spec = importlib.util.spec_from_file_location("comfy_model_api_cases", DATA / "cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _cases()


@pytest.fixture(scope="module")
def reference():
    return json.loads((DATA / "reference.json").read_text())


def close(ours, theirs, rtol=2e-6, what=""):
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64).flatten(), torch.as_tensor(theirs, dtype=torch.float64)
    err = (ours - theirs.flatten()).abs().max().item()
    assert err <= rtol * max(1.0, theirs.abs().max().item()), f"{what}: max difference {err}"


# ---------------------------------------------------------------------------------------------
# the maths, against ComfyUI's


@pytest.mark.parametrize("case", [c[0] for c in cases.weight_cases()])
@pytest.mark.parametrize("form", ["adapter", "legacy tuple"])
def test_calculate_weight_matches_comfyui(reference, case, form):
    import comfy.lora
    from diffusion.patches import ADAPTERS

    name, weight, patches = next(c for c in cases.weight_cases() if c[0] == case)
    converted = []
    for strength, (kind, value), strength_model, offset in patches:
        patch = ADAPTERS[kind](set(), value) if form == "adapter" and kind in ADAPTERS else (kind, value)
        converted.append((strength, patch, strength_model, offset, None))
    out = comfy.lora.calculate_weight(converted, weight.clone(), name)
    close(out, reference["weights"][name], what=name)


def test_model_sampling_matches_comfyui(reference):
    import comfy.model_sampling as ms

    class Discrete(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    class DiscreteV(ms.ModelSamplingDiscrete, ms.V_PREDICTION):
        pass

    class Flow(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    class Flux(ms.ModelSamplingFlux, ms.CONST):
        pass

    config = lambda s: type("Config", (), {"sampling_settings": s})()  # noqa: E731
    from diffusion.model_sampling import ModelSamplingDiscrete as Ours
    made = {"discrete_eps": [Discrete(), Ours()], "discrete_v": [DiscreteV(), Ours("v_prediction")],
            "discrete_zsnr": [Discrete(config({"zsnr": True})), Ours(zsnr=True)],
            "flow": [Flow(config({"shift": 3.0}))], "flux": [Flux(config({"shift": 1.15}))]}
    x = cases.t(40, 2, 4, 3, 3, scale=1.0)
    out_x = cases.t(41, 2, 4, 3, 3, scale=1.0)
    for name, samplings in made.items():
        want = reference["sampling"][name]
        flow = name in ("flow", "flux")
        sigma = torch.tensor([0.5, 0.8] if flow else [3.0, 0.7])
        for s in samplings:  # ComfyUI's mix-ins and the engine's own class agree with ComfyUI
            what = f"{name} {type(s).__name__}"
            close(float(s.sigma_min), want["sigma_min"], what=what)
            close(float(s.sigma_max), want["sigma_max"], what=what)
            close(s.timestep(torch.tensor([0.9, 0.5, 0.1] if flow else cases.SIGMAS)), want["timestep"], what=what)
            close([float(s.percent_to_sigma(p)) for p in cases.PERCENTS], want["percent_to_sigma"], what=what)
            close(s.calculate_input(sigma, x), want["calculate_input"], what=what)
            close(s.calculate_denoised(sigma, out_x, x), want["calculate_denoised"], what=what)
            close(s.noise_scaling(sigma, out_x, x), want["noise_scaling"], what=what)
    assert isinstance(Ours(), ms.EPS) and isinstance(Ours("v_prediction"), ms.V_PREDICTION)
    assert not isinstance(Ours(), ms.V_PREDICTION) and not isinstance(Ours(), ms.CONST)


def test_tokenizer_word_ids_match_comfyui(reference):
    from diffusion.text_encoders import SD1TextEncoder

    with torch.device("meta"):
        tokenizer = SD1TextEncoder().make_tokenizer()
    for prompt, want in reference["tokens"].items():
        got = [[[t, w, i] for t, w, i in window] for window in tokenizer.tokenize_with_weights(prompt, True)["l"]]
        assert [[[t, pytest.approx(w), i] for t, w, i in window] for window in want] == got, prompt


# ---------------------------------------------------------------------------------------------
# the objects through a runtime


@pytest.fixture(scope="module")
def rt(tiny_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("compat_models")
    (base / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint("sd15"), base / "models" / "checkpoints" / CKPT)
    runtime = make_runtime(base)
    runtime.ckpt = base / "models" / "checkpoints" / CKPT
    return runtime


def node(rt, name):
    return rt.registry.get(name).cls()


def ksample(rt, model, positive, negative, seed=5, sampler="euler", steps=2):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with torch.inference_mode():
        return node(rt, "KSampler").sample(model, seed, steps, 4.0, sampler, "normal", positive, negative, latent)[0][
            "samples"]


@pytest.fixture(scope="module")
def loaded(rt):
    model, clip, vae = node(rt, "CheckpointLoaderSimple").load_checkpoint(CKPT)
    with torch.inference_mode():
        (pos,) = node(rt, "CLIPTextEncode").encode(clip, "a red barn")
        (neg,) = node(rt, "CLIPTextEncode").encode(clip, "blurry")
    return model, clip, vae, pos, neg


def test_load_checkpoint_guess_config_gives_what_the_loader_node_gives(rt, loaded):
    import comfy.sd
    from comfy.model_patcher import ModelPatcher

    model, clip, vae, pos, neg = loaded
    m2, c2, v2, clip_vision = comfy.sd.load_checkpoint_guess_config(str(rt.ckpt), embedding_directory=[])
    assert isinstance(m2, ModelPatcher) and isinstance(c2, comfy.sd.CLIP) and isinstance(v2, comfy.sd.VAE)
    assert clip_vision is None and m2.model is not model.model  # a fresh load, not the node's cache
    with torch.inference_mode():
        pos2 = c2.encode_from_tokens_scheduled(c2.tokenize("a red barn"))
        assert torch.equal(pos2[0][0], pos[0][0])
        assert torch.equal(ksample(rt, m2, pos, neg), ksample(rt, model, pos, neg))
        latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        assert torch.equal(v2.decode(latent), vae.decode(latent))
    only_model = comfy.sd.load_checkpoint_guess_config(str(rt.ckpt), output_vae=False, output_clip=False)
    assert only_model[1] is None and only_model[2] is None


def test_clip_object_api(loaded):
    _, clip, _, pos, _ = loaded
    with torch.inference_mode():
        tokens = clip.tokenize("a (red:1.2) barn", return_word_ids=True)
        assert set(tokens) == {"l"} and all(len(item) == 3 for item in tokens["l"][0])
        cond = clip.encode_from_tokens(tokens)
        cond2, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        out = clip.encode_from_tokens(tokens, return_dict=True)
        assert torch.equal(cond, cond2) and torch.equal(out["cond"], cond) and torch.equal(out["pooled_output"], pooled)
        assert cond.shape == (1, 77, 768) and pooled.shape == (1, 768)
        plain = clip.encode_from_tokens(clip.tokenize("a red barn"))
        assert torch.equal(plain, pos[0][0])
        # clip_layer on a clone: another layer's output, and the original unchanged
        skip = clip.clone()
        skip.clip_layer(-1)
        assert skip.layer_idx == -1 and clip.layer_idx is None
        assert torch.equal(skip.encode_from_tokens(clip.tokenize("a red barn")), plain)  # 1 layer: -1 is the last
        assert isinstance(clip.cond_stage_model.clip_l.encode_token_weights(tokens["l"])[0], torch.Tensor)
    assert clip.get_key_patches()  # every weight, ComfyUI's [(weight, convert)] form
    assert all(k.startswith("clip_l.transformer.") or k.startswith("clip_l.logit") for k in clip.get_sd())


def test_vae_object_api(loaded):
    import comfy.sd

    _, _, vae, _, _ = loaded
    assert (vae.spacial_compression_decode(), vae.spacial_compression_encode()) == (8, 8)
    assert vae.latent_channels == 4 and vae.first_stage_model is not None
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        latent = vae.encode(image)
        assert latent.shape == (1, 4, 8, 8) and vae.decode(latent).shape == (1, 64, 64, 3)
        assert vae.decode_tiled(latent, tile_x=4, tile_y=4, overlap=1).shape == (1, 64, 64, 3)
        assert vae.encode_tiled(image, tile_x=32, tile_y=32, overlap=8).shape == (1, 4, 8, 8)
        # ComfyUI's constructor from a state dict gives the same decoder
        rebuilt = comfy.sd.VAE(sd=vae.get_sd())
        assert torch.equal(rebuilt.decode(latent), vae.decode(latent))


def test_model_patcher_api(loaded):
    import comfy.model_sampling as ms

    model = loaded[0]
    clone = model.clone()
    assert clone.is_clone(model) and clone.model is model.model and clone.parent is model
    clone.set_model_sampler_cfg_function(lambda args: args["cond"])
    assert "sampler_cfg_function" not in model.model_options
    assert model.get_model_object("model_sampling") is model.model.model_sampling
    assert model.model.latent_format.scale_factor == 0.18215 and model.model.model_type.name == "EPS"

    class Flat(ms.ModelSamplingDiscrete, ms.X0):
        pass

    clone.add_object_patch("model_sampling", Flat())
    assert isinstance(clone.get_model_object("model_sampling"), Flat)
    assert model.model_size() > 0 and model.load_device == torch.device("cpu")
    keys = clone.add_patches({"diffusion_model.out.2.bias": ("diff", (torch.zeros(4),)), "no.such.key": (None,)})
    assert keys == ["diffusion_model.out.2.bias"] and clone.patches_uuid != model.patches_uuid


def test_replaced_comfy_sample_sample_changes_the_ksampler_node(rt, loaded, monkeypatch):
    import comfy.sample

    model, _, _, pos, neg = loaded
    plain = ksample(rt, model, pos, neg)
    original, seen = comfy.sample.sample, []

    def halved(*args, **kwargs):
        seen.append(kwargs.get("seed"))
        return original(*args, **kwargs) * 0.5

    monkeypatch.setattr(comfy.sample, "sample", halved)
    assert torch.equal(ksample(rt, model, pos, neg), plain * 0.5) and seen == [5]


def test_replaced_prepare_noise_and_sampler_object_reach_the_node(rt, loaded, monkeypatch):
    import comfy.sample
    import comfy.samplers

    model, _, _, pos, neg = loaded
    ancestral = ksample(rt, model, pos, neg, sampler="euler_ancestral")
    monkeypatch.setattr(comfy.samplers, "sampler_object", lambda name: comfy.samplers.ksampler("euler_ancestral"))
    assert torch.equal(ksample(rt, model, pos, neg, sampler="euler"), ancestral)
    monkeypatch.undo()
    monkeypatch.setattr(comfy.sample, "prepare_noise", lambda latent, seed, inds=None: torch.zeros_like(latent))
    zero_noise = ksample(rt, model, pos, neg)
    with torch.inference_mode():
        advanced = node(rt, "KSamplerAdvanced").sample(model, "disable", 5, 2, 4.0, "euler", "normal", pos, neg,
                                                       {"samples": torch.zeros(1, 4, 8, 8)}, 0, 10000, "disable")
    assert torch.equal(zero_noise, advanced[0]["samples"])


def test_replaced_ksampler_class_and_sampling_function_reach_the_node(rt, loaded, monkeypatch):
    import comfy.samplers

    model, _, _, pos, neg = loaded
    plain = ksample(rt, model, pos, neg)
    calls = []
    original = comfy.samplers.sampling_function

    def recording(model_, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
        calls.append(float(timestep[0]))
        return original(model_, x, timestep, uncond, cond, cond_scale, model_options, seed)

    monkeypatch.setattr(comfy.samplers, "sampling_function", recording)
    assert torch.equal(ksample(rt, model, pos, neg), plain) and len(calls) == 2

    class OneStepLess(comfy.samplers.KSampler):
        def calculate_sigmas(self, steps):
            return super().calculate_sigmas(steps + 1)[1:]

    monkeypatch.setattr(comfy.samplers, "KSampler", OneStepLess)
    calls.clear()
    assert not torch.equal(ksample(rt, model, pos, neg), plain) and len(calls) == 2


def test_replaced_calculate_weight_patches_every_model(rt, loaded, monkeypatch):
    import comfy.lora
    import comfy.model_management
    from diffusion.patches import calculate_weight

    model, clip, _, _, _ = loaded
    lora = model.clone()
    lora.add_patches({"diffusion_model.out.2.bias": ("diff", (torch.ones(4),))})
    seen = []

    def doubled(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):
        seen.append(key)
        return calculate_weight(patches, weight, key) * 2

    monkeypatch.setattr(comfy.lora, "calculate_weight", doubled)
    before = model.model.diffusion_model.out[2].bias.detach().clone()
    comfy.model_management.load_models_gpu([lora])
    assert seen == ["diffusion_model.out.2.bias"]
    assert torch.equal(model.model.diffusion_model.out[2].bias, (before + 1) * 2)
    comfy.model_management.load_models_gpu([model])  # back to the plain weights, bit for bit
    assert torch.equal(model.model.diffusion_model.out[2].bias, before)


def test_replaced_load_models_gpu_is_what_sampling_encoding_and_decoding_call(rt, loaded, monkeypatch):
    import comfy.model_management

    model, clip, vae, pos, neg = loaded
    original, seen = comfy.model_management.load_models_gpu, []

    def recording(models, *args, **kwargs):
        seen.extend(type(m.model).__name__ for m in models)
        return original(models, *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", recording)
    with torch.inference_mode():
        node(rt, "CLIPTextEncode").encode(clip, "x")
        latent = {"samples": ksample(rt, model, pos, neg)}
        node(rt, "VAEDecode").decode(vae, latent)
    assert seen == ["SD1TextEncoder", "DiffusionModel", "AutoencoderKL"]


def test_model_management_answers_for_the_runtime(rt, loaded):
    import comfy.model_management as mm

    model = loaded[0]
    assert mm.get_torch_device() == torch.device("cpu") == mm.intermediate_device()
    assert mm.vram_state == mm.VRAMState.DISABLED and mm.cpu_state == mm.CPUState.CPU
    assert mm.get_free_memory() > 0 and mm.get_total_memory() >= mm.get_free_memory()
    mm.load_model_gpu(model)
    assert model in mm.loaded_models() and any(lm.model is model for lm in mm.current_loaded_models)
    mm.unload_all_models()
    assert mm.loaded_models() == []
    assert mm.unet_dtype() == torch.float32 and mm.dtype_size(torch.bfloat16) == 2
    assert mm.InterruptProcessingException.__name__ == "Interrupted"
    mm.interrupt_current_processing()
    try:
        assert mm.processing_interrupted()
        with pytest.raises(mm.InterruptProcessingException):
            mm.throw_exception_if_processing_interrupted()
    finally:
        mm.interrupt_current_processing(False)
    assert not mm.processing_interrupted()


def test_load_lora_for_models_and_attention_replacement(rt, loaded, tmp_path, monkeypatch):
    import comfy.ldm.modules.attention as attention
    import comfy.sd
    from safetensors.torch import load_file, save_file

    model, clip, _, pos, neg = loaded
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    lora = {f"{name}.lora_up.weight": torch.randn(32, 2) * 0.1, f"{name}.lora_down.weight": torch.randn(2, 768) * 0.1}
    save_file(lora, str(tmp_path / "l.safetensors"))
    m2, c2 = comfy.sd.load_lora_for_models(model, clip, load_file(str(tmp_path / "l.safetensors")), 1.0, 1.0)
    assert list(m2.patches) == ["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
    assert not model.patches and c2 is not clip
    plain = ksample(rt, model, pos, neg)
    assert not torch.equal(ksample(rt, m2, pos, neg), plain)
    # a plugin replacing optimized_attention changes every attention of the UNet
    original = attention.optimized_attention
    monkeypatch.setattr(attention, "optimized_attention", lambda q, k, v, heads, **kw: original(q, k, v, heads) * 0.5)
    assert not torch.equal(ksample(rt, model, pos, neg), plain)
    monkeypatch.undo()
    assert torch.equal(ksample(rt, model, pos, neg), plain)


def test_model_detection_reads_a_diffusers_layout_unet_as_the_loader_does():
    """comfy.model_detection's diffusers entry points give the config of the same UNet in the
    original layout (diffusers' own UNet2DConditionModel weights, SD1 cross-attention width)."""
    import dataclasses

    import diffusers

    from comfy import model_detection as md
    from tests.models_tiny import diffusers_unet_config, tiny_unet_config

    cfg = dataclasses.replace(tiny_unet_config("sd15"), context_dim=768)
    sd = diffusers.UNet2DConditionModel(**diffusers_unet_config(cfg)).state_dict()
    got = md.unet_config_from_diffusers_unet(sd)
    assert (got["model_channels"], got["channel_mult"], got["context_dim"], got["num_res_blocks"]) == \
        (32, [1, 2, 2], 768, [2, 2, 2])
    assert got["transformer_depth"] == [1, 1, 1, 1, 0, 0]
    assert type(md.model_config_from_diffusers_unet(sd).latent_format).__name__ == "SD15"
