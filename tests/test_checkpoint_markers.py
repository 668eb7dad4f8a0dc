"""Checkpoint marker keys read as ComfyUI reads them: the model sampling a file gets (time axis,
prediction, sigmas, sigma_data) and its latent format, against what ComfyUI's own
supported_models / model_base build from the same marker tensors
(tests/data/markers/comfyui_marker_sigmas.safetensors; tests/data/markers/make_marker_sigmas.py
says how it was made).

SDXL, SD1.5 and refiner cases load a whole tiny checkpoint carrying the markers through the
CheckpointLoaderSimple path; SD2 cases need the real depth for the standard-deviation rule's probe
key, so they run detection over the released SD2.1 key layout with the probe's real values.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusion.checkpoint import detect
from diffusion.device import DevicePolicy
from diffusion.handles import open_checkpoint
from diffusion.model_management import ModelManagement
from diffusion.model_sampling import model_sampling_for
from tests.test_checkpoint import spec_state_dict

REFERENCE = Path(__file__).parent / "data" / "markers" / "comfyui_marker_sigmas.safetensors"
# ComfyUI's latent format class names -> ours
LATENT_FORMATS = {"SD15": "SD15", "SDXL": "SDXL", "SDXL_Playground_2_5": "SDXLPlayground25"}
TINY_FAMILY = {"sdxl": "sdxl", "sd15": "sd15", "sdxl_refiner": "sdxl_refiner"}


def reference() -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(REFERENCE), "pt") as f:
        cases = json.loads(f.metadata()["cases"])
    return cases, load_file(str(REFERENCE))


CASES, TENSORS = reference()


def inputs(case: str) -> dict[str, torch.Tensor]:
    prefix = f"{case}.in."
    return {k[len(prefix):]: v for k, v in TENSORS.items() if k.startswith(prefix)}


def assert_matches_comfyui(case: str, model_sampling, latent_format=None, model_type=None) -> None:
    want = CASES[case]
    assert type(model_sampling).__name__ == want["classes"][0], case
    torch.testing.assert_close(model_sampling.sigmas.float(), TENSORS[f"{case}.sigmas"], rtol=1e-6, atol=0)
    assert float(model_sampling.sigma_data) == want["sigma_data"], case
    assert bool(getattr(model_sampling, "zsnr", False)) == want["zsnr"], case
    if model_type is not None:
        assert model_type.name == want["model_type"], case
    if latent_format is not None:
        assert type(latent_format).__name__ == LATENT_FORMATS[want["latent_format"]], case


@pytest.fixture(scope="module")
def manager():
    return ModelManagement(DevicePolicy.choose(cpu=True))


@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v["family"] in TINY_FAMILY])
def test_a_checkpoint_with_markers_samples_as_comfyui_would(case, tmp_path, tiny_checkpoint, manager):
    family = CASES[case]["family"]
    sd = load_file(str(tiny_checkpoint(TINY_FAMILY[family])))
    sd.update(inputs(case))
    path = tmp_path / f"{case}.safetensors"
    save_file(sd, str(path))
    loaded = open_checkpoint(path, manager, [])
    model = loaded.model.model
    assert_matches_comfyui(case, loaded.model.get_model_object("model_sampling"), model.latent_format,
                           model.model_type)
    # markers are not weights: nothing of them reaches the UNet
    assert not {"v_pred", "ztsnr", "edm_mean", "edm_std"} & set(model.diffusion_model.state_dict())


@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v["family"] == "sd2"])
def test_sd2_prediction_follows_comfyuis_population_std_rule(case):
    sd = spec_state_dict("sd21_768_full")
    sd.update(inputs(case))
    info = detect(sd)
    assert info.family == ("sd2_v" if CASES[case]["model_type"] == "V_PREDICTION" else "sd2")
    assert_matches_comfyui(case, model_sampling_for(info.sampling))


def test_the_std_rule_case_sits_between_the_two_standard_deviations():
    """The committed probe separates the rules: a sample (n-1) std would call it v-prediction."""
    probe = next(iter(inputs("sd2_std_between").values()))
    assert probe.std(unbiased=False) < 0.09 < probe.std(unbiased=True)


def test_a_malformed_edm_bound_is_refused_by_name():
    from diffusion.checkpoint import CheckpointError

    sd = spec_state_dict("sdxl_base_1.0_full")
    sd["edm_vpred.sigma_max"] = torch.tensor([1.0, 2.0])
    with pytest.raises(CheckpointError, match="edm_vpred.sigma_max"):
        detect(sd, "odd.safetensors")
