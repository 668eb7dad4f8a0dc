"""Running single nodes in tests: a registry of the built-in nodes, a node context, one call."""
import threading
from pathlib import Path
from types import SimpleNamespace

import torch

from app.env import Environment
from app.folders import FolderPaths
from graph.context import NodeContext
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from tests.conftest import make_runtime


def builtin_registry(base: Path | None = None) -> NodeRegistry:
    """The built-in nodes; with `base`, over an environment whose folders live there."""
    registry = NodeRegistry(Environment(FolderPaths(base), {})) if base is not None else NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def node_context(registry: NodeRegistry, name: str = "X") -> NodeContext:
    """A context like the executor's for one node of prompt "p", never interrupted."""
    return NodeContext("p", "1", name, registry.env, {}, {}, threading.Event(), lambda e, d: None)


def call_node(registry: NodeRegistry, name: str, inputs: dict, ctx=None):
    """Run one node the way the executor does: instantiate its registered class, call it."""
    node_type = registry.get(name)
    assert node_type is not None, name
    return node_type.call(node_type.instantiate(), ctx, inputs)


def call_in_context(registry: NodeRegistry, name: str, **inputs):
    """call_node with a fresh executor-like context for the node."""
    return call_node(registry, name, inputs, node_context(registry, name))


def checkpoint_session(base: Path, ckpt_name: str) -> SimpleNamespace:
    """A runtime over `base` with checkpoint `ckpt_name` loaded: .runtime, .model, .clip and
    .node(name, **inputs), which runs a node class's run() under inference mode."""
    runtime = make_runtime(base)
    ctx = SimpleNamespace(env=runtime.env, progress=lambda *a, **k: None)

    def node(name, **inputs):
        with torch.inference_mode():
            return runtime.registry.get(name).cls().run(ctx, **inputs)

    model, clip, _ = node("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    return SimpleNamespace(node=node, model=model, clip=clip, runtime=runtime)


def register_constant(registry: NodeRegistry, name: str, types: tuple, values: tuple) -> None:
    """Register a classic node `name` without inputs that returns `values` (of `types`)."""
    def go(self):
        return values

    registry.register(name, type(name, (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {}}),
                                            "RETURN_TYPES": types, "FUNCTION": "go", "go": go}))
