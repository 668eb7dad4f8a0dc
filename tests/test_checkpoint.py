"""Reading model files safely, family detection from real key lists, splitting, loading in place."""
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint import (CheckpointError, detect, load_checkpoint, load_vae, read_state_dict,
                                  sniff_format, split_components)
from diffusion.vae import AutoencoderKL, VAEConfig
from tests import paths

KEYS = paths.SPEC_KEYS
REPO = Path(__file__).resolve().parent.parent
DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}


def spec_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A shape-only (meta) state dict with exactly the keys, shapes and dtypes of a released file."""
    rows = json.loads((KEYS / f"{name}.json").read_text())
    return {k: torch.empty(s, dtype=DTYPES[t], device="meta") for k, s, t in rows}


class Payload:
    """Unpickling this touches `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def write_payload(path: Path, marker: Path, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps({"state_dict": {"w": Payload(marker)}}, protocol=protocol))


# ---------------------------------------------------------------------------------------------
# read_state_dict


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_renamed_safetensors_is_refused_without_unpickling(tmp_path, protocol):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "model.safetensors"
    write_payload(evil, marker, protocol)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(evil)
    assert "model.safetensors" in str(err.value) and "pickle" in str(err.value)
    assert not marker.exists()
    # control: the payload is live, so the assertion above could have failed
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_zip_pickle_renamed_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="model.safetensors.*zip"):
        read_state_dict(path)


def test_hostile_ckpt_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "model.ckpt"
    write_payload(evil, marker)
    with pytest.raises(CheckpointError, match="model.ckpt.*refused"):
        read_state_dict(evil)
    assert not marker.exists()


def test_ckpt_is_read_via_weights_only_and_unwrapped(tmp_path):
    weights = {"model.diffusion_model.a": torch.randn(3, 4), "first_stage_model.b": torch.arange(5)}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": weights, "global_step": 470000, "epoch": 3}, path)
    sd = read_state_dict(path)
    assert set(sd) == set(weights)
    assert all(torch.equal(sd[k], weights[k]) for k in weights)
    legacy = tmp_path / "legacy.pt"
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    assert sniff_format(legacy) == "pickle"
    assert torch.equal(read_state_dict(legacy)["model.diffusion_model.a"], weights["model.diffusion_model.a"])


def test_format_comes_from_bytes_not_name(tmp_path):
    path = tmp_path / "looks-like.ckpt"
    save_file({"x": torch.ones(2, 2)}, path)
    assert sniff_format(path) == "safetensors"
    assert torch.equal(read_state_dict(path)["x"], torch.ones(2, 2))


def test_dtype_cast_applies_to_floats_only(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(4), "ids": torch.arange(4)}, path)
    sd = read_state_dict(path, dtype=torch.bfloat16)
    assert sd["w"].dtype == torch.bfloat16 and sd["ids"].dtype == torch.int64


def test_truncated_safetensors_names_file_and_tensor(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(100), "b": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert "cut.safetensors" in str(err.value) and "truncated" in str(err.value) and "'b'" in str(err.value)
    path.write_bytes(data[:20])   # cut inside the header
    with pytest.raises(CheckpointError, match="cut.safetensors.*truncated.*header"):
        read_state_dict(path)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
    (b"\x00\x01\x02\x03garbage garbage garbage", "unknown format"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not valid JSON"),
])
def test_damaged_or_unknown_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "weird.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert "weird.safetensors" in str(err.value) and message in str(err.value)


def test_damaged_zip_is_refused_by_name(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.pt.*damaged"):
        read_state_dict(path)


# ---------------------------------------------------------------------------------------------
# detect / split


@pytest.mark.parametrize("name,family,text", [
    ("sd15_full", "sd1", "clip_l"),
    ("sd15_inpainting_full", "sd1_inpaint", "clip_l"),
    ("sdxl_base_1.0_full", "sdxl", "clip_l+bigg"),
])
def test_detect_families_from_spec_key_lists(name, family, text):
    info = detect(spec_state_dict(name), name)
    assert (info.family, info.prediction, info.text_encoder, info.has_text) == (family, "eps", text, True)
    assert info.vae_config == VAEConfig.sd()


def test_detect_gives_the_real_unet_configs():
    from diffusion.unet import UNetConfig

    assert detect(spec_state_dict("sd15_full")).unet_config == UNetConfig.sd15()
    assert detect(spec_state_dict("sd15_inpainting_full")).unet_config == UNetConfig.sd15_inpaint()
    assert detect(spec_state_dict("sd21_768_full")).unet_config == UNetConfig.sd21()
    assert detect(spec_state_dict("sdxl_base_1.0_full")).unet_config == UNetConfig.sdxl_base()


@pytest.mark.parametrize("std,family,prediction", [(0.2, "sd2_v", "v_prediction"), (0.03, "sd2", "eps")])
def test_sd2_prediction_follows_the_std_rule(std, family, prediction):
    sd = spec_state_dict("sd21_768_full")
    probe = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    sd[probe] = torch.randn(sd[probe].shape, generator=torch.Generator().manual_seed(0)) * std
    info = detect(sd)
    assert (info.family, info.prediction, info.text_encoder) == (family, prediction, "open_clip_h")


def test_v_pred_marker_keys():
    sd = spec_state_dict("sd21_768_full")
    sd["model.diffusion_model.v_pred"] = torch.empty(0)
    assert detect(sd).family == "sd2_v"
    sd = spec_state_dict("sdxl_base_1.0_full")
    sd["v_pred"] = torch.empty(0)
    info = detect(sd)
    assert (info.family, info.prediction) == ("sdxl", "v_prediction")


def test_detect_sdxl_refiner_from_shapes():
    from diffusion.unet import UNetConfig

    sd = {"model.diffusion_model." + k: torch.empty(s, device="meta")
          for k, s in UNetConfig.sdxl_refiner().expected_shapes().items()}
    # the refiner's only text encoder is bigG, stored as embedders.0
    for k, v in spec_state_dict("sdxl_base_1.0_full").items():
        if k.startswith(("conditioner.embedders.1.", "first_stage_model.")):
            sd[k.replace("embedders.1.", "embedders.0.")] = v
    info = detect(sd)
    assert (info.family, info.text_encoder, info.unet_config) == ("sdxl_refiner", "bigg", UNetConfig.sdxl_refiner())


@pytest.mark.parametrize("name,hint", [("sd15_controlnet_v11", "ControlNet"), ("sd15_lora_kohya_full", "LoRA")])
def test_non_checkpoints_are_refused_naming_what_did_not_match(name, hint):
    with pytest.raises(CheckpointError) as err:
        detect(spec_state_dict(name), f"models/checkpoints/{name}.safetensors")
    message = str(err.value)
    assert f"{name}.safetensors" in message and "model.diffusion_model.input_blocks.0.0.weight" in message
    assert hint in message


def test_unknown_unet_shape_and_mismatched_text_are_refused():
    sd = spec_state_dict("sd15_full")
    for key in [k for k in sd if k.endswith("attn2.to_k.weight") or k.endswith("attn2.to_v.weight")]:
        sd[key] = torch.empty(sd[key].shape[0], 512, device="meta")
    with pytest.raises(CheckpointError, match="odd.ckpt.*context_dim=512"):
        detect(sd, "odd.ckpt")
    sd = {k: v for k, v in spec_state_dict("sd15_full").items() if not k.startswith("cond_stage_model.")}
    sd.update({k: v for k, v in spec_state_dict("sd21_768_full").items() if k.startswith("cond_stage_model.")})
    with pytest.raises(CheckpointError, match="sd1.*open_clip_h"):
        detect(sd, "franken.safetensors")


def test_unet_only_file_is_detected_without_text():
    sd = {k: v for k, v in spec_state_dict("sd15_full").items() if k.startswith("model.diffusion_model.")}
    info = detect(sd)
    assert (info.family, info.has_text, info.vae_config) == ("sd1", False, None)


def test_split_components_by_prefix_and_drops_ldm_extras():
    sd = spec_state_dict("sdxl_base_1.0_full")
    extras = ["betas", "alphas_cumprod", "posterior_mean_coef2", "model_ema.decay", "model_ema.num_updates",
              "model_ema.diffusion_modelinput_blocks00weight", "v_pred", "model.diffusion_model.v_pred"]
    sd.update({k: torch.empty(1000, device="meta") for k in extras})
    parts = split_components(sd)
    assert set(parts) == {"unet", "vae", "text"}
    assert len(parts["unet"]) == 1680 and "input_blocks.0.0.weight" in parts["unet"]
    assert len(parts["vae"]) == 248 and "decoder.mid.attn_1.q.weight" in parts["vae"]
    assert len(parts["text"]) == 587
    assert all(k.startswith("conditioner.embedders.") for k in parts["text"])
    assert "v_pred" not in parts["unet"]
    kept = {k for p in parts.values() for k in p}
    assert not any(e in kept or e.split(".")[-1] in kept for e in extras)


# ---------------------------------------------------------------------------------------------
# building without a second copy


def test_tiny_sd1_checkpoint_loads_every_component(tmp_path):
    from diffusion.text_encoders import SD1TextEncoder, text_config
    from diffusion.unet import UNetConfig, UNetModel

    torch.manual_seed(0)
    unet = UNetModel(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                                context_dim=768, num_heads=8))
    vae = AutoencoderKL(VAEConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1))
    text = SD1TextEncoder({"l": text_config(64, 2)})
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    sd.update({k: v.contiguous() for k, v in text.state_dict_original().items()})
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    path = tmp_path / "tiny-sd1.safetensors"
    save_file(sd, path)

    loaded = load_checkpoint(path, vae_dtype=torch.float32)
    assert loaded.info.family == "sd1"
    for ours, theirs in [(loaded.unet, unet), (loaded.vae, vae)]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert not any(p.requires_grad for p in ours.parameters())
    reloaded = loaded.text.state_dict_original()
    assert all(torch.equal(reloaded[k], v) for k, v in text.state_dict_original().items())

    half = load_checkpoint(path, unet_dtype=torch.bfloat16, components=("unet",))
    assert half.vae is None and half.text is None
    assert {p.dtype for p in half.unet.parameters()} == {torch.bfloat16}


def test_vae_with_missing_weights_is_refused(tmp_path):
    sd = {k: v for k, v in AutoencoderKL(VAEConfig(base_channels=32, channel_mult=(1, 2))).state_dict().items()
          if "decoder.up.0.block.1" not in k}
    with pytest.raises(CheckpointError, match="vae.pt.*missing .* keys"):
        load_vae(sd, source="vae.pt")


PEAK = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    from diffusion.checkpoint import load_vae, read_state_dict, stored_state_dict
    from diffusion.vae import AutoencoderKL, VAEConfig
    def status(key):
        for line in open('/proc/self/status'):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    float(torch.randn(64, 64).bfloat16().double().sum())   # torch's one-time set-up, not loading
    open('/proc/self/clear_refs', 'w').write('5')   # VmHWM := current RSS
    base = status('VmRSS')
    if {mode!r} == "assign":
        vae = load_vae(read_state_dict({path!r}))
    elif {mode!r} == "stored_bf16":   # read tensor by tensor, each converted as it is read
        vae = load_vae(stored_state_dict({path!r}), dtype=torch.bfloat16)
    elif {mode!r} == "mapped_bf16":   # a map of the whole file: every page read stays resident
        vae = load_vae(read_state_dict({path!r}), dtype=torch.bfloat16)
    else:   # the naive way: allocate an initialised model, then copy the weights into it
        sd = read_state_dict({path!r})
        vae = AutoencoderKL(VAEConfig(base_channels=96))
        vae.load_state_dict(sd)
        del sd
    loaded = status('VmHWM') - base   # converted copies are resident now; mapped pages only once read
    total = sum(float(p.double().sum()) for p in vae.parameters())   # touches every weight
    print(status('VmHWM') - base, loaded, repr(total))
""")


def test_loading_keeps_one_copy_of_the_weights(tmp_path):
    """Peak RSS while loading a ~190 MB fp32 VAE stays near one copy (well under 2x); the naive
    allocate-then-copy route, run the same way as a control, really does reach ~2x."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak RSS")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoencoderKL(VAEConfig(base_channels=96)).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    size = sum(v.nbytes for v in sd.values())
    expected = sum(float(v.double().sum()) for v in sd.values())
    path = tmp_path / "big-vae.safetensors"
    save_file(sd, path)
    del sd
    assert 150 << 20 < size < 250 << 20

    def peak(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", PEAK.format(repo=str(REPO), path=str(path), mode=mode)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        used, _loaded, total = run.stdout.split()
        assert abs(float(total) - expected) < 1e-6 * abs(expected) + 1e-3   # the real weights were loaded
        return int(used)

    assigned = peak("assign")
    assert 0.8 * size < assigned < 1.3 * size, f"peak {assigned >> 20} MB for a {size >> 20} MB file"
    assert peak("copy") > 1.8 * size


def test_converting_while_reading_keeps_the_peak_near_the_converted_weights(tmp_path):
    """A ~190 MB fp32 VAE loaded as bf16 (~95 MB) from the file tensor by tensor peaks near the
    bf16 size; converting from a map of the whole file, as a control, holds the fp32 pages too."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak RSS")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoencoderKL(VAEConfig(base_channels=96)).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    size = sum(v.nbytes for v in sd.values())
    expected = sum(float(v.bfloat16().double().sum()) for v in sd.values())
    path = tmp_path / "big-vae.safetensors"
    save_file(sd, path)
    del sd

    def peak(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", PEAK.format(repo=str(REPO), path=str(path), mode=mode)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        _used, loaded, total = run.stdout.split()
        assert abs(float(total) - expected) < 1e-6 * abs(expected) + 1e-3   # the bf16-rounded weights
        return int(loaded)

    stored = peak("stored_bf16")
    assert stored < 0.7 * size, f"peak {stored >> 20} MB converting a {size >> 20} MB fp32 file to bf16"
    assert peak("mapped_bf16") > 1.2 * size


def test_stored_tensors_read_exactly_what_the_file_holds(tmp_path):
    from safetensors.torch import load_file

    from diffusion.checkpoint import StoredTensor, stored_state_dict

    gen = torch.Generator().manual_seed(0)
    sd = {"f32": torch.randn(3, 5, generator=gen), "bf16": torch.randn(7, generator=gen).bfloat16(),
          "f16": torch.randn(2, 2, 2, generator=gen).half(), "i64": torch.arange(77).view(1, 77),
          "scalar": torch.tensor(160.0), "empty": torch.zeros(0), "flag": torch.tensor([True, False])}
    path = tmp_path / "mixed.safetensors"
    save_file(sd, path)
    stored = stored_state_dict(path)
    assert all(isinstance(v, StoredTensor) for v in stored.values())
    assert {k: (v.shape, v.dtype) for k, v in stored.items()} == {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}
    want = load_file(str(path))
    for key, value in stored.items():
        got = value.load()
        assert got.dtype == want[key].dtype and torch.equal(got, want[key]), key
    # floating tensors convert on load, others keep their dtype
    assert stored["f16"].load(dtype=torch.float32).dtype == torch.float32
    assert stored["i64"].load(dtype=torch.bfloat16).dtype == torch.int64
    # a file cut short after listing is reported by name when the tensor is read
    with open(path, "r+b") as f:
        f.truncate(stored["f32"].offset + 4)
    with pytest.raises(CheckpointError, match="mixed.safetensors.*'f32'"):
        stored["f32"].load()


def test_a_loaded_checkpoint_keeps_no_map_of_its_file(tmp_path, tiny_checkpoint):
    """Loading reads each tensor into memory of its own: no mapping of the file is left (one
    would keep every page that was read in the process's RSS)."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux /proc to list memory maps")
    path = tmp_path / "sd15.safetensors"
    path.write_bytes(tiny_checkpoint("sd15").read_bytes())
    loaded = load_checkpoint(path, unet_dtype=torch.bfloat16, vae_dtype=torch.bfloat16, text_dtype=torch.float32)
    assert loaded.unet is not None and loaded.vae is not None and loaded.text is not None
    assert str(path) not in Path("/proc/self/maps").read_text()


def test_loading_a_checkpoint_imports_no_compiler_stack(tiny_checkpoint):
    """Models are built on the meta device before their weights are assigned; filling meta
    tensors with torch.nn.init's random values would go through torch's Python reference kernels,
    whose first use imports torch._dynamo and sympy (about 75 MB kept for the process's life)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from diffusion.checkpoint import load_checkpoint
        loaded = load_checkpoint({str(tiny_checkpoint("sd15"))!r})
        assert loaded.unet is not None and loaded.text is not None and loaded.vae is not None
        assert not any(p.is_meta for m in (loaded.unet, loaded.text, loaded.vae) for p in m.parameters())
        print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "sympy"))))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_modules_built_outside_the_meta_skeleton_are_still_initialised():
    from diffusion.device import meta_skeleton

    with meta_skeleton():
        skeleton = torch.nn.Embedding(10, 4)
    assert skeleton.weight.is_meta
    real = torch.nn.Embedding(10, 4)
    assert real.weight.std() > 0.5   # normal_(0, 1) ran
