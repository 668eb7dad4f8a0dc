"""Image, mask, latent and string nodes, tiling and the tiled VAE against ComfyUI's own outputs.

The reference values are ComfyUI's (commit a125cd84) for the inputs of tests/comfy_node_cases.py,
written by tests/data/comfy_nodes/make_reference.py under ComfyUI's interpreter (see its docstring).
Tolerance: none. Both sides run the same float32 formulas on the same torch, so every output is
bit-identical, except LatentOperationSharpen (1e-5 absolute: ComfyUI's Gaussian kernel squares a
square root where ours does not). Strings, numbers, booleans and batch indices compare equal.
"""

import pytest
import torch

from diffusion import vae_bands
from diffusion.handles import VAE
from diffusion.tiling import tiled_scale
from diffusion.vae import AutoencoderKL, VAEConfig
from tests import comfy_node_cases as cases
from tests.models_tiny import randomize_
from tests.node_helpers import builtin_registry, call_in_context
from tests.paths import REPO, read_reference

pytestmark = pytest.mark.usefixtures("recorded_threads")  # compares bit for bit with ComfyUI's recorded numbers

REFERENCE = REPO / "tests" / "data" / "comfy_nodes" / "reference.safetensors"
ATOL = 0.0
SHARPEN_ATOL = 1e-5


TENSORS, META = read_reference(REFERENCE)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return builtin_registry(tmp_path_factory.mktemp("parity"))


def _fingerprint(tensor: torch.Tensor) -> list[float]:
    return [float(tensor.double().sum()), float((tensor.double() ** 2).sum())]


def _check_inputs(case: str, inputs: dict) -> None:
    recorded = META[f"{case}/in"]
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            assert _fingerprint(value) == pytest.approx(recorded[name], rel=1e-9), \
                f"{case}: input {name} differs from the one ComfyUI was given (torch's generator changed?)"


def _resolve(registry, inputs: dict) -> dict:
    return {name: (call_in_context(registry, value.node, **value.inputs)[0] if isinstance(value, cases.Call)
                   else dict(value) if isinstance(value, dict) else value)
            for name, value in inputs.items()}


def _outputs(result) -> tuple:
    return tuple(result["result"]) if isinstance(result, dict) else tuple(result)


@pytest.mark.parametrize("case, node, inputs", cases.all_cases(), ids=[c[0] for c in cases.all_cases()])
def test_node_matches_comfyui(registry, case, node, inputs):
    _check_inputs(case, inputs)
    outputs = _outputs(call_in_context(registry, node, **_resolve(registry, inputs)))
    expected_count = len({k for k in list(TENSORS) + list(META) if k.startswith(f"{case}/out/")})
    assert len(outputs) == expected_count, f"{case}: {len(outputs)} outputs, ComfyUI gave {expected_count}"
    atol = SHARPEN_ATOL if case == "latent_sharpen" else ATOL
    for index, value in enumerate(outputs):
        key = f"{case}/out/{index}"
        if isinstance(value, dict):  # LATENT
            assert META[key]["latent"] and value.get("batch_index") == META[key]["batch_index"], key
            value = value["samples"]
        if isinstance(value, torch.Tensor):
            want = TENSORS[key]
            assert value.shape == want.shape, f"{key}: shape {list(value.shape)}, ComfyUI {list(want.shape)}"
            diff = (value.float() - want).abs().max().item() if value.numel() else 0.0
            assert diff <= atol, f"{key}: max difference {diff:.3g} from ComfyUI (tolerance {atol})"
        else:
            assert value == META[key]["value"], f"{key}: {value!r}, ComfyUI gave {META[key]['value']!r}"


@pytest.mark.parametrize("case, x, tile, overlap, scale, channels", cases.TILING_CASES,
                         ids=[c[0] for c in cases.TILING_CASES])
def test_tiled_scale_blends_as_comfyui(case, x, tile, overlap, scale, channels):
    assert _fingerprint(x) == pytest.approx(META[f"tiling_{case}/in"]["x"], rel=1e-9)
    steps = []
    out = tiled_scale(x, cases.tile_function(scale, channels), tile, overlap, scale, channels,
                      progress=lambda done, total: steps.append((done, total)))
    want = TENSORS[f"tiling_{case}/out/0"]
    assert out.shape == want.shape
    assert (out - want).abs().max().item() <= ATOL
    assert steps and steps[-1][0] == steps[-1][1] == len(steps)  # one report per tile, ending at the total


@pytest.fixture(scope="module")
def tiny_vae():
    vae = randomize_(AutoencoderKL(VAEConfig(base_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1)),
                     cases.VAE_SEED).eval()
    return VAE(vae, torch.device("cpu"), torch.float32)


def test_vae_handle_tiled_defaults_match_comfyui(tiny_vae):
    assert _fingerprint(cases.VAE_LATENT) == pytest.approx(META["vae/in"]["latent"], rel=1e-9)
    assert _fingerprint(cases.VAE_PIXELS) == pytest.approx(META["vae/in"]["pixels"], rel=1e-9)
    decoded = tiny_vae.decode_tiled(cases.VAE_LATENT)
    encoded = tiny_vae.encode_tiled(cases.VAE_PIXELS)
    assert (decoded - TENSORS["vae_decode_tiled_default/out/0"]).abs().max().item() <= ATOL
    assert (encoded - TENSORS["vae_encode_tiled_default/out/0"]).abs().max().item() <= ATOL


@pytest.mark.parametrize("band_bytes", [80 << 10, 160 << 10])   # 8 and 16 rows at 96x80 pixels
def test_vae_in_bands_matches_comfyui(monkeypatch, tiny_vae, band_bytes):
    """The banded path (diffusion.vae_bands; for real SD sizes from 256x256-pixel layers on),
    forced on for every layer of this small VAE, still gives ComfyUI's pixels and latents. The
    bands are kept above the size under which torch leaves oneDNN for its own convolution
    kernel, as they always are at the sizes the path is used for."""
    monkeypatch.setattr(vae_bands, "BANDED_FROM_BYTES", 0)
    monkeypatch.setattr(vae_bands, "BAND_BYTES", band_bytes)
    ran = []
    normed_conv = vae_bands.normed_conv
    monkeypatch.setattr(vae_bands, "normed_conv", lambda *a, **k: ran.append(1) or normed_conv(*a, **k))
    decoded = tiny_vae.decode_tiled(cases.VAE_LATENT)
    encoded = tiny_vae.encode_tiled(cases.VAE_PIXELS)
    assert ran
    assert (decoded - TENSORS["vae_decode_tiled_default/out/0"]).abs().max().item() <= ATOL
    assert (encoded - TENSORS["vae_encode_tiled_default/out/0"]).abs().max().item() <= ATOL


@pytest.mark.parametrize("node, tile_size, overlap", cases.VAE_NODE_CASES)
def test_tiled_vae_nodes_match_comfyui(registry, tiny_vae, node, tile_size, overlap):
    if node == "VAEDecodeTiled":
        out = call_in_context(registry, node, samples={"samples": cases.VAE_LATENT}, vae=tiny_vae,
                              tile_size=tile_size, overlap=overlap, temporal_size=64, temporal_overlap=8)[0]
    else:
        out = call_in_context(registry, node, pixels=cases.VAE_PIXELS, vae=tiny_vae, tile_size=tile_size,
                              overlap=overlap, temporal_size=64, temporal_overlap=8)[0]["samples"]
    want = TENSORS[f"{node}_{tile_size}_{overlap}/out/0"]
    assert out.shape == want.shape
    assert (out - want).abs().max().item() <= ATOL
