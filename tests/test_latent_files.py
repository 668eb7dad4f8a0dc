"""SaveLatent / LoadLatent: ComfyUI's .latent file (safetensors with "latent_tensor" and the
"latent_format_version_0" marker, prompt and workflow as JSON metadata), the old pre-marker
format (samples stored x 0.18215), counters, and paths that must stay in their folders."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from graph.errors import PromptError
from graph.executor import Executor
from tests.node_helpers import builtin_registry, call_in_context

WORKFLOW = {"nodes": [{"id": 1, "type": "EmptyLatentImage"}], "links": []}


@pytest.fixture
def registry(tmp_path):
    return builtin_registry(tmp_path)


def save_prompt(prefix="latents/ComfyUI", batch=2):
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": batch}},
        "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 1.0}},
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": prefix}},
    }


def test_saved_file_has_comfyuis_keys_metadata_and_name(registry):
    prompt = save_prompt()
    result = Executor(registry).run(prompt, extra_data={"extra_pnginfo": {"workflow": WORKFLOW}})
    assert result.ok, result.error
    assert result.outputs["3"] == {"latents": [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents",
                                                "type": "output"}]}
    path = registry.env.folders.output_dir / "latents" / "ComfyUI_00001_.latent"
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert f.get_tensor("latent_tensor").shape == (2, 4, 6, 8)
        assert f.get_tensor("latent_format_version_0").numel() == 0
        metadata = f.metadata()
    assert json.loads(metadata["prompt"]) == prompt and json.loads(metadata["workflow"]) == WORKFLOW
    Executor(registry).run(save_prompt())
    assert (path.parent / "ComfyUI_00002_.latent").is_file()


def test_without_metadata_the_file_carries_none(tmp_path):
    from app.env import Environment
    from app.folders import FolderPaths
    from graph.registry import NodeRegistry
    from nodes import register_builtin_nodes

    registry = NodeRegistry(Environment(FolderPaths(tmp_path), {"disable_metadata": True}))
    register_builtin_nodes(registry)
    assert Executor(registry).run(save_prompt("plain")).ok
    with safe_open(str(registry.env.folders.output_dir / "plain_00001_.latent"), framework="pt") as f:
        assert not f.metadata()


def test_a_saved_latent_loads_back_unchanged(registry):
    samples = torch.randn(3, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    call_in_context(registry, "SaveLatent", samples={"samples": samples}, filename_prefix="round")
    folders = registry.env.folders
    shutil.copy(folders.output_dir / "round_00001_.latent", folders.input_dir / "round.latent")
    (loaded,) = call_in_context(registry, "LoadLatent", latent="round.latent")
    assert torch.equal(loaded["samples"], samples)
    # "[output]" reads the output folder directly
    (again,) = call_in_context(registry, "LoadLatent", latent="round_00001_.latent [output]")
    assert torch.equal(again["samples"], samples)


def test_a_file_from_before_the_version_marker_is_unscaled(registry):
    stored = torch.full((1, 4, 2, 2), 0.18215)
    save_file({"latent_tensor": stored}, str(registry.env.folders.input_dir / "old.latent"))
    (loaded,) = call_in_context(registry, "LoadLatent", latent="old.latent")
    assert torch.allclose(loaded["samples"], torch.ones(1, 4, 2, 2), atol=1e-6)


def test_the_list_holds_the_input_folders_latent_files_only(registry):
    folders = registry.env.folders
    for name in ("b.latent", "a.latent", "image.png"):
        (folders.input_dir / name).write_bytes(b"x")
    (folders.input_dir / "sub").mkdir()
    (folders.input_dir / "sub" / "c.latent").write_bytes(b"x")
    info = registry.describe("LoadLatent")["LoadLatent"]
    assert info["input"]["required"]["latent"][0] == ["a.latent", "b.latent"]


def test_paths_out_of_their_folders_are_refused(registry, tmp_path):
    outside = tmp_path.parent / "outside.latent"
    save_file({"latent_tensor": torch.zeros(1, 4, 1, 1)}, str(outside))
    prompt = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "../outside.latent"}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(PromptError) as caught:
        Executor(registry).run(prompt)
    assert "Invalid latent file" in json.dumps(caught.value.node_errors)
    result = Executor(registry).run(save_prompt("../escape"))
    assert not result.ok and "outside the output folder" in result.error["exception_message"]


def test_a_file_that_is_not_safetensors_is_a_clear_error(registry):
    (registry.env.folders.input_dir / "junk.latent").write_bytes(b"not a latent at all")
    with pytest.raises(ValueError, match="junk.latent is not a readable .latent"):
        call_in_context(registry, "LoadLatent", latent="junk.latent")


def test_changing_the_file_changes_the_fingerprint(registry):
    folders = registry.env.folders
    save_file({"latent_tensor": torch.zeros(1, 4, 1, 1)}, str(folders.input_dir / "f.latent"))
    node = registry.get("LoadLatent")
    first = node.is_changed({"latent": "f.latent"})
    save_file({"latent_tensor": torch.ones(1, 4, 1, 1)}, str(folders.input_dir / "f.latent"))
    assert node.is_changed({"latent": "f.latent"}) != first
