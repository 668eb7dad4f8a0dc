"""Model-sampling patches (ComfyUI's comfy_extras.nodes_model_advanced): a MODEL with another
time axis or prediction type, sharing the network."""
from __future__ import annotations

from diffusion.latent_formats import SDXLPlayground25
from graph.contract import Boolean, Combo, Float, Node, Output, Socket

ADVANCED = "comfy_extras.nodes_model_advanced"


def with_model_sampling(model, model_sampling, **other_objects):
    """A clone of MODEL whose model sampling (and any other named object) is patched in; the
    network is shared, and the input MODEL is left as it was."""
    patched = model.clone()
    for name, obj in {"model_sampling": model_sampling, **other_objects}.items():
        patched.add_object_patch(name, obj)
    return patched


def model_sampling_of(model):
    return model.get_model_object("model_sampling")


def SigmaLimit(name: str, default: float) -> Float:
    return Float(name, default, min=0.0, max=1000.0, step=0.001, round=False)


class ModelSamplingDiscrete(Node):
    """Sets what the model predicts on its 1000-step table: eps, v (e.g. a v-prediction SD1.x
    fine-tune), lcm (LCM and LCM-LoRA: the 50-step distilled table with the consistency
    boundary condition), x0, or img_to_img (x0 from the unscaled input); zsnr rescales the
    table to zero terminal SNR."""

    comfy_function = "patch"
    category = "advanced/model"
    comfy_module = ADVANCED
    inputs = (Socket("model", "MODEL"), Combo("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
              Boolean("zsnr", False))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, sampling, zsnr):
        return (with_model_sampling(model, model_sampling_of(model).with_prediction(sampling, zsnr)),)


class ModelSamplingContinuousEDM(Node):
    """A continuous log-sigma time axis over [sigma_min, sigma_max] (EDM-trained models such as
    Playground v2.5, whose latent scaling it also sets, or CosXL with v_prediction)."""

    comfy_function = "patch"
    category = "advanced/model"
    comfy_module = ADVANCED
    inputs = (Socket("model", "MODEL"),
              Combo("sampling", ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]),
              SigmaLimit("sigma_max", 120.0), SigmaLimit("sigma_min", 0.002))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, sampling, sigma_max, sigma_min):
        kind, prediction, sigma_data = "edm", sampling, 1.0
        if sampling in ("edm", "edm_playground_v2.5"):
            prediction, sigma_data = "edm", 0.5
        elif sampling == "cosmos_rflow":
            kind = "cosmos_rflow"
        ms = model_sampling_of(model).with_continuous(kind, prediction, sigma_min, sigma_max, sigma_data)
        if sampling == "edm_playground_v2.5":
            return (with_model_sampling(model, ms, latent_format=SDXLPlayground25()),)
        return (with_model_sampling(model, ms),)


class ModelSamplingContinuousV(Node):
    """A continuous arctan time axis (t = 2 atan(sigma) / pi) over [sigma_min, sigma_max] for
    v-prediction models trained on continuous time."""

    comfy_function = "patch"
    category = "advanced/model"
    comfy_module = ADVANCED
    inputs = (Socket("model", "MODEL"), Combo("sampling", ["v_prediction"]), SigmaLimit("sigma_max", 500.0),
              SigmaLimit("sigma_min", 0.03))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, sampling, sigma_max, sigma_min):
        return (with_model_sampling(model, model_sampling_of(model).with_continuous("v", sampling, sigma_min,
                                                                                        sigma_max)),)


NODES = [ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingContinuousV]
