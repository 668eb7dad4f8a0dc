"""The loaders beyond a plain checkpoint: bare diffusion models, text encoder files, diffusers
folders, checkpoints with a CLIP vision tower, and the old loader's YAML configs.

Every network is registered with the model-lifetime service with a way to rebuild it from its
file(s), like the checkpoint loader's (diffusion.handles).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml
from torch import nn

from .checkpoint import (MARKER_KEYS, UNCLIP_VISION_PREFIX, CheckpointError, detect, load_unet, load_vae,
                         read_state_dict, stored_state_dict)
from .diffusers_layout import diffusers_files, diffusers_unet_to_original, is_diffusers_unet
from .handles import LoadedModels, _prepare_unet, diffusion_model_for, wrap_clip, wrap_diffusion_model, wrap_vae
from .model_sampling import ModelSamplingDiscrete

log = logging.getLogger(__name__)

# UNETLoader's weight_dtype option -> storage dtype of the weights
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}
# families whose checkpoints carry a CLIP vision tower, and its prefix
CLIP_VISION_PREFIXES = {"sd2_unclip_h": UNCLIP_VISION_PREFIX, "sd2_unclip_l": UNCLIP_VISION_PREFIX}


# ---------------------------------------------------------------------------------------------
# weights stored in one dtype, computed in another


class _UpcastOnCall:
    """Forward hooks giving a module its own parameters in the compute dtype for one call, so
    weights can be stored narrower (fp8) than any kernel computes in."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.dtype = dtype
        self.saved: dict = {}
        module.register_forward_pre_hook(self.before)
        module.register_forward_hook(self.after)

    def before(self, module, args):
        for name, p in list(module._parameters.items()):
            if p is not None and p.dtype != self.dtype and p.is_floating_point():
                self.saved[name] = p
                module._parameters[name] = nn.Parameter(p.detach().to(self.dtype), requires_grad=False)

    def after(self, module, args, output):
        module._parameters.update(self.saved)
        self.saved.clear()


def store_weights_as(unet: nn.Module, storage: torch.dtype, compute: torch.dtype) -> nn.Module:
    """Round every floating weight to `storage` (round to nearest, as a copy into a tensor of that
    dtype does) and compute in `compute`."""
    with torch.no_grad():
        for module in unet.modules():
            own = [n for n, p in module._parameters.items() if p is not None and p.is_floating_point()]
            for name in own:
                module._parameters[name] = nn.Parameter(module._parameters[name].to(storage), requires_grad=False)
            if own:
                _UpcastOnCall(module, compute)
    unet.compute_dtype = compute
    return unet


# ---------------------------------------------------------------------------------------------
# diffusion models (UNETLoader)


def diffusion_model_weights(sd: dict[str, torch.Tensor], source=None):
    """(info, UNet weights without prefix) of a bare UNet file, a checkpoint or a diffusers UNet."""
    if is_diffusers_unet(sd):
        try:
            sd = diffusers_unet_to_original(sd)
        except ValueError as exc:
            raise CheckpointError(source, str(exc)) from None
    info = detect(sd, source)
    prefix = info.unet_prefix
    weights = {k[len(prefix):]: v for k, v in sd.items()
               if k.startswith(prefix) and k not in MARKER_KEYS and k[len(prefix):] not in MARKER_KEYS}
    return info, weights


def diffusion_model_from_state_dict(sd: dict[str, torch.Tensor], manager, storage: torch.dtype | None = None,
                                    source=None):
    """MODEL of a UNet state dict (bare, checkpoint or diffusers layout); `storage` a narrower dtype
    (fp8) to keep the weights in, computing in the service's UNet dtype."""
    compute = manager.unet_dtype()

    def build(weights=None):
        info, unet_weights = diffusion_model_weights(weights if weights is not None else read_state_dict(source),
                                                     source)
        unet = load_unet(unet_weights, info.unet_config, manager.unet_inital_load_device(), compute, source)
        if storage is not None and storage != compute:
            store_weights_as(unet, storage, compute)
        return info, unet

    info, unet = build(sd)
    patcher = wrap_diffusion_model(unet, info, manager)
    if storage is not None and storage != compute:
        patcher.model.manual_cast_dtype = compute
    if source is not None:
        manager.register(patcher.model, lambda: _rebuilt(build, manager), name=f"UNet of {Path(source).name}")
    return patcher


def open_diffusion_model(path: Path, manager, weight_dtype: str = "default"):
    """MODEL of a diffusion-model file (UNETLoader), its weights stored as `weight_dtype` says."""
    path = Path(path)
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    manager.make_room_for_load(path.stat().st_size)
    return diffusion_model_from_state_dict(read_state_dict(path), manager, WEIGHT_DTYPES[weight_dtype], path)


def _rebuilt(build, manager) -> nn.Module:
    info, unet = build()
    return diffusion_model_for(_prepare_unet(unet, manager), info)


# ---------------------------------------------------------------------------------------------
# text encoders (CLIPLoader, DualCLIPLoader)


