"""Built-in nodes: each module lists its node classes in a module-level NODES."""
from __future__ import annotations

import importlib

BUILTIN_MODULES = ("nodes.primitives", "nodes.image", "nodes.image_transform", "nodes.latent", "nodes.loaders",
                   "nodes.conditioning", "nodes.sampling", "nodes.vae")


def register_builtin_nodes(registry) -> None:
    """Register every built-in node; they all report python_module "nodes", as ComfyUI's core does."""
    for module_name in BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        registry.register_nodes(module.NODES, python_module="nodes")
