"""Saving latents to files and loading them back, in ComfyUI's .latent format.

A .latent file is safetensors holding "latent_tensor" (the samples, unscaled) and an empty
"latent_format_version_0" marker; files without the marker come from before ComfyUI stopped
storing latents multiplied by SD1's 0.18215, and are divided by it on load. The metadata holds
the prompt and the workflow as JSON text, like a saved PNG's.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from graph.contract import Combo, Input, Node, Output, Socket
from nodes.image import check_input_file, input_file_fingerprint, save_target
from nodes.latent_tools import latent_samples

LATENT_SUFFIX = ".latent"
VERSION_MARKER = "latent_format_version_0"
OLD_SCALE = 0.18215  # files without the marker hold samples multiplied by this


def latent_metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    if isinstance(extra_pnginfo, dict):
        metadata.update({str(key): json.dumps(value) for key, value in extra_pnginfo.items()})
    return metadata


class SaveLatent(Node):
    """Writes the samples to output/<prefix>_<counter>_.latent."""

    comfy_function = "save"
    category = "_for_testing"
    output_node = True
    inputs = (Socket("samples", "LATENT"), Input("filename_prefix", "STRING", options=dict(default="latents/ComfyUI")))
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()

    def run(self, ctx, samples, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        tensor = latent_samples(samples, "samples")
        target = save_target(ctx.env.folders.output_dir, filename_prefix, 0, 0)
        target.folder.mkdir(parents=True, exist_ok=True)
        name = f"{target.stem}_{target.counter:05d}_{LATENT_SUFFIX}"
        metadata = None if ctx.env.options.get("disable_metadata") else latent_metadata(prompt, extra_pnginfo)
        tensors = {"latent_tensor": tensor.detach().cpu().contiguous(), VERSION_MARKER: torch.tensor([])}
        save_file(tensors, str(target.folder / name), metadata=metadata)
        return {"ui": {"latents": [{"filename": name, "subfolder": target.subfolder, "type": "output"}]}}


def latent_files(env: Any) -> list[str]:
    """The .latent files directly in the input folder, sorted, as ComfyUI lists them."""
    folder = env.folders.input_dir
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file() and entry.name.endswith(LATENT_SUFFIX))


class LoadLatent(Node):
    """Reads a .latent file from the input folder ("name [output]" reads from the output folder)."""

    comfy_function = "load"
    category = "_for_testing"
    inputs = (Combo("latent", latent_files),)
    outputs = (Output("LATENT"),)

    def run(self, ctx, latent):
        path = ctx.env.folders.annotated_path(latent, default_type="input")
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"LoadLatent: {latent} is not a readable .latent (safetensors) file: {exc}") from None
        if "latent_tensor" not in tensors:
            raise ValueError(f"LoadLatent: {latent} holds no 'latent_tensor' (found {sorted(tensors)[:5]})")
        multiplier = 1.0 if VERSION_MARKER in tensors else 1.0 / OLD_SCALE
        return ({"samples": tensors["latent_tensor"].float() * multiplier},)

    @classmethod
    def fingerprint(cls, env: Any, latent: Any = None, **_: Any) -> Any:
        return input_file_fingerprint(env, latent)

    @classmethod
    def check(cls, env: Any, latent: Any) -> bool | str:
        return check_input_file(env, latent, "latent")

NODES = [SaveLatent, LoadLatent]
