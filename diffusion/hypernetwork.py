"""A1111 hypernetworks: small MLPs that rewrite the keys and values of the UNet's attention.

A hypernetwork file (``.pt``, read with torch's weights-only unpickler) maps a context width
(768, 320, 640, 1280, ...) to two Sequentials of Linear layers (index 0 for keys, 1 for values),
plus settings: ``activation_func`` (linear, relu, leakyrelu, elu, swish, tanh, sigmoid, softsign,
mish), ``is_layer_norm``, ``use_dropout``, ``activate_output``, ``last_layer_dropout``.

As in ComfyUI's HypernetworkLoader, one patch object serves both attentions of every transformer
block (attn1_patch and attn2_patch): for the k/v input of width d it adds
``strength * net_d[0](k)`` to the keys' input and ``strength * net_d[1](v)`` to the values'
input; widths without a network pass through. The layer stack is built as ComfyUI builds it
(activation after every Linear but the last unless ``activate_output``; LayerNorm after each
Linear when ``is_layer_norm``). Dropout layers are placed the same way but run in evaluation
mode, i.e. as identities: ComfyUI leaves them in training mode, so its results for such files
change from run to run.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint import CheckpointError, read_object

ACTIVATIONS = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish,
}
DROPOUT = 0.3


def _stack(weights: Mapping[str, torch.Tensor], settings: dict, where: str) -> nn.Sequential:
    names = [k[:-len(".weight")] for k in weights if k.endswith(".weight")]
    activation = settings["activation_func"]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        weight, bias = weights[f"{names[i]}.weight"], weights.get(f"{names[i]}.bias")
        if weight.ndim != 2 or bias is None:
            raise ValueError(f"{where}: {names[i]} is not a Linear layer (weight {tuple(weight.shape)})")
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        layers.append(linear)
        if activation != "linear" and (not last or settings["activate_output"]):
            layers.append(ACTIVATIONS[activation]())
        if settings["is_layer_norm"]:
            i += 1
            if i >= len(names):
                raise ValueError(f"{where}: is_layer_norm is set but the last Linear has no LayerNorm after it")
            ln_weight, ln_bias = weights[f"{names[i]}.weight"], weights[f"{names[i]}.bias"]
            norm = nn.LayerNorm(ln_weight.shape[0])
            norm.load_state_dict({"weight": ln_weight.float(), "bias": ln_bias.float()})
            layers.append(norm)
        if settings["use_dropout"] and not last and (not penultimate or settings["last_layer_dropout"]):
            layers.append(nn.Dropout(p=DROPOUT))
        i += 1
    return nn.Sequential(*layers).eval().requires_grad_(False)


class HypernetworkPatch:
    """The attn1/attn2 patch: (q, k, v, extra_options) -> (q, k', v')."""

    def __init__(self, networks: dict[int, nn.ModuleList], strength: float):
        self.hypernet = networks
        self.strength = strength

    def __call__(self, q, k, v, extra_options):
        nets = self.hypernet.get(k.shape[-1])
        if nets is not None:
            k = k + nets[0](k) * self.strength
            v = v + nets[1](v) * self.strength
        return q, k, v

    def to(self, device_or_dtype):
        for width in self.hypernet:
            self.hypernet[width] = self.hypernet[width].to(device_or_dtype)
        return self


def hypernetwork_from_object(obj, strength: float, source=None) -> HypernetworkPatch:
    if not isinstance(obj, Mapping):
        raise CheckpointError(source, f"not a hypernetwork: the file holds a {type(obj).__name__}")
    settings = {"activation_func": obj.get("activation_func", "linear"),
                "is_layer_norm": bool(obj.get("is_layer_norm", False)),
                "use_dropout": bool(obj.get("use_dropout", False)),
                "activate_output": bool(obj.get("activate_output", False)),
                "last_layer_dropout": bool(obj.get("last_layer_dropout", False))}
    if settings["activation_func"] not in ACTIVATIONS:
        raise CheckpointError(source, f"hypernetwork activation {settings['activation_func']!r} is not one of "
                                      f"{', '.join(ACTIVATIONS)}")
    networks: dict[int, nn.ModuleList] = {}
    for key, value in obj.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue
        if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(v, Mapping) for v in value[:2]):
            raise CheckpointError(source, f"hypernetwork entry {key!r} must be two state dicts (keys, values)")
        try:
            networks[width] = nn.ModuleList([_stack(value[i], settings, f"width {width} [{i}]") for i in (0, 1)])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(source, f"hypernetwork layers do not fit: {exc}") from None
    if not networks:
        raise CheckpointError(source, "not a hypernetwork: no per-width layers (keys like 768, 320, 640, 1280)")
    return HypernetworkPatch(networks, strength)


def load_hypernetwork(path: str | os.PathLike, strength: float) -> HypernetworkPatch:
    return hypernetwork_from_object(read_object(path), strength, path)


def apply_hypernetwork(model, patch: HypernetworkPatch):
    """A clone of MODEL with the patch on both attentions (HypernetworkLoader)."""
    patched = model.clone()
    patched.set_model_attn1_patch(patch)
    patched.set_model_attn2_patch(patch)
    return patched


__all__ = ["ACTIVATIONS", "HypernetworkPatch", "apply_hypernetwork", "hypernetwork_from_object",
           "load_hypernetwork"]
