"""Model loader nodes: checkpoints (with a YAML config, with a CLIP vision tower), bare diffusion
models, text encoders, diffusers folders and VAEs from the model folders."""
from __future__ import annotations

from pathlib import Path

from diffusion.device import file_identity
from diffusion.handles import open_checkpoint, open_vae
from diffusion.model_loading import (
    WEIGHT_DTYPES,
    apply_config,
    open_clip_vision_of_checkpoint,
    open_diffusers,
    open_diffusion_model,
    open_text_encoders,
)
from graph.contract import Combo, Node, Output

# CLIPLoader's and DualCLIPLoader's type lists (ComfyUI's; see diffusion.text_encoder_files for
# which of them build an encoder LatentGraph runs)
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
CLIP_RECIPES = ("[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
                "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n "
                "hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B")
DUAL_CLIP_RECIPES = ("[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\n"
                     "flux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\n"
                     "hunyuan_image: qwen2.5vl 7b and byt5 small")


def model_file(ctx, folder: str, name: str) -> Path:
    path = ctx.env.folders.full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{name!r} is not in the {folder} folder(s): "
                                f"{', '.join(str(d) for d in ctx.env.folders.model_dirs(folder))}")
    return path


def _checkpoint_names(env):
    return env.folders.filenames("checkpoints")


def _text_encoder_names(env):
    return env.folders.filenames("text_encoders")


def load_checkpoint(ctx, ckpt_name: str):
    """LoadedModels of a checkpoint, shared through the file cache by every checkpoint loader."""
    models = ctx.env.models
    embeddings = ctx.env.folders.model_dirs("embeddings")
    return models.cached("checkpoint", model_file(ctx, "checkpoints", ckpt_name),
                         lambda path: open_checkpoint(path, models, embeddings))


def checkpoint_clip_vision(ctx, ckpt_name: str, model):
    """The CLIP vision tower the checkpoint carries (unCLIP), or None."""
    models = ctx.env.models
    family = getattr(model.model, "checkpoint_family", "")
    return models.cached("checkpoint_clip_vision", model_file(ctx, "checkpoints", ckpt_name),
                         lambda path: open_clip_vision_of_checkpoint(path, family, models))


class CheckpointLoaderSimple(Node):
    """Loads a single-file SD1.x, SD2.x or SDXL checkpoint; the family is read from its weights."""

    display_name = "Load Checkpoint"
    comfy_function = "load_checkpoint"
    category = "loaders"
    inputs = (Combo("ckpt_name", _checkpoint_names, tooltip="The checkpoint (model) to load."),)
    outputs = (Output("MODEL", tooltip="The model used for denoising latents."),
               Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
               Output("VAE", tooltip="The VAE model used for encoding and decoding images to and from latent space."))

    def run(self, ctx, ckpt_name):
        loaded = load_checkpoint(ctx, ckpt_name)
        return (loaded.model, loaded.clip, loaded.vae)


class CheckpointLoader(Node):
    """The old loader with an LDM YAML config: the network still comes from the weights; the config's
    parameterization "v" and text encoder layer_idx are applied."""

    display_name = "Load Checkpoint With Config (DEPRECATED)"
    comfy_function = "load_checkpoint"
    category = "advanced/loaders"
    DEPRECATED = True
    inputs = (Combo("config_name", lambda env: env.folders.filenames("configs")), Combo("ckpt_name", _checkpoint_names))
    outputs = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    def run(self, ctx, config_name, ckpt_name):
        loaded = load_checkpoint(ctx, ckpt_name)
        model, clip = apply_config(ctx.env.folders.full_path("configs", config_name), loaded.model, loaded.clip)
        return (model, clip, loaded.vae)


class unCLIPCheckpointLoader(Node):
    """A checkpoint and the CLIP vision tower it carries (Stable unCLIP); CLIP_VISION is empty for
    checkpoints without one."""

    display_name = "unCLIPCheckpointLoader"
    comfy_function = "load_checkpoint"
    category = "loaders"
    inputs = (Combo("ckpt_name", _checkpoint_names),)
    outputs = (Output("MODEL"), Output("CLIP"), Output("VAE"), Output("CLIP_VISION"))

    def run(self, ctx, ckpt_name, output_vae=True, output_clip=True):
        loaded = load_checkpoint(ctx, ckpt_name)
        return (loaded.model, loaded.clip if output_clip else None, loaded.vae if output_vae else None,
                checkpoint_clip_vision(ctx, ckpt_name, loaded.model))


