"""ComfyUI's training nodes (comfy_extras.nodes_train): data sets from folders, Train LoRA, Load
LoRA Model, Save LoRA Weights and Plot Loss Graph.

LORA_MODEL values are LoRA state dicts in kohya's layout (what Save LoRA Weights writes and any
LoRA loader reads); LOSS_MAP is {"loss": [one value per batch]}. The maths is in
diffusion.training.lora_train.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from app.folders import safe_join
from diffusion.checkpoint import read_state_dict
from diffusion.lora import load_lora_for_models
from diffusion.training import datasets
from diffusion.training.lora_train import (ALGORITHMS, DTYPES, LOSSES, OPTIMIZERS, LoraSettings, LoraTrainer,
                                           steps_in_filename)
from diffusion.training.loss_plot import draw_loss_plot
from graph.context import LatentPreview
from graph.contract import Boolean, Combo, Float, Input, Int, Node, Output, Socket, String
from nodes.image import png_metadata, save_target
from nodes.loaders import model_file
from nodes.lora import Strength

NO_LORA = "[None]"
MODULE = "comfy_extras.nodes_train"


def input_subfolders(env) -> list[str]:
    """Every folder below input/, "/"-separated and sorted (ComfyUI's get_input_subfolders)."""
    root = env.folders.input_dir
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        if rel != ".":
            found.append(rel)
    return sorted(found)


def _dataset_folder(ctx, folder: str) -> Path:
    path = safe_join(ctx.env.folders.input_dir, folder)
    if not path.is_dir():
        raise FileNotFoundError(f"training folder {folder!r} is not a folder under {ctx.env.folders.input_dir}")
    return path


def ResizeMethod() -> Input:
    return Combo("resize_method", list(datasets.RESIZE_METHODS), default="None", optional=True)


def FolderChoice() -> Input:
    return Combo("folder", input_subfolders, tooltip="The folder to load images from.")


class LoadImageSetFromFolderNode(Node):
    """Loads a batch of images from a directory for training."""

    display_name = "Load Image Dataset from Folder"
    comfy_function = "load_images"
    category = "loaders"
    comfy_module = MODULE
    EXPERIMENTAL = True
    inputs = (FolderChoice(), ResizeMethod())
    outputs = (Output("IMAGE"),)

    def run(self, ctx, folder, resize_method="None"):
        return (datasets.load_images(datasets.folder_images(_dataset_folder(ctx, folder)), resize_method),)


class LoadImageTextSetFromFolderNode(Node):
    """Loads a batch of images and caption from a directory for training."""

    display_name = "Load Image and Text Dataset from Folder"
    comfy_function = "load_images"
    category = "loaders"
    comfy_module = MODULE
    EXPERIMENTAL = True
    inputs = (FolderChoice(), Socket("clip", "CLIP", tooltip="The CLIP model used for encoding the text."),
              ResizeMethod(),
              Int("width", -1, min=-1, max=10000, step=1, optional=True,
                  tooltip="The width to resize the images to. -1 means use the original width."),
              Int("height", -1, min=-1, max=10000, step=1, optional=True,
                  tooltip="The height to resize the images to. -1 means use the original height."))
    outputs = (Output("IMAGE"), Output("CONDITIONING"))

    def run(self, ctx, folder, clip, resize_method="None", width=None, height=None):
        if clip is None:
            raise RuntimeError("the clip input is empty: the checkpoint holds no text encoder")
        pairs = datasets.captioned_images(_dataset_folder(ctx, folder))
        images = datasets.load_images([p for p, _ in pairs], resize_method, None if width in (None, -1) else width,
                                      None if height in (None, -1) else height)
        encoded: dict[str, list] = {}
        conditioning = []
        for n, (_, caption) in enumerate(pairs, 1):
            if caption not in encoded:   # repeated images (kohya folders) share one encoding
                encoded[caption] = clip.encode_from_tokens_scheduled(clip.tokenize(caption))[0]
            conditioning.append(encoded[caption])
            ctx.progress(n, len(pairs))
        return (images, conditioning)


def _existing_loras(env) -> list[str]:
    return env.folders.filenames("loras") + [NO_LORA]


class TrainLoraNode(Node):
    display_name = "Train LoRA"
    comfy_function = "train"
    category = "training"
    comfy_module = MODULE
    EXPERIMENTAL = True
    inputs = (
        Socket("model", "MODEL", tooltip="The model to train the LoRA on."),
        Socket("latents", "LATENT", tooltip="The Latents to use for training, serve as dataset/input of the model."),
        Socket("positive", "CONDITIONING", tooltip="The positive conditioning to use for training."),
        Int("batch_size", 1, min=1, max=10000, step=1, tooltip="The batch size to use for training."),
        Int("grad_accumulation_steps", 1, min=1, max=1024, step=1,
            tooltip="The number of gradient accumulation steps to use for training."),
        Int("steps", 16, min=1, max=100000, tooltip="The number of steps to train the LoRA for."),
        Float("learning_rate", 0.0005, min=0.0000001, max=1.0, step=0.000001,
              tooltip="The learning rate to use for training."),
        Int("rank", 8, min=1, max=128, tooltip="The rank of the LoRA layers."),
        Combo("optimizer", list(OPTIMIZERS), default="AdamW", tooltip="The optimizer to use for training."),
        Combo("loss_function", list(LOSSES), default="MSE", tooltip="The loss function to use for training."),
        Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF,
            tooltip="The seed to use for training (used in generator for LoRA weight initialization and noise "
                    "sampling)"),
        Combo("training_dtype", list(DTYPES), default="bf16", tooltip="The dtype to use for training."),
        Combo("lora_dtype", list(DTYPES), default="bf16", tooltip="The dtype to use for lora."),
        Combo("algorithm", list(ALGORITHMS), default="LoRA",
              tooltip="The algorithm to use for training."),
        Boolean("gradient_checkpointing", True, tooltip="Use gradient checkpointing for training."),
        Combo("existing_lora", _existing_loras, default=NO_LORA,
              tooltip="The existing LoRA to append to. Set to None for new LoRA."),
    )
    outputs = (Output("MODEL", "model_with_lora"), Output("LORA_MODEL", "lora"), Output("LOSS_MAP", "loss"),
               Output("INT", "steps"))

    def run(self, ctx, model, latents, positive, batch_size, steps, grad_accumulation_steps, learning_rate, rank,
            optimizer, loss_function, seed, training_dtype, lora_dtype, algorithm, gradient_checkpointing,
            existing_lora):
        if model is None:
            raise RuntimeError("the model input is empty: the checkpoint holds no diffusion model")
        existing, existing_steps = None, 0
        if existing_lora != NO_LORA:
            existing = read_state_dict(model_file(ctx, "loras", existing_lora))
            existing_steps = steps_in_filename(existing_lora)
        settings = LoraSettings(steps=steps, batch_size=batch_size, grad_accumulation_steps=grad_accumulation_steps,
                                learning_rate=learning_rate, rank=rank, optimizer=optimizer,
                                loss_function=loss_function, seed=seed, training_dtype=training_dtype,
                                lora_dtype=lora_dtype, gradient_checkpointing=gradient_checkpointing,
                                algorithm=algorithm)
        trainer = LoraTrainer(model, latents["samples"], positive, settings, existing)
        family = getattr(model.model, "family", "sd1")
        trainer.run(lambda step, total, loss, x0: ctx.progress(step, total, LatentPreview(x0, family)))
        lora = trainer.lora_state_dict()
        model_with_lora, _, _ = load_lora_for_models(model, None, lora, 1.0, 0.0, name="trained LoRA")
        return (model_with_lora, lora, {"loss": list(trainer.losses)}, steps + existing_steps)


