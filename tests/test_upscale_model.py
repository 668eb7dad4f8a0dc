"""UpscaleModelLoader and ImageUpscaleWithModel on small random-weight upscalers in the real ESRGAN
(original "model.N" layout) and Real-ESRGAN (basicsr "conv_first/body" layout) key layouts, written
as .pth and .safetensors files, against spandrel's own output for the same weights.

Tolerance: none below one tile (the node runs the very model spandrel builds, and the clamp); 1e-5
where the node tiles, away from the seam (the same convolutions on a differently sized input).
"""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint import CheckpointError
from tests.node_helpers import builtin_registry, call_in_context
from tests.upscale_models_tiny import esrgan_state_dict, real_esrgan_state_dict

@pytest.fixture
def registry(tmp_path):
    return builtin_registry(tmp_path)


def _install(registry, name: str, state_dict: dict, wrap: str | None = None) -> str:
    folder = registry.env.folders.model_dirs("upscale_models")[0]
    path = folder / name
    if name.endswith(".safetensors"):
        save_file(state_dict, str(path))
    else:
        torch.save({wrap: state_dict} if wrap else state_dict, path)
    return name


def _spandrel_reference(state_dict: dict, image: torch.Tensor) -> torch.Tensor:
    from spandrel import ModelLoader  # after diffusion/, which keeps torchvision importable

    model = ModelLoader().load_from_state_dict(dict(state_dict)).eval()
    with torch.inference_mode():
        return model(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)


def _upscale(registry, model_name: str, image: torch.Tensor) -> torch.Tensor:
    (model,) = call_in_context(registry, "UpscaleModelLoader", model_name=model_name)
    return call_in_context(registry, "ImageUpscaleWithModel", upscale_model=model, image=image)[0]


LAYOUTS = [
    ("esrgan_x4.pth", lambda: esrgan_state_dict(4), None, 4),
    ("esrgan_x1.safetensors", lambda: esrgan_state_dict(1), None, 1),
    ("esrgan_x2.pth", lambda: esrgan_state_dict(2, filters=12), None, 2),
    ("realesrgan_x4.pth", lambda: real_esrgan_state_dict(4), "params_ema", 4),
    ("realesrgan_x2.safetensors", lambda: real_esrgan_state_dict(2), None, 2),
]


@pytest.mark.parametrize("name, make, wrap, scale", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_upscaled_image_is_spandrels_output_for_the_same_weights(registry, name, make, wrap, scale):
    state_dict = make()
    image = torch.rand(2, 20, 28, 3, generator=torch.Generator().manual_seed(3))
    out = _upscale(registry, _install(registry, name, state_dict, wrap), image)
    assert out.shape == (2, 20 * scale, 28 * scale, 3)
    for index in range(2):
        want = _spandrel_reference(state_dict, image[index:index + 1])
        assert torch.equal(out[index:index + 1], want), name
    assert out.min() >= 0 and out.max() <= 1


def test_loader_reports_the_detected_architecture_and_scale(registry):
    (model,) = call_in_context(registry, "UpscaleModelLoader",
                               model_name=_install(registry, "m.pth", esrgan_state_dict(4)))
    assert model.architecture.id == "ESRGAN" and model.scale == 4
    # the same file is loaded once and shared
    (again,) = call_in_context(registry, "UpscaleModelLoader", model_name="m.pth")
    assert again is model


def test_images_larger_than_a_tile_are_upscaled_in_blended_tiles(registry):
    """ComfyUI's tiles are 512 pixels with 32 of overlap: a 520-pixel-tall image takes two, at rows
    0 and 480. Rows before 480 come from the first tile alone and, being further than the network's
    reach from that tile's edge, equal the whole image's output; rows 480-511 blend both tiles."""
    state_dict = esrgan_state_dict(1, filters=4)
    image = torch.rand(1, 520, 12, 3, generator=torch.Generator().manual_seed(4))
    name = _install(registry, "x1.pth", state_dict)
    (model,) = call_in_context(registry, "UpscaleModelLoader", model_name=name)
    steps = []

    class Ctx:
        env = registry.env

        @staticmethod
        def progress(done, total):
            steps.append((done, total))

    out = registry.get("ImageUpscaleWithModel").cls().run(Ctx, upscale_model=model, image=image)[0]
    whole = _spandrel_reference(state_dict, image)
    reach = 19  # 3x3 convolutions between input and output: first, 15 in the dense blocks, trunk, HR, last
    assert steps == [(1, 2), (2, 2)]
    assert 480 < 512 - reach
    assert (out[:, :480] - whole[:, :480]).abs().max() <= 1e-5
    assert not torch.allclose(out[:, 480:512], whole[:, 480:512], atol=1e-4)  # the seam is a blend


def test_a_pickle_that_runs_code_is_refused_without_running_it(registry, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = registry.env.folders.model_dirs("upscale_models")[0] / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model.0.weight": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        call_in_context(registry, "UpscaleModelLoader", model_name="evil.pth")
    assert not marker.exists()


def test_weights_of_no_known_upscaler_are_a_clear_error(registry):
    name = _install(registry, "nothing.safetensors", {"foo.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="not an upscale model"):
        call_in_context(registry, "UpscaleModelLoader", model_name=name)


def test_an_rgba_image_is_refused_with_the_channel_count(registry):
    (model,) = call_in_context(registry, "UpscaleModelLoader",
                               model_name=_install(registry, "m.safetensors", esrgan_state_dict(2)))
    with pytest.raises(ValueError, match="3-channel"):
        call_in_context(registry, "ImageUpscaleWithModel", upscale_model=model, image=torch.rand(1, 8, 8, 4))


def test_a_missing_model_file_names_the_folder(registry):
    with pytest.raises(FileNotFoundError, match="upscale_models"):
        call_in_context(registry, "UpscaleModelLoader", model_name="absent.pth")
