"""Test helpers for the model-file nodes: a runtime over a base folder whose model folders the test
fills, and files in the real layouts cut from the tiny checkpoints (tests.models_tiny)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_runtime
from tests.node_helpers import node_context


def session(base: Path) -> SimpleNamespace:
    """A runtime over `base`; .node(name, **inputs) runs a node's run() as the executor would."""
    runtime = make_runtime(base)

    def node(name, **inputs):
        node_type = runtime.registry.get(name)
        assert node_type is not None, name
        with torch.inference_mode():
            return node_type.cls().run(node_context(runtime.registry, name), **inputs)

    return SimpleNamespace(runtime=runtime, node=node, base=base, models=runtime.env.models)


def place(base: Path, folder: str, name: str, tensors: dict | None = None, source: Path | None = None) -> Path:
    """Put a file in base/models/<folder>/<name>: given tensors (safetensors) or a link to `source`."""
    path = base / "models" / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        path.symlink_to(source)
    else:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def component(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint under `prefix`, prefix removed."""
    return {k[len(prefix):]: v for k, v in load_file(str(checkpoint)).items() if k.startswith(prefix)}


def encode(clip, text: str = "a photo of a cat, (sharp:1.2)") -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