class LoraModelLoader(Node):
    """Load Trained LoRA weights from Train LoRA node."""

    comfy_function = "load_lora_model"
    display_name = "Load LoRA Model"
    category = "loaders"
    comfy_module = MODULE
    EXPERIMENTAL = True
    inputs = (Socket("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Socket("lora", "LORA_MODEL", tooltip="The LoRA model to apply to the diffusion model."),
              Strength("strength_model", "diffusion model"))
    outputs = (Output("MODEL", tooltip="The modified diffusion model."),)

    def run(self, ctx, model, lora, strength_model):
        if strength_model == 0:
            return (model,)
        new_model, _, _ = load_lora_for_models(model, None, lora, strength_model, 0.0, name="LoRA model")
        return (new_model,)


class SaveLoRANode(Node):
    """Saves a trained LoRA under output/ (loras/... is listed by Load LoRA)."""

    comfy_function = "save"
    display_name = "Save LoRA Weights"
    category = "loaders"
    comfy_module = MODULE
    EXPERIMENTAL = True
    output_node = True
    inputs = (Socket("lora", "LORA_MODEL", tooltip="The LoRA model to save. Do not use the model with LoRA layers."),
              String("prefix", "loras/ComfyUI_trained_lora", multiline=None,
                     tooltip="The prefix to use for the saved LoRA file."),
              Int("steps", None, min=None, max=None, optional=True, forceInput=True,
                  tooltip="Optional: The number of steps to LoRA has been trained for, used to name the saved file."))
    outputs = ()

    def run(self, ctx, lora, prefix, steps=None):
        from safetensors.torch import save_file

        target = save_target(ctx.env.folders.output_dir, prefix, 0, 0)
        target.folder.mkdir(parents=True, exist_ok=True)
        middle = "" if steps is None else f"_{steps}_steps"
        path = target.folder / f"{target.stem}{middle}_{target.counter:05}_.safetensors"
        save_file({k: v.contiguous() for k, v in lora.items()}, str(path))
        return ()


class LossGraphNode(Node):
    """Plots the loss graph and saves it to the output directory."""

    comfy_function = "plot_loss"
    display_name = "Plot Loss Graph"
    category = "training"
    comfy_module = MODULE
    EXPERIMENTAL = True
    output_node = True
    inputs = (Socket("loss", "LOSS_MAP", default={}), String("filename_prefix", "loss_graph", multiline=None))
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()

    def run(self, ctx, loss, filename_prefix, prompt=None, extra_pnginfo=None):
        image = draw_loss_plot(loss.get("loss", []))
        target = save_target(ctx.env.folders.temp_dir, filename_prefix, image.width, image.height)
        target.folder.mkdir(parents=True, exist_ok=True)
        name = f"{target.stem}_{datetime.now():%Y%m%d_%H%M%S}.png"
        metadata = None if ctx.env.options.get("disable_metadata") else png_metadata(prompt, extra_pnginfo)
        image.save(target.folder / name, pnginfo=metadata)
        return {"ui": {"images": [{"filename": name, "subfolder": target.subfolder, "type": "temp"}]}}


NODES = [LoadImageSetFromFolderNode, LoadImageTextSetFromFolderNode, TrainLoraNode, LoraModelLoader, SaveLoRANode,
         LossGraphNode]