def text_encoders_from_state_dicts(state_dicts, manager, embedding_dirs: list[Path], clip_type: str | None = None,
                                   device: str = "default", sources=None, rebuild=None):
    """CLIP of one or two text encoders' weights; device "cpu" keeps it on the CPU (ComfyUI's option)."""
    from .text_encoder_files import text_encoder_from_state_dicts

    dtype = manager.text_encoder_dtype()  # storage; computed in fp32 wherever it runs
    offload = manager.text_encoder_offload_device() if device != "cpu" else torch.device("cpu")
    text = text_encoder_from_state_dicts(state_dicts, clip_type, dtype, offload, sources)
    clip = wrap_clip(text, manager, embedding_dirs)
    if device == "cpu":
        clip.patcher.load_device = clip.patcher.offload_device = torch.device("cpu")
    names = " + ".join(Path(p).name for p in sources) if sources else "text encoder"
    manager.register(text, rebuild, name=f"text encoder of {names}")
    return clip


def open_text_encoders(paths: list[Path], manager, embedding_dirs: list[Path], clip_type: str | None = None,
                       device: str = "default"):
    """CLIP of one or two text encoder files (CLIPLoader, DualCLIPLoader)."""
    paths = [Path(p) for p in paths]
    manager.make_room_for_load(sum(p.stat().st_size for p in paths))

    def rebuild():
        from .text_encoder_files import load_text_encoder_files

        return load_text_encoder_files(paths, clip_type, manager.text_encoder_dtype(),
                                       manager.text_encoder_offload_device() if device != "cpu"
                                       else torch.device("cpu"))

    return text_encoders_from_state_dicts([read_state_dict(p) for p in paths], manager, embedding_dirs, clip_type,
                                          device, paths, rebuild)


# ---------------------------------------------------------------------------------------------
# diffusers folders (DiffusersLoader)


def open_diffusers(folder: Path, manager, embedding_dirs: list[Path]) -> LoadedModels:
    files = diffusers_files(Path(folder))
    model = open_diffusion_model(files["unet"], manager)
    clip = open_text_encoders(files["text"], manager, embedding_dirs)
    vae_path = files["vae"]
    vae = load_vae(stored_state_dict(vae_path), manager.vae_offload_device(), manager.policy.vae_dtype, vae_path)
    return LoadedModels(model, clip, wrap_vae(vae, manager, vae_path))


# ---------------------------------------------------------------------------------------------
# checkpoints with a CLIP vision tower (unCLIPCheckpointLoader, ImageOnlyCheckpointLoader)


def open_clip_vision_of_checkpoint(path: Path, family: str, manager):
    """The CLIP vision tower a checkpoint of this family carries, or None (ComfyUI: families
    without one give no CLIP_VISION)."""
    from .clip_vision import build, clip_vision_weights, load_clip_vision_state_dict

    prefix = CLIP_VISION_PREFIXES.get(family)
    if prefix is None:
        return None
    sd = read_state_dict(path)
    if not any(k.startswith(prefix) for k in sd):
        return None

    def rebuild():
        weights = clip_vision_weights(read_state_dict(path), path, prefix)
        return build(weights, manager.text_encoder_offload_device(), manager.text_encoder_dtype(), path)

    return load_clip_vision_state_dict(sd, manager, path, prefix=prefix, rebuild=rebuild)


# ---------------------------------------------------------------------------------------------
# the old loader's YAML configs (CheckpointLoader)


def apply_config(config_path: Path | None, model, clip, config: dict | None = None):
    """What ComfyUI's CheckpointLoader takes from an LDM YAML config (or the parsed `config`):
    `parameterization: "v"` makes the model v-prediction (on a clone), and the text encoder
    config's `layer_idx` sets the CLIP's last layer. The network shape still comes from the weights."""
    if config is None and config_path is None:
        raise FileNotFoundError("config_name is not in the configs folder")
    try:
        if config is None:
            config = yaml.safe_load(Path(config_path).read_text())
        params = config["model"]["params"]
        clip_params = params["cond_stage_config"].get("params") or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{config_path}: not an LDM model config (model.params.cond_stage_config): {exc}") from None
    if params.get("parameterization") == "v":
        sampling = model.get_model_object("model_sampling")
        model = model.clone()
        model.add_object_patch("model_sampling", _with_prediction(sampling, "v_prediction"))
    layer_idx = clip_params.get("layer_idx")
    if layer_idx is not None and clip is not None:
        clip = clip.clone()  # the loaded CLIP is shared through the file cache
        clip.clip_layer(layer_idx)
    return model, clip


def _with_prediction(sampling, prediction: str):
    if hasattr(sampling, "with_prediction"):
        return sampling.with_prediction(prediction)
    return ModelSamplingDiscrete(prediction)


__all__ = ["WEIGHT_DTYPES", "apply_config", "diffusion_model_from_state_dict", "diffusion_model_weights",
           "open_clip_vision_of_checkpoint",
           "open_diffusers", "open_diffusion_model", "open_text_encoders", "store_weights_as",
           "text_encoders_from_state_dicts"]
