"""ComfyUI's helper modules for plugins (comfy.utils, comfy.cli_args, node_helpers,
latent_preview, comfy.k_diffusion, comfy_extras, execution): each call answers as ComfyUI's does,
checked against values worked out by hand from ComfyUI's definitions or against our own nodes."""
import asyncio
import hashlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

import comfy.utils
import execution
import latent_preview
import node_helpers
from comfy.cli_args import LatentPreviewMethod, args
from graph.context import LatentPreview, current_context
from tests.node_helpers import node_context


# -- comfy.utils --------------------------------------------------------------------------------

def test_common_upscale_methods_and_centre_crop():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # nearest-exact halving keeps pixel centres 1 and 3 of each axis (F.interpolate's rule)
    assert torch.equal(comfy.utils.common_upscale(x, 2, 2, "nearest-exact", "disabled")[0, 0],
                       torch.tensor([[5.0, 7.0], [13.0, 15.0]]))
    # area over 2x2 blocks is their mean
    assert torch.equal(comfy.utils.common_upscale(x, 2, 2, "area", "disabled")[0, 0],
                       torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    # centre crop of a 4x4 to a 2:1 aspect keeps rows 1..2 (round((4 - 4 * 0.5) / 2) = 1 each side)
    cropped = comfy.utils.common_upscale(x, 4, 2, "nearest-exact", "center")
    assert torch.equal(cropped[0, 0], x[0, 0, 1:3])
    # 5-D video latents are resized frame by frame
    video = torch.rand(1, 2, 3, 4, 4)
    out = comfy.utils.common_upscale(video, 2, 2, "bilinear", "disabled")
    assert out.shape == (1, 2, 3, 2, 2)
    assert torch.allclose(out[:, :, 1], comfy.utils.common_upscale(video[:, :, 1], 2, 2, "bilinear", "disabled"))


def test_lanczos_is_pillows_through_8_bit_by_truncation():
    x = torch.rand(1, 3, 6, 6)
    pixels = np.clip(255.0 * x[0].movedim(0, -1).numpy(), 0, 255).astype(np.uint8)
    expected = np.array(Image.fromarray(pixels).resize((3, 3), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    assert torch.allclose(comfy.utils.lanczos(x, 3, 3)[0].movedim(0, -1), torch.from_numpy(expected))
    assert torch.allclose(comfy.utils.common_upscale(x, 3, 3, "lanczos", "disabled"), comfy.utils.lanczos(x, 3, 3))


def test_bislerp_keeps_parallel_vectors_and_interpolates_lengths():
    # every pixel points the same way with lengths 1 and 3: slerp keeps the direction, lengths go linear
    a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    x = torch.cat([a, 3 * a], dim=3)  # [1, 2, 1, 2]
    out = comfy.utils.bislerp(x, 4, 1)
    assert torch.allclose(out[0, 1], torch.zeros(1, 4))
    assert torch.all(out[0, 0, 0, 1:] >= out[0, 0, 0, :-1])  # lengths rise from 1 towards 3
    assert out[0, 0, 0, 0] == pytest.approx(1.0) and out[0, 0, 0, -1] == pytest.approx(3.0)


def test_batch_helpers():
    t = torch.arange(3.0)
    assert comfy.utils.repeat_to_batch_size(t, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert comfy.utils.repeat_to_batch_size(t, 2).tolist() == [0, 1]
    m = torch.arange(6.0).reshape(2, 3)
    assert comfy.utils.repeat_to_batch_size(m, 5, dim=1).tolist() == [[0, 1, 2, 0, 1], [3, 4, 5, 3, 4]]
    # ComfyUI's nearest-index resampling: 2 -> 4 is [0, 0, 1, 1]; 5 -> 3 is [0, 2, 4]
    assert comfy.utils.resize_to_batch_size(torch.arange(2.0), 4).tolist() == [0, 0, 1, 1]
    assert comfy.utils.resize_to_batch_size(torch.arange(5.0), 3).tolist() == [0, 2, 4]
    assert comfy.utils.resize_list_to_batch_size(["a", "b"], 4) == ["a", "a", "b", "b"]
    mask = torch.ones(1, 2, 2)
    assert comfy.utils.reshape_mask(mask, (3, 4, 8, 8)).shape == (3, 4, 8, 8)


def test_tiled_scale_reassembles_what_the_function_does_to_the_whole():
    x = torch.rand(2, 3, 40, 52)
    upscale2 = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

    out = comfy.utils.tiled_scale(x, upscale2, tile_x=16, tile_y=16, overlap=4, upscale_amount=2,
                                  out_channels=3, pbar=Bar())
    assert torch.allclose(out, upscale2(x), atol=1e-6)
    # ComfyUI's estimate for one 52x40 image: ceil((40-4)/12) rows * ceil((52-4)/12) cols = 3 * 4
    assert comfy.utils.get_tiled_scale_steps(52, 40, 16, 16, 4) == 12
    assert len(ticks) == 2 * 12
    down = comfy.utils.tiled_scale_multidim(x, lambda t: t[..., ::2, ::2], tile=(16, 16), overlap=4,
                                            upscale_amount=2, downscale=True)
    assert down.shape == (2, 3, 20, 26)


def test_model_file_helpers(tmp_path):
    sd = {"a.weight": torch.ones(2, 3), "b.bias": torch.zeros(4, dtype=torch.bfloat16)}
    path = str(tmp_path / "m.safetensors")
    comfy.utils.save_torch_file(sd, path, metadata={"format": "pt"})
    loaded, meta = comfy.utils.load_torch_file(path, return_metadata=True)
    assert meta == {"format": "pt"} and torch.equal(loaded["a.weight"], sd["a.weight"])
    header = comfy.utils.safetensors_header(path)
    assert b'"a.weight"' in header and comfy.utils.safetensors_header(path, max_size=4) is None
    # pickles: only weights, unwrapped from {"state_dict": ...} or a single-entry dict
    torch.save({"state_dict": sd}, tmp_path / "w.ckpt")
    assert set(comfy.utils.load_torch_file(str(tmp_path / "w.ckpt"))) == set(sd)
    torch.save({"params_ema": sd}, tmp_path / "u.pth")
    assert set(comfy.utils.load_torch_file(str(tmp_path / "u.pth"))) == set(sd)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        comfy.utils.load_torch_file(str(tmp_path / "evil.pt"))
    assert comfy.utils.calculate_parameters(sd) == 10 and comfy.utils.calculate_parameters(sd, "b.") == 4
    assert comfy.utils.weight_dtype(sd) == torch.float32
    renamed = comfy.utils.state_dict_prefix_replace(dict(sd), {"a.": "x."})
    assert set(renamed) == {"x.weight", "b.bias"}
    assert set(comfy.utils.state_dict_prefix_replace(dict(sd), {"a.": "x."}, filter_keys=True)) == {"x.weight"}
    assert set(comfy.utils.state_dict_key_replace(dict(sd), {"b.bias": "c"})) == {"a.weight", "c"}


def test_attribute_paths():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert comfy.utils.get_attr(model, "0.weight") is model[0].weight
    old = comfy.utils.set_attr_param(model, "0.bias", torch.ones(2))
    assert isinstance(model[0].bias, torch.nn.Parameter) and torch.equal(model[0].bias, torch.ones(2))
    assert old is not model[0].bias
    storage = model[0].weight.data_ptr()
    comfy.utils.copy_to_param(model, "0.weight", torch.zeros(2, 2))
    assert model[0].weight.data_ptr() == storage and torch.equal(model[0].weight, torch.zeros(2, 2))


def test_progress_bar_reports_to_the_running_node_or_a_plugin_hook(runtime):
    events = []
    ctx = node_context(runtime.registry)
    ctx.emit = lambda event, data: events.append((data["value"], data["max"])) if event == "progress" else None
    token = current_context.set(ctx)
    try:
        bar = comfy.utils.ProgressBar(4)
        bar.update(1)
        bar.update_absolute(9)  # capped at the total
        assert events == [(1, 4), (4, 4)]
        hooked = []
        engine_hook = comfy.utils.PROGRESS_BAR_HOOK
        comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: hooked.append((v, t, node_id)))
        try:
            comfy.utils.ProgressBar(2).update(1)
            comfy.utils.ProgressBar(3, node_id="9").update(2)
        finally:
            comfy.utils.set_progress_bar_global_hook(engine_hook)
        assert hooked == [(1, 2, None), (2, 3, "9")] and len(events) == 2
    finally:
        current_context.reset(token)


# -- comfy.cli_args ----------------------------------------------------------------------------

def test_args_reflect_the_engines_flags(tmp_path):
    from tests.conftest import make_runtime
    make_runtime(tmp_path, "--cache-lru", "5", "--preview-method", "taesd", "--disable-metadata", "--cpu")
    assert args.base_directory == str(tmp_path)
    assert args.cache_lru == 5 and args.cache_classic is False and args.cache_none is False
    assert args.preview_method == LatentPreviewMethod.TAESD
    assert args.disable_metadata is True and args.cpu is True
    assert args.port == 8188 and args.listen == "127.0.0.1"
    # ComfyUI's own flags that we do not have keep ComfyUI's defaults
    assert args.lowvram is False and args.default_hashing_function == "sha256" and args.preview_size == 512
    assert args.fast == set() and args.reserve_vram is None
    with pytest.raises(AttributeError):
        args.no_such_flag  # noqa: B018
    args.default_hashing_function = "md5"
    assert node_helpers.hasher() is hashlib.md5


# -- node_helpers ------------------------------------------------------------------------------

def test_conditioning_set_values_copies_and_appends():
    cond = [[torch.ones(1), {"strength": 1.0, "area": (8, 8, 0, 0)}]]
    out = node_helpers.conditioning_set_values(cond, {"strength": 0.5, "mask": "m"})
    assert out[0][1] == {"strength": 0.5, "area": (8, 8, 0, 0), "mask": "m"}
    assert cond[0][1] == {"strength": 1.0, "area": (8, 8, 0, 0)} and out[0][0] is cond[0][0]
    appended = node_helpers.conditioning_set_values(cond, {"strength": 0.25, "new": [1]}, append=True)
    assert appended[0][1]["strength"] == 1.25 and appended[0][1]["new"] == [1]


def test_pillow_retries_truncated_images(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    from PIL import ImageFile
    with pytest.raises(OSError):
        Image.open(tmp_path / "cut.jpg").convert("RGB")
    image = node_helpers.pillow(lambda p: Image.open(p).convert("RGB"), tmp_path / "cut.jpg")
    assert image.size == (128, 128) and ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_dtype_and_alpha_helpers():
    assert node_helpers.string_to_torch_dtype("bf16") is torch.bfloat16
    rgb, rgba = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 4)
    dest, src = node_helpers.image_alpha_fix(rgb, rgba)
    assert dest is rgb and src.shape[-1] == 3
    dest, src = node_helpers.image_alpha_fix(rgba.clone(), rgb)  # ComfyUI pads the destination by one
    assert dest.shape[-1] == 5 and torch.equal(dest[..., -1], torch.ones(1, 2, 2)) and src is rgb


# -- latent_preview ----------------------------------------------------------------------------

class SD15Format:
    latent_channels = 4
    taesd_decoder_name = "taesd_decoder"
    latent_rgb_factors = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                          [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
    latent_rgb_factors_bias = None


def test_latent2rgb_previewer_is_the_linear_projection(runtime):
    previewer = latent_preview.get_previewer("cpu", SD15Format())
    assert isinstance(previewer, latent_preview.Latent2RGBPreviewer)
    x0 = torch.randn(2, 4, 3, 5)
    kind, image, size = previewer.decode_latent_to_preview_image("JPEG", x0)
    assert kind == "JPEG" and size == 512 and image.size == (5, 3)
    rgb = torch.einsum("chw,cr->hwr", x0[0], torch.tensor(SD15Format.latent_rgb_factors))
    expected = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(image), expected)


def test_prepare_callback_reports_steps_with_the_latent_as_preview(runtime):
    events = []
    ctx = node_context(runtime.registry)
    ctx.emit = lambda event, data: events.append((data["value"], data["max"]))
    ctx.on_preview = lambda preview, _ctx: events.append(preview)
    kept = {}
    token = current_context.set(ctx)
    try:
        class Model:
            family = "sdxl"
        callback = latent_preview.prepare_callback(Model(), 3, kept)
        x0 = torch.zeros(1, 4, 2, 2)
        callback(0, x0, None, 3)
    finally:
        current_context.reset(token)
    assert events[0] == (1, 3) and kept["x0"] is x0
    assert isinstance(events[1], LatentPreview) and events[1].family == "sdxl" and events[1].samples is x0


# -- comfy.k_diffusion -------------------------------------------------------------------------

def test_k_diffusion_names():
    from comfy.k_diffusion import sampling, utils
    sigmas = sampling.get_sigmas_karras(4, 0.1, 10.0, rho=7.0)
    ramp = torch.linspace(0, 1, 4)
    expected = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    assert torch.allclose(sigmas[:-1], expected) and sigmas[-1] == 0
    assert torch.allclose(sampling.get_sigmas_exponential(3, 1.0, math.e ** 2)[:-1], torch.tensor([math.e ** 2, math.e, 1.0]))
    x, denoised = torch.tensor([3.0]), torch.tensor([1.0])
    assert sampling.to_d(x, torch.tensor(2.0), denoised).item() == 1.0
    down, up = sampling.get_ancestral_step(1.0, 0.5, eta=1.0)
    assert up == pytest.approx((0.5 ** 2 * (1 - 0.25)) ** 0.5) and down == pytest.approx((0.25 - up ** 2) ** 0.5)
    assert utils.append_dims(torch.ones(2), 4).shape == (2, 1, 1, 1)
    noise = sampling.default_noise_sampler(torch.zeros(2, 3), seed=7)
    assert torch.equal(noise(1.0, 0.5), torch.randn(2, 3, generator=torch.Generator().manual_seed(7)))
    # a sampler runs under its k-diffusion name: one euler step to sigma 0 returns the denoised value
    out = sampling.sample_euler(lambda x, s, **kw: torch.full_like(x, 0.25), torch.ones(1, 2),
                                torch.tensor([1.0, 0.0]))
    assert torch.allclose(out, torch.full((1, 2), 0.25))
    assert "sample_dpmpp_2m" in dir(sampling)


def test_diffusers_vae_weights_convert_to_the_layout_our_vae_loads():
    from diffusers import AutoencoderKL as DiffusersVAE

    from comfy.diffusers_convert import convert_vae_state_dict
    from diffusion.checkpoint import load_vae
    torch.manual_seed(0)
    reference = DiffusersVAE(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
                             layers_per_block=1).eval()
    ours = load_vae(convert_vae_state_dict(reference.state_dict()))
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ours.decode_raw(z), reference.decode(z).sample, atol=1e-5)


def test_clip_vision_imports_and_refuses_clearly():
    import comfy.clip_vision
    with pytest.raises(NotImplementedError, match="CLIP vision"):
        comfy.clip_vision.load("model.safetensors")


def test_chainner_model_loading_builds_the_upscaler_its_weights_describe(tmp_path):
    """Run where torchvision (which spandrel imports) is available: the packs' test site."""
    import subprocess
    import sys

    from tests.pack_env import pack_site
    from tests.paths import REPO
    script = """
import app, diffusion, torch
from spandrel.architectures.ESRGAN import ESRGAN
from comfy_extras.chainner_models import model_loading
torch.manual_seed(0)
net = ESRGAN(num_filters=8, num_blocks=1, scale=2).eval()
model = model_loading.load_state_dict(net.state_dict())
x = torch.rand(1, 3, 8, 8)
with torch.no_grad():
    assert model.scale == 2 and torch.allclose(model(x), net(x).clamp(0, 1), atol=1e-6)
print("ok")
"""
    env = {**__import__("os").environ, "PYTHONPATH": f"{REPO}{__import__('os').pathsep}{pack_site()}"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# -- comfy_extras and execution ----------------------------------------------------------------

def test_comfy_extras_modules_hold_our_nodes_under_comfyuis_module_names():
    from comfy_extras import nodes_custom_sampler, nodes_mask, nodes_upscale_model
    from nodes.mask import SolidMask
    from nodes.sampling import SamplerCustom
    assert nodes_custom_sampler.SamplerCustom is SamplerCustom
    assert nodes_mask.SolidMask is SolidMask and nodes_mask.NODE_CLASS_MAPPINGS["SolidMask"] is SolidMask
    assert "ImageUpscaleWithModel" in nodes_upscale_model.NODE_CLASS_MAPPINGS
    dest, src = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2)
    out = nodes_mask.composite(dest, src, 8, 8, multiplier=8)
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(ImportError):
        import comfy_extras.nodes_not_a_module  # noqa: F401


def test_execution_validate_prompt_answers_as_comfyui(runtime):
    good = {"1": {"class_type": "TestValue", "inputs": {"value": 3}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("p", good, None))
    assert valid and error is None and outputs == ["2"] and node_errors == {}
    bad = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("p", bad, None))
    assert not valid and error["type"] == "invalid_prompt"
    assert execution.full_type_name(torch.Tensor) == "torch.Tensor" and execution.full_type_name(int) == "int"
    assert execution.format_value(3) == 3 and execution.format_value([1]) == "[1]"
    assert execution.PromptQueue(None).get_tasks_remaining() == 0