class ImageOnlyCheckpointLoader(Node):
    """Model, CLIP vision tower and VAE of an image-conditioned checkpoint. Video models (Stable
    Video Diffusion) are refused with the reason; other checkpoints give an empty CLIP_VISION
    unless they carry a tower (unCLIP)."""

    display_name = "Image Only Checkpoint Loader (img2vid model)"
    comfy_function = "load_checkpoint"
    comfy_module = "comfy_extras.nodes_video_model"
    category = "loaders/video_models"
    inputs = (Combo("ckpt_name", _checkpoint_names),)
    outputs = (Output("MODEL"), Output("CLIP_VISION"), Output("VAE"))

    def run(self, ctx, ckpt_name, output_vae=True, output_clip=True):
        # output_clip: ComfyUI's signature; this loader has no CLIP output to leave out
        loaded = load_checkpoint(ctx, ckpt_name)
        return (loaded.model, checkpoint_clip_vision(ctx, ckpt_name, loaded.model),
                loaded.vae if output_vae else None)


class UNETLoader(Node):
    """Loads a diffusion model on its own (a bare UNet file in the original or diffusers layout, or
    a checkpoint's UNet); fp8 weight types store the weights in 8 bits and compute in the model's
    usual dtype."""

    display_name = "Load Diffusion Model"
    comfy_function = "load_unet"
    category = "advanced/loaders"
    inputs = (Combo("unet_name", lambda env: env.folders.filenames("diffusion_models")),
              Combo("weight_dtype", list(WEIGHT_DTYPES)))
    outputs = (Output("MODEL"),)

    def run(self, ctx, unet_name, weight_dtype):
        models = ctx.env.models
        path = model_file(ctx, "diffusion_models", unet_name)
        return (models.cached("diffusion_model", path, lambda p: open_diffusion_model(p, models, weight_dtype),
                              options=(weight_dtype,)),)


def _device_option():
    return Combo("device", ["default", "cpu"], optional=True, advanced=True)


def _load_text_encoders(ctx, names: list[str], clip_type: str, device: str):
    models = ctx.env.models
    paths = [model_file(ctx, "text_encoders", name) for name in names]
    embeddings = ctx.env.folders.model_dirs("embeddings")
    others = tuple(file_identity(p) for p in paths[1:])
    return models.cached("text_encoder", paths[0],
                         lambda _p: open_text_encoders(paths, models, embeddings, clip_type, device),
                         options=(others, clip_type, device))


class CLIPLoader(Node):
    display_name = "Load CLIP"
    comfy_function = "load_clip"
    category = "advanced/loaders"
    DESCRIPTION = CLIP_RECIPES
    inputs = (Combo("clip_name", _text_encoder_names), Combo("type", list(CLIP_TYPES)), _device_option())
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip_name, type="stable_diffusion", device="default"):
        return (_load_text_encoders(ctx, [clip_name], type, device),)


class DualCLIPLoader(Node):
    display_name = "DualCLIPLoader"
    comfy_function = "load_clip"
    category = "advanced/loaders"
    DESCRIPTION = DUAL_CLIP_RECIPES
    inputs = (Combo("clip_name1", _text_encoder_names), Combo("clip_name2", _text_encoder_names),
              Combo("type", list(DUAL_CLIP_TYPES)), _device_option())
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip_name1, clip_name2, type, device="default"):
        return (_load_text_encoders(ctx, [clip_name1, clip_name2], type, device),)


class DiffusersLoader(Node):
    """Loads a diffusers model folder (model_index.json with unet/, vae/, text_encoder/ and, for
    SDXL, text_encoder_2/) from the diffusers folder."""

    display_name = "DiffusersLoader"
    comfy_function = "load_checkpoint"
    category = "advanced/loaders/deprecated"
    inputs = (Combo("model_path", lambda env: env.folders.filenames("diffusers")),)
    outputs = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    def run(self, ctx, model_path, output_vae=True, output_clip=True):
        # output_vae / output_clip: ComfyUI's Python callers (plugins) may ask for the UNet alone
        models = ctx.env.models
        path = model_file(ctx, "diffusers", model_path)
        embeddings = ctx.env.folders.model_dirs("embeddings")
        loaded = models.cached("diffusers", path, lambda p: open_diffusers(p, models, embeddings))
        return (loaded.model, loaded.clip if output_clip else None, loaded.vae if output_vae else None)


class VAELoader(Node):
    display_name = "Load VAE"
    comfy_function = "load_vae"
    category = "loaders"
    inputs = (Combo("vae_name", lambda env: env.folders.filenames("vae")),)
    outputs = (Output("VAE"),)

    def run(self, ctx, vae_name):
        models = ctx.env.models
        return (models.cached("vae", model_file(ctx, "vae", vae_name), lambda path: open_vae(path, models)),)


NODES = [CheckpointLoaderSimple, CheckpointLoader, unCLIPCheckpointLoader, ImageOnlyCheckpointLoader, UNETLoader,
         CLIPLoader, DualCLIPLoader, DiffusersLoader, VAELoader]
