"""The services a running engine hands to built-in nodes (as `ctx.env` and to combo lists)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.folders import FolderPaths
from diffusion.model_management import ModelManagement


@dataclass
class Environment:
    folders: FolderPaths
    options: dict[str, Any] = field(default_factory=dict)  # e.g. disable_metadata
    models: ModelManagement = field(default_factory=ModelManagement)  # the model-lifetime service
