"""Rebatching: regroup lists of images or latents into batches of a chosen size.

Both nodes take their inputs as whole lists (INPUT_IS_LIST) and return lists, so a list of
single images from a list-producing node becomes batches for the nodes after it, or one big
batch becomes a list of smaller ones. Behaviour follows ComfyUI's comfy_extras.nodes_rebatch.
"""
from __future__ import annotations

import torch

from graph.contract import Int, Node, Output, Socket
from nodes.latent_tools import latent_samples

MAX_BATCH = 4096
LATENT_CELL = 8  # pixels per latent cell: the size of a default (all-ones) noise mask


def BatchSize() -> Int:
    return Int("batch_size", 1, min=1, max=MAX_BATCH)


class RebatchImages(Node):
    # No docstring: ComfyUI lists this node with an empty description.
    display_name = "Rebatch Images"
    comfy_function = "execute"
    category = "image/batch"
    comfy_module = "comfy_extras.nodes_rebatch"
    input_is_list = True
    inputs = (Socket("images", "IMAGE"), BatchSize())
    outputs = (Output("IMAGE", is_list=True),)

    def run(self, ctx, images, batch_size):
        size = batch_size[0]
        singles = [image[i:i + 1] for image in images for i in range(image.shape[0])]
        return ([torch.cat(singles[i:i + size], dim=0) for i in range(0, len(singles), size)],)


def _parts(latent: dict, offset: int) -> list:
    """[samples, noise mask, batch indices] of one latent; a latent without a mask gets an
    all-ones one (dropped again at the end) and indices counting on from `offset`."""
    samples = latent_samples(latent, "RebatchLatents")
    count, _, height, width = samples.shape
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((count, 1, height * LATENT_CELL, width * LATENT_CELL))
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    if mask.shape[0] < count:
        mask = mask.repeat((count - 1) // mask.shape[0] + 1, 1, 1, 1)[:count]
    indices = list(latent["batch_index"]) if "batch_index" in latent else [offset + i for i in range(count)]
    return [samples, mask, indices]


def _as_latent(parts: list) -> dict:
    return {"samples": parts[0], "noise_mask": parts[1], "batch_index": parts[2]}


class RebatchLatents(Node):
    # No docstring: ComfyUI lists this node with an empty description.
    display_name = "Rebatch Latents"
    comfy_function = "execute"
    category = "latent/batch"
    comfy_module = "comfy_extras.nodes_rebatch"
    input_is_list = True
    inputs = (Socket("latents", "LATENT"), BatchSize())
    outputs = (Output("LATENT", is_list=True),)

    def run(self, ctx, latents, batch_size):
        size = batch_size[0]
        out: list[dict] = []
        current: list | None = None
        seen = 0
        for latent in latents:
            parts = _parts(latent, seen)
            seen += len(parts[2])
            if current is None:
                current = parts
            elif parts[0].shape[-2:] != current[0].shape[-2:]:  # another size: close the batch
                out.append(_as_latent([part[:size] for part in current]))
                current = parts
            else:
                current = [torch.cat((a, b)) if isinstance(a, torch.Tensor) else a + b
                           for a, b in zip(current, parts)]
            count = current[0].shape[0]
            if count > size:
                full = count // size
                out += [_as_latent([part[i * size:(i + 1) * size] for part in current]) for i in range(full)]
                current = [part[full * size:] for part in current] if full * size < count else None
        if current is not None:
            out.append(_as_latent([part[:size] for part in current]))
        for latent in out:
            if latent["noise_mask"].mean() == 1.0:  # no mask was given for any of it
                del latent["noise_mask"]
        return (out,)


NODES = [RebatchImages, RebatchLatents]
