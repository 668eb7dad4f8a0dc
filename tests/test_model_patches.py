"""Model-patch nodes as MODEL values: each returns a clone carrying its hooks and leaves its input
as it was; TorchCompileModel really runs the UNet through torch.compile and restores the network.

What the patches do to a sampled latent is checked against ComfyUI in test_model_patch_parity.py.
"""
import logging

import pytest

from diffusion.ksampler import common_ksampler
from diffusion.model import DiffusionModel
from diffusion.model_patcher import ModelPatcher
from diffusion.patcher_extension import WrappersMP
from diffusion.torch_compile import COMPILE_KEY
from diffusion.unet import UNetConfig, UNetModel
from tests import model_patch_cases as cases
from tests.models_tiny import randomize_
from tests.node_helpers import builtin_registry, call_in_context



@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return builtin_registry(tmp_path_factory.mktemp("patches"))


def tiny_model(seed: int = 7, **config) -> ModelPatcher:
    unet = randomize_(UNetModel(UNetConfig(**{**cases.UNET, **config})), seed).eval()
    return ModelPatcher(DiffusionModel(unet), "cpu", "cpu")


def _identities(value):
    """`value` with containers unfolded and every other object replaced by its id: equal for two
    states exactly when the same objects sit in the same places."""
    if isinstance(value, dict):
        return {k: _identities(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_identities(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else id(value)


def _state(model: ModelPatcher):
    return _identities((model.model_options, model.patches, model.wrappers, model.object_patches))


@pytest.mark.parametrize("case", [c for c in cases.CASES if c.patches], ids=lambda c: c.id)
def test_a_patch_node_returns_a_clone_and_leaves_its_input_unchanged(registry, case):
    model, model2 = tiny_model(7), tiny_model(8)
    for node, inputs in case.patches:
        given = {k: (model if v == "<MODEL>" else model2 if v == "<MODEL2>" else cases.EMPTY if v == "<EMPTY>"
                     else call_in_context(registry, v.node, **v.inputs)[0] if isinstance(v, cases.Call) else v)
                 for k, v in inputs.items()}
        before = _state(model), _state(model2)
        (patched,) = call_in_context(registry, node, **given)
        assert patched is not model and patched.model is model.model
        assert (_state(model), _state(model2)) == before, f"{node} changed its input MODEL"
        assert _state(patched) != before[0], f"{node} added nothing to the MODEL"
        model = patched


def test_plugins_find_the_classes_under_comfyuis_python_names():
    from comfy_extras.nodes_eps import EpsilonScaling
    from comfy_extras.nodes_model_merging import CLIPAdd, CLIPSubtract, ModelAdd, ModelMergeBlocks, ModelSubtract

    import nodes

    assert EpsilonScaling is nodes.builtin_classes()["Epsilon Scaling"]
    assert (ModelAdd, ModelSubtract, CLIPAdd, CLIPSubtract, ModelMergeBlocks) == (
        nodes.ModelMergeAdd, nodes.ModelMergeSubtract, nodes.CLIPMergeAdd, nodes.CLIPMergeSubtract,
        nodes.ModelMergeBlocks)


def test_plugins_find_set_torch_compile_wrapper_where_comfyui_has_it():
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    from diffusion import torch_compile

    assert set_torch_compile_wrapper is torch_compile.set_torch_compile_wrapper
    model = tiny_model(7)
    set_torch_compile_wrapper(model=model, backend="inductor", keys=["diffusion_model"])
    assert len(model.get_wrappers(WrappersMP.APPLY_MODEL, COMPILE_KEY)) == 1


def test_torch_compile_model_runs_the_unet_through_torch_compile(registry, caplog):
    """The "cudagraphs" backend on CPU tensors: dynamo traces the UNet and AOT autograd builds the
    graph (no C++ code generation, so seconds rather than minutes); torch then skips the CUDA
    graph capture for CPU inputs and runs that graph. A smaller UNet than the parity cases keeps
    the trace short. The result must equal the eager UNet's (tolerance 1e-6 of the magnitude)."""
    import torch._dynamo

    model = tiny_model(7, channel_mult=(1,), transformer_depth=(1,))
    unet = model.model.diffusion_model
    (compiled,) = call_in_context(registry, "TorchCompileModel", model=model, backend="cudagraphs")
    assert not model.get_all_wrappers(WrappersMP.APPLY_MODEL)
    assert len(compiled.get_wrappers(WrappersMP.APPLY_MODEL, COMPILE_KEY)) == 1
    assert compiled.model_options["torch_compile_kwargs"]["backend"] == "cudagraphs"
    (again,) = call_in_context(registry, "TorchCompileModel", model=compiled, backend="inductor")
    assert len(again.get_wrappers(WrappersMP.APPLY_MODEL, COMPILE_KEY)) == 1  # replaced, not stacked

    torch._dynamo.reset()
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with caplog.at_level(logging.ERROR, logger="torch"), torch.inference_mode():
        frames_before = torch._dynamo.utils.counters["frames"]["ok"]
        out = common_ksampler(compiled, 5, 1, 3.0, "euler", "normal", cases.POSITIVE, cases.NEGATIVE, latent)
        frames = torch._dynamo.utils.counters["frames"]["ok"] - frames_before
        eager = common_ksampler(model, 5, 1, 3.0, "euler", "normal", cases.POSITIVE, cases.NEGATIVE, latent)
    assert frames > 0, "torch.compile traced nothing"
    assert model.model.diffusion_model is unet and "diffusion_model" in dict(model.model.named_children())
    error = float((out["samples"] - eager["samples"]).abs().max())
    assert error <= 1e-6 * float(eager["samples"].abs().max())
    torch._dynamo.reset()
