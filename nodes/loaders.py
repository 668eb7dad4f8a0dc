"""Model loader nodes: checkpoints and VAEs from the model folders."""
from __future__ import annotations

from pathlib import Path

from diffusion.handles import open_checkpoint, open_vae
from graph.contract import Combo, Node, Output


def model_file(ctx, folder: str, name: str) -> Path:
    path = ctx.env.folders.full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{name!r} is not in the {folder} folder(s): "
                                f"{', '.join(str(d) for d in ctx.env.folders.model_dirs(folder))}")
    return path


class CheckpointLoaderSimple(Node):
    """Loads a single-file SD1.x, SD2.x or SDXL checkpoint; the family is read from its weights."""

    display_name = "Load Checkpoint"
    comfy_function = "load_checkpoint"
    category = "loaders"
    inputs = (Combo("ckpt_name", lambda env: env.folders.filenames("checkpoints"),
                    tooltip="The checkpoint (model) to load."),)
    outputs = (Output("MODEL", tooltip="The model used for denoising latents."),
               Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
               Output("VAE", tooltip="The VAE model used for encoding and decoding images to and from latent space."))

    def run(self, ctx, ckpt_name):
        models = ctx.env.models
        embeddings = ctx.env.folders.model_dirs("embeddings")
        loaded = models.cached("checkpoint", model_file(ctx, "checkpoints", ckpt_name),
                               lambda path: open_checkpoint(path, models, embeddings))
        return (loaded.model, loaded.clip, loaded.vae)


class VAELoader(Node):
    display_name = "Load VAE"
    comfy_function = "load_vae"
    category = "loaders"
    inputs = (Combo("vae_name", lambda env: env.folders.filenames("vae")),)
    outputs = (Output("VAE"),)

    def run(self, ctx, vae_name):
        models = ctx.env.models
        return (models.cached("vae", model_file(ctx, "vae", vae_name), lambda path: open_vae(path, models)),)


NODES = [CheckpointLoaderSimple, VAELoader]
